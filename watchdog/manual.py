"""Operators' manual actions: restart, drain, quarantine, release, recycle a token.

Each is one audited ``RemediationAction`` (trigger ``manual``, the built-in
``manual`` policy, the operator as actor ``user:<name>``) whose single step acts
at once through the same step and registry adapter as automatic ones. The
automatic-only gates (cooldown, restart backoff, hourly cap) do not hold an
operator back: they exist against loops of the watchdog, and a person deciding
is not one. What the agent's state machine forbids is refused (``Conflict``).
"""

import uuid
from datetime import timedelta

import structlog
from django.db import transaction
from django.utils import timezone

from monitoring.models import Agent, AgentState
from monitoring.transitions import ALLOWED_TRANSITIONS
from omoi_console.foundation.events import publish
from omoi_console.foundation.events.tracing import current_trace_ids
from watchdog import services
from watchdog.adapters import AdapterError, get_adapter
from watchdog.builtins import manual_policy
from watchdog.models import (
    DEFAULT_VERIFY_SECONDS,
    OPEN_ACTION_STATUSES,
    ActionStatus,
    RemediationAction,
    Trigger,
)
from watchdog.steps import StepContext, get_step

log = structlog.get_logger(__name__)

# The verb in the URL, and the step it runs.
MANUAL_ACTIONS = {
    "restart": "restart_worker",
    "drain": "drain",
    "quarantine": "quarantine",
    "release": "release",
    "recycle-token": "recycle_token",
}
# A manual command not handed out within this is withdrawn (expired): an agent
# that comes back later should not obey a stale order.
COMMAND_TTL = timedelta(seconds=DEFAULT_VERIFY_SECONDS)


class AgentNotFound(Exception):
    pass


class Conflict(Exception):
    """The agent's state (or an action already on it) forbids this action now."""


def precondition(kind: str, agent: Agent) -> str:
    """Why ``kind`` cannot act on ``agent`` now; empty when it can."""
    if agent.state == AgentState.TERMINATED:
        return "the agent is terminated"
    if kind == "release":
        return (
            ""
            if agent.state == AgentState.QUARANTINED
            else f"the agent is {agent.state}, not quarantined"
        )
    if agent.state == AgentState.QUARANTINED:
        return "the agent is quarantined: release it first"
    if kind == "quarantine" and AgentState.QUARANTINED not in ALLOWED_TRANSITIONS[agent.state]:
        return f"a {agent.state} agent cannot be quarantined"
    return ""


def run_manual_action(agent_id: str, kind: str, *, actor: str, reason: str = ""):
    """Act on the agent for an operator, audited; raises AgentNotFound or Conflict.

    A restart stays ``verifying`` until the agent is healthy again (or escalates
    after 60 s, like an automatic one); every other action is done when its step
    acted (a drain or token recycle: its command is queued for the next heartbeat).
    """
    step = get_step(MANUAL_ACTIONS[kind])
    with transaction.atomic():
        # One manual action at a time per agent: the second waits, then sees the first.
        agent = Agent.objects.select_for_update().filter(pk=agent_id).first()
        if agent is None:
            raise AgentNotFound(agent_id)
        why = precondition(kind, agent)
        if why:
            raise Conflict(why)
        busy = (
            RemediationAction.objects.filter(agent=agent, status__in=OPEN_ACTION_STATUSES)
            .values_list("pk", flat=True)
            .first()
        )
        if busy is not None:
            raise Conflict(f"action {busy} is already running on the agent")
        now = timezone.now()
        verify = DEFAULT_VERIFY_SECONDS if step.is_restart else 0
        trace_id, span_id = current_trace_ids()
        action = RemediationAction.objects.create(
            policy=manual_policy(),
            agent=agent,
            trigger=Trigger.MANUAL,
            steps=[{"kind": step.name, "after": 0, "verify": verify}],
            step=step.name,
            status=ActionStatus.PLANNED,
            idempotency_key=f"manual:{agent.pk}:{uuid.uuid4().hex}",
            episode=now.isoformat(),
            reason=(reason or f"{kind} by {actor}")[:300],
            actor=actor,
            before_state=agent.state,
            started_at=now,
            trace_id=trace_id,
            span_id=span_id,
            context=services.monitoring_context(agent),
        )
        ctx = StepContext(
            action=action,
            agent=agent,
            adapter=get_adapter(),
            expires_at=now + max(COMMAND_TTL, timedelta(seconds=verify)),
        )
        try:
            outcome = step.act(ctx)
        except AdapterError as exc:
            # The registry refused or never answered: audited as failed, the agent untouched.
            services._note(action, now, f"registry: {exc}")
            services._finish(action, agent, ActionStatus.FAILED, f"registry: {exc}", now)
            _announce(action, agent, "watchdog.action.failed", reason=str(exc))
            log.warning(
                "watchdog.manual_failed", action_id=action.pk, agent_id=agent.pk, error=str(exc)
            )
            return action
        services._note(action, now, outcome.detail)
        action.history[-1]["acted"] = True
        action.command = outcome.command
        services._mark_acted(agent, action, step, now)
        _announce(action, agent, "watchdog.action.started", dry_run=False)
        log.warning(
            "watchdog.manual_action",
            action_id=action.pk,
            agent_id=agent.pk,
            step=step.name,
            actor=actor,
            detail=outcome.detail,
        )
        if verify:
            action.status = ActionStatus.VERIFYING
            action.verify_by = action.next_step_at = now + timedelta(seconds=verify)
            action.save()
            return action
        agent.refresh_from_db()
        action.status = ActionStatus.SUCCEEDED
        action.after_state = agent.state
        action.finished_at = now
        action.outcome = outcome.detail[:300]
        action.save()
        _announce(action, agent, "watchdog.action.succeeded", seconds=0.0)
    return action


def _announce(action, agent, name: str, **fields) -> None:
    publish(
        name,
        {
            "action_id": action.pk,
            "agent_id": agent.pk,
            "kind": action.step,
            "policy": action.policy.name,
            "actor": action.actor,
            **fields,
        },
        key=f"{name.removeprefix('watchdog.')}:{action.pk}",
    )
