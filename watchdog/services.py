"""The watchdog's verbs: open a remediation, verify it, fail it when time runs out."""

from datetime import timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from opentelemetry import trace

from monitoring.models import Agent, AgentState
from omoi_console.foundation.events import publish
from omoi_console.foundation.events.tracing import current_trace_ids
from watchdog.adapters import get_adapter
from watchdog.models import ActionStatus, RemediationAction, RemediationPolicy
from watchdog.prometheus import count_action

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)

ACTOR = "watchdog"
HOURLY_CAP_WINDOW = timedelta(hours=1)
# A stuck agent (heartbeating, no progress) is treated like a failed one.
ACTIONABLE_STATES = frozenset({AgentState.FAILED, AgentState.STUCK})


def matching_policy(trigger: str, agent: Agent) -> RemediationPolicy | None:
    for policy in RemediationPolicy.objects.filter(enabled=True, trigger=trigger):
        if not policy.agent_role or policy.agent_role == agent.role:
            return policy
    return None


@tracer.start_as_current_span("watchdog.remediate")
def open_remediation(trigger: str, agent_id: str, *, event_id=None) -> RemediationAction | None:
    """Act on an agent according to the first matching policy.

    Idempotent per (policy, triggering event). Honors WATCHDOG_MODE (off,
    dry-run), the policy's cooldown and its hourly cap. Returns the audited
    action row, or None when the watchdog is off or no policy matches.
    """
    trace.get_current_span().set_attributes({"agent.id": agent_id, "watchdog.trigger": trigger})
    mode = settings.WATCHDOG_MODE
    if mode == "off":
        log.info("watchdog.off", agent_id=agent_id, trigger=trigger)
        return None
    agent = Agent.objects.filter(pk=agent_id).first()
    policy = matching_policy(trigger, agent) if agent else None
    if policy is None:
        return None
    key = f"{policy.pk}:{event_id or timezone.now().isoformat()}"
    existing = RemediationAction.objects.filter(idempotency_key=key).first()
    if existing is not None:
        return existing

    now = timezone.now()
    trace_id, _ = current_trace_ids()
    action = RemediationAction(
        policy=policy,
        agent=agent,
        step=policy.step,
        idempotency_key=key,
        trigger_event_id=event_id,
        reason=f"{trigger} matched policy {policy.name}",
        before_state=agent.state,
        started_at=now,
        trace_id=trace_id,
    )
    skip = _skip_reason(policy, agent, now)
    if skip:
        action.status = ActionStatus.SKIPPED
        count_action(action.step, ActionStatus.SKIPPED)
        action.outcome = skip
        action.finished_at = now
        action.save()
        log.info("watchdog.action_skipped", action_id=action.pk, agent_id=agent.id, reason=skip)
        return action

    dry_run = mode == "dry-run" or policy.dry_run
    if dry_run:
        action.status = ActionStatus.DRY_RUN
        count_action(action.step, ActionStatus.DRY_RUN)
        action.outcome = f"would {policy.step}"
        action.finished_at = now
        action.save()
    else:
        action.command = get_adapter().restart(agent, reason=action.reason, actor=ACTOR)
        action.status = ActionStatus.STARTED
        action.verify_by = now + timedelta(seconds=policy.verify_seconds)
        action.save()
    publish(
        "watchdog.action.started",
        {
            "action_id": action.pk,
            "agent_id": agent.id,
            "kind": action.step,
            "policy": policy.name,
            "dry_run": dry_run,
        },
        key=f"action.started:{action.pk}",
    )
    log.warning("watchdog.action_started", action_id=action.pk, agent_id=agent.id, dry_run=dry_run)
    return action


def _skip_reason(policy: RemediationPolicy, agent: Agent, now) -> str:
    if agent.state not in ACTIONABLE_STATES:
        return f"agent is {agent.state}, not failed"
    recent = RemediationAction.objects.filter(
        policy=policy,
        agent=agent,
        status__in=[ActionStatus.STARTED, ActionStatus.SUCCEEDED, ActionStatus.FAILED],
    )
    if recent.filter(started_at__gt=now - timedelta(seconds=policy.cooldown_seconds)).exists():
        return f"cooldown of {policy.cooldown_seconds}s"
    if recent.filter(started_at__gt=now - HOURLY_CAP_WINDOW).count() >= policy.max_per_hour:
        return f"hourly cap of {policy.max_per_hour} reached"
    return ""


def history_window() -> timedelta:
    """How far back ``open_remediation`` reads past actions: cooldowns and the hourly cap."""
    longest = RemediationPolicy.objects.aggregate(longest=Max("cooldown_seconds"))["longest"]
    return max(HOURLY_CAP_WINDOW, timedelta(seconds=longest or 0))


def verify_recovery(agent_id: str) -> list[RemediationAction]:
    """The agent is healthy again: every action waiting on it succeeded."""
    done = []
    with transaction.atomic():
        # of=self: the joined policy and agent rows are read, not claimed.
        waiting = RemediationAction.objects.select_for_update(of=("self",)).filter(
            agent_id=agent_id, status=ActionStatus.STARTED
        )
        for action in waiting.select_related("policy", "agent"):
            now = timezone.now()
            action.status = ActionStatus.SUCCEEDED
            count_action(action.step, ActionStatus.SUCCEEDED)
            action.after_state = action.agent.state
            action.finished_at = now
            action.outcome = "agent healthy again"
            action.save(update_fields=["status", "after_state", "finished_at", "outcome"])
            publish(
                "watchdog.action.succeeded",
                {
                    "action_id": action.pk,
                    "agent_id": agent_id,
                    "kind": action.step,
                    "policy": action.policy.name,
                    "seconds": (now - action.started_at).total_seconds(),
                },
                key=f"action.succeeded:{action.pk}",
            )
            log.info("watchdog.action_succeeded", action_id=action.pk, agent_id=agent_id)
            done.append(action)
    return done


def expire_unverified(now=None) -> list[RemediationAction]:
    """Fail the actions whose agent did not recover in time, and escalate them."""
    now = now or timezone.now()
    failed = []
    with transaction.atomic():
        overdue = (
            RemediationAction.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=ActionStatus.STARTED, verify_by__lte=now)
            .select_related("policy", "agent")
        )
        for action in overdue:
            reason = f"agent not healthy within {action.policy.verify_seconds}s"
            action.status = ActionStatus.FAILED
            count_action(action.step, ActionStatus.FAILED)
            action.after_state = action.agent.state
            action.finished_at = now
            action.outcome = reason
            action.save(update_fields=["status", "after_state", "finished_at", "outcome"])
            base = {
                "action_id": action.pk,
                "agent_id": action.agent_id,
                "policy": action.policy.name,
            }
            publish(
                "watchdog.action.failed",
                {**base, "kind": action.step, "reason": reason},
                key=f"action.failed:{action.pk}",
            )
            # Escalation chains take over from here; for now the escalation is the event.
            publish("watchdog.escalated", {**base, "reason": reason}, key=f"escalated:{action.pk}")
            log.error("watchdog.action_failed", action_id=action.pk, agent_id=action.agent_id)
            failed.append(action)
    return failed
