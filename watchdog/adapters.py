"""How the watchdog reaches agents. ``local``: commands ride on heartbeat responses.

Every adapter offers the same verbs (``RegistryAdapter``); steps call them and
never reach into monitoring themselves. An adapter for an external registry API
plugs in beside LocalRegistryAdapter in ADAPTERS.
"""

from monitoring import services as monitoring
from monitoring.models import Agent, AgentCommand, CommandKind


class AdapterError(Exception):
    """The registry refused a call or never answered; the action fails, audited."""


class RegistryAdapter:
    name = ""

    def restart(
        self, agent: Agent, *, reason, actor, serves="", expires_at=None, graceful_stop_seconds=10
    ) -> AgentCommand:
        raise NotImplementedError

    def drain(self, agent: Agent, *, reason, actor, serves="", expires_at=None) -> AgentCommand:
        raise NotImplementedError

    def recycle_token(self, agent: Agent, *, reason, actor, serves="", expires_at=None):
        raise NotImplementedError

    def set_state(self, agent: Agent, state: str, *, reason: str, actor: str) -> None:
        raise NotImplementedError

    def cancel(self, serves: str, *, reason: str) -> int:
        """Withdraw the commands serving ``serves`` that have not left yet."""
        raise NotImplementedError


class LocalRegistryAdapter(RegistryAdapter):
    name = "local"

    def restart(
        self, agent, *, reason, actor, serves="", expires_at=None, graceful_stop_seconds=10
    ):
        return monitoring.queue_command(
            agent,
            CommandKind.RESTART,
            reason=reason,
            issued_by=actor,
            serves=serves,
            expires_at=expires_at,
            params={"graceful_stop_seconds": graceful_stop_seconds},
        )

    def drain(self, agent, *, reason, actor, serves="", expires_at=None):
        return monitoring.queue_command(
            agent,
            CommandKind.DRAIN,
            reason=reason,
            issued_by=actor,
            serves=serves,
            expires_at=expires_at,
        )

    def recycle_token(self, agent, *, reason, actor, serves="", expires_at=None):
        # The new token is issued, and the old ones revoked, when the command is
        # handed out: the agent learns it in the same response.
        return monitoring.queue_command(
            agent,
            CommandKind.RECYCLE_TOKEN,
            reason=reason,
            issued_by=actor,
            serves=serves,
            expires_at=expires_at,
        )

    def set_state(self, agent, state, *, reason, actor):
        monitoring.transition(agent, state, reason=reason, actor=actor)

    def cancel(self, serves, *, reason):
        return monitoring.cancel_commands(serves, reason=reason)


ADAPTERS = {LocalRegistryAdapter.name: LocalRegistryAdapter}


def get_adapter(name: str = "local") -> RegistryAdapter:
    return ADAPTERS[name]()
