"""How the watchdog reaches agents. ``local``: commands ride on heartbeat responses.

An adapter for an external registry API plugs in beside LocalRegistryAdapter in
ADAPTERS; choosing one by setting comes with it.
"""

from monitoring import services as monitoring
from monitoring.models import Agent, AgentCommand, CommandKind


class LocalRegistryAdapter:
    name = "local"

    def restart(self, agent: Agent, *, reason: str, actor: str) -> AgentCommand:
        return monitoring.queue_command(agent, CommandKind.RESTART, reason=reason, issued_by=actor)


ADAPTERS = {LocalRegistryAdapter.name: LocalRegistryAdapter}


def get_adapter(name: str = "local"):
    return ADAPTERS[name]()
