"""How the watchdog reaches agents, chosen by OMOI_WATCHDOG_ADAPTER.

``local``: commands ride on heartbeat responses. ``http``: an external registry
API (docs/watchdog.md has its contract) is asked to act, with timeouts and
bounded retries; what it was asked is recorded as a delivered ``AgentCommand``.
Every adapter offers the same verbs (``RegistryAdapter``); steps call them and
never reach into monitoring themselves.
"""

import uuid

import httpx
import structlog
import tenacity
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from monitoring import services as monitoring
from monitoring.models import Agent, AgentCommand, CommandKind, CommandStatus

log = structlog.get_logger(__name__)
# How much of a refusing registry's answer an error (and so the audit) keeps.
ERROR_BODY_CHARS = 200
USER_AGENT = "omoi-console-watchdog"


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

    def hand_over_task(
        self,
        source: Agent,
        target: Agent,
        *,
        task_id,
        progress,
        reason,
        actor,
        serves="",
        expires_at=None,
    ) -> AgentCommand | None:
        """Give ``source``'s task to ``target``; it leaves ``source`` as ``target`` takes it.

        None when ``source`` no longer holds the task (it moved on meanwhile).
        """
        raise NotImplementedError

    def request_replacement(self, agent: Agent, *, reason, actor, serves="") -> dict:
        """Ask for a new agent of ``agent``'s role; what was asked, for the audit."""
        raise NotImplementedError

    def cancel(self, serves: str, *, reason: str) -> int:
        """Withdraw the commands serving ``serves`` that have not left yet."""
        raise NotImplementedError


def take_task_params(source: Agent, task_id: str, progress) -> dict:
    return {"task_id": task_id, "progress": progress, "from_agent": source.pk}


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

    def hand_over_task(
        self, source, target, *, task_id, progress, reason, actor, serves="", expires_at=None
    ):
        # The task changes owner when the target's heartbeat takes the command
        # (monitoring moves it then), so an undelivered command orphans nothing.
        if not Agent.objects.filter(pk=source.pk, current_task=task_id).exists():
            return None
        return monitoring.queue_command(
            target,
            CommandKind.TAKE_TASK,
            reason=reason,
            issued_by=actor,
            serves=serves,
            expires_at=expires_at,
            params=take_task_params(source, task_id, progress),
        )

    def request_replacement(self, agent, *, reason, actor, serves=""):
        # No registry to ask: the request is the audit and the event a provisioner follows.
        return {"role": agent.role, "replaces": agent.pk, "via": self.name}

    def cancel(self, serves, *, reason):
        return monitoring.cancel_commands(serves, reason=reason)


class RetryableError(AdapterError):
    """A 5xx, a timeout or a connection error: worth another try."""


class HttpRegistryAdapter(RegistryAdapter):
    """An external registry API: ``POST /agents/{id}/{verb}`` and friends.

    Each call carries ``Authorization: Bearer <token>`` and an ``Idempotency-Key``
    kept across its retries, so a retried call the registry did receive is not
    done twice. A 5xx, a timeout or a connection error is retried
    ``REGISTRY_RETRIES`` times with doubling backoff; a 4xx is final. Either way
    a call that does not succeed raises ``AdapterError`` (the token never in it).
    """

    name = "http"

    def __init__(self, base_url=None, token=None, timeout=None, retries=None, backoff=None):
        self.base_url = (base_url or settings.REGISTRY_URL).rstrip("/")
        self.token = token if token is not None else settings.REGISTRY_TOKEN
        self.timeout = timeout or settings.REGISTRY_TIMEOUT_SECONDS
        self.retries = settings.REGISTRY_RETRIES if retries is None else retries
        self.backoff = settings.REGISTRY_BACKOFF_SECONDS if backoff is None else backoff

    # --- the verbs --------------------------------------------------------------------

    def restart(
        self, agent, *, reason, actor, serves="", expires_at=None, graceful_stop_seconds=10
    ):
        params = {"graceful_stop_seconds": graceful_stop_seconds}
        return self._command(
            agent, CommandKind.RESTART, "restart", reason, actor, serves, expires_at, params
        )

    def drain(self, agent, *, reason, actor, serves="", expires_at=None):
        return self._command(agent, CommandKind.DRAIN, "drain", reason, actor, serves, expires_at)

    def recycle_token(self, agent, *, reason, actor, serves="", expires_at=None):
        return self._command(
            agent, CommandKind.RECYCLE_TOKEN, "recycle-token", reason, actor, serves, expires_at
        )

    def set_state(self, agent, state, *, reason, actor):
        self.call(
            "PUT", f"/agents/{agent.pk}/state", {"state": state, "reason": reason, "actor": actor}
        )
        # The registry agreed: our mirror follows.
        monitoring.transition(agent, state, reason=reason, actor=actor)

    def hand_over_task(
        self, source, target, *, task_id, progress, reason, actor, serves="", expires_at=None
    ):
        # Released first, in a savepoint: a registry that refuses rolls the release back.
        with transaction.atomic():
            if not monitoring.release_task(source, task_id, reason=reason):
                return None
            return self._command(
                target,
                CommandKind.TAKE_TASK,
                "take-task",
                reason,
                actor,
                serves,
                expires_at,
                take_task_params(source, task_id, progress),
            )

    def request_replacement(self, agent, *, reason, actor, serves=""):
        body = {"reason": reason, "actor": actor, "serves": serves, "role": agent.role}
        answer = self.call("POST", f"/agents/{agent.pk}/replacement", body)
        answer = answer if isinstance(answer, dict) else {}
        return {
            "role": agent.role,
            "replaces": agent.pk,
            "via": self.name,
            "registry_request_id": str(answer.get("request_id", ""))[:100],
        }

    def cancel(self, serves, *, reason):
        sent = AgentCommand.objects.filter(serves=serves, status=CommandStatus.DELIVERED)
        if not sent.exists():
            return 0  # the registry was asked nothing for it
        # Best effort: the action is closing whatever the registry says.
        try:
            answer = self.call("POST", "/commands/cancel", {"serves": serves, "reason": reason})
        except AdapterError as exc:
            log.warning("watchdog.registry_cancel_failed", serves=serves, error=str(exc))
            return 0
        # Only what the registry says it withdrew: the rest may have been carried out.
        withdrawn = answer.get("cancelled") if isinstance(answer, dict) else None
        if not isinstance(withdrawn, list):
            return 0
        ids = [str(one) for one in withdrawn]
        return sent.filter(params__registry_command_id__in=ids).update(
            status=CommandStatus.CANCELLED
        )

    def _command(self, agent, kind, verb, reason, actor, serves, expires_at, params=None):
        body = {
            "reason": reason,
            "actor": actor,
            "serves": serves,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "params": params or {},
        }
        answer = self.call("POST", f"/agents/{agent.pk}/{verb}", body)
        answer = answer if isinstance(answer, dict) else {}
        generation = answer.get("generation")
        # The audit's record of what the registry took: delivered, never handed out here.
        return AgentCommand.objects.create(
            agent=agent,
            kind=kind,
            status=CommandStatus.DELIVERED,
            reason=reason[:200],
            issued_by=actor,
            serves=serves,
            expires_at=expires_at,
            generation=generation if type(generation) is int and generation >= 0 else None,
            params={
                **(params or {}),
                "registry_command_id": str(answer.get("command_id", ""))[:100],
            },
            delivered_at=timezone.now(),
        )

    # --- one call, retried --------------------------------------------------------------

    def call(self, method: str, path: str, body: dict):
        """One call to the registry, retried on 5xx and connection errors; its JSON answer."""
        key = uuid.uuid4().hex
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(
                multiplier=self.backoff, max=10 * max(self.backoff, 0.1)
            ),
            reraise=True,
        )
        return retrying(self._once, method, path, body, key)

    def _once(self, method, path, body, key):
        headers = {"Idempotency-Key": key, "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = httpx.request(
                method, self.base_url + path, json=body, headers=headers, timeout=self.timeout
            )
        except httpx.TimeoutException:
            log.warning("watchdog.registry_timeout", method=method, path=path)
            raise RetryableError(f"{method} {path}: no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            log.warning(
                "watchdog.registry_unreachable", method=method, path=path, error=type(exc).__name__
            )
            raise RetryableError(f"{method} {path}: {type(exc).__name__}") from None
        if response.is_success:
            try:
                return response.json() if response.content else {}
            except ValueError:
                return {}
        detail = f"{method} {path}: HTTP {response.status_code} {response.text[:ERROR_BODY_CHARS]}"
        log.warning(
            "watchdog.registry_refused", method=method, path=path, status=response.status_code
        )
        if response.status_code >= 500:
            raise RetryableError(detail)
        raise AdapterError(detail)


ADAPTERS = {
    LocalRegistryAdapter.name: LocalRegistryAdapter,
    HttpRegistryAdapter.name: HttpRegistryAdapter,
}


def get_adapter(name: str | None = None) -> RegistryAdapter:
    return ADAPTERS[name or settings.WATCHDOG_ADAPTER]()
