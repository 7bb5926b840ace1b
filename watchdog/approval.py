"""A step that asks before it acts: request, decide (approve or reject), expire.

A policy step with ``approve: <seconds>`` does not act when its turn comes and
the guards would let it: its action waits in ``awaiting_approval`` until an
operator approves or rejects it, or until ``approval_expires_at``.

- Approved, the step goes through the orchestrator again, every gate and guard
  included: a kill switch turned on meanwhile still holds it back.
- Rejected, or not decided in time (the periodic job expires it: "approval
  expired"), the action is skipped with reason ``rejected`` and, like every skip
  that leaves its agent unhealthy, escalates: a person takes over.
- Closed for another reason while it waits (the agent recovered or was
  terminated), the request is withdrawn.

Every request and decision is a line in the action's ``history`` and an event
(``watchdog.approval.requested``, ``watchdog.approval.decided``); alerting turns
a request into an alert of the ``approval`` rule kind that resolves with its decision.
"""

from datetime import timedelta

import structlog
from django.db import transaction
from django.utils import timezone

from monitoring.models import Agent
from omoi_console.foundation.events import publish
from watchdog import services
from watchdog.models import ActionStatus, ApprovalDecision, RemediationAction, SkipReason
from watchdog.steps import StepContext, get_step

log = structlog.get_logger(__name__)

EXPIRED_REASON = "approval expired"


class ActionNotFound(Exception):
    pass


class Conflict(Exception):
    """The action is not waiting for approval (any more): nothing to decide."""


def needs_approval(action: RemediationAction, spec: dict) -> bool:
    """Does the current step still wait for an operator before it acts?"""
    if not spec.get("approve"):
        return False
    step = action.step_index
    return not any(
        entry.get("approval") == ApprovalDecision.APPROVED and entry.get("step") == step
        for entry in action.history
    )


def request(action: RemediationAction, agent: Agent, spec: dict, now) -> None:
    """Hold the step: the action awaits approval until ``approve`` seconds from now.

    The caller holds the action's row and saves nothing after this.
    """
    expires = now + timedelta(seconds=spec["approve"])
    plan = get_step(spec["kind"]).plan(StepContext(action=action, agent=agent, adapter=None))
    action.status = ActionStatus.AWAITING_APPROVAL
    action.approval_expires_at = action.next_step_at = expires
    action.approval_decision = action.approval_decided_by = action.approval_reason = ""
    action.approval_decided_at = None
    detail = f"waits for approval until {expires.isoformat()}: {plan}"
    services._note(action, now, detail, approval="requested")
    action.outcome = detail[:300]
    action.save()
    publish(
        "watchdog.approval.requested",
        {
            "action_id": action.pk,
            "agent_id": agent.pk,
            "role": agent.role,
            "kind": action.step,
            "policy": action.policy.name,
            "step_index": action.step_index,
            "plan": plan,
            "expires_at": expires.isoformat(),
        },
        key=f"approval.requested:{action.pk}:{action.step_index}",
    )
    log.warning(
        "watchdog.approval_requested",
        action_id=action.pk,
        agent_id=agent.pk,
        step=action.step,
        expires_at=expires.isoformat(),
    )


def decide(action_id: int, decision: str, *, by: str, reason: str = "") -> RemediationAction:
    """An operator approves or rejects the step an action waits on; audited.

    Raises ActionNotFound, or Conflict when the action does not wait for approval
    (never did, was decided already, or its approval expired: then it is expired
    now, as the periodic job would). Two operators deciding at once: the row lock
    makes one of them wait, and that one finds the action decided.
    """
    expired_at = None
    with transaction.atomic():
        # of=self: the joined policy row is read, not claimed (and nullable joins
        # cannot be locked on PostgreSQL).
        action = (
            RemediationAction.objects.select_for_update(of=("self",))
            .select_related("policy")
            .filter(pk=action_id)
            .first()
        )
        if action is None:
            raise ActionNotFound(action_id)
        if action.status != ActionStatus.AWAITING_APPROVAL:
            raise Conflict(not_waiting(action))
        agent = Agent.objects.get(pk=action.agent_id)
        now = timezone.now()
        if now >= action.approval_expires_at:
            expired_at = action.approval_expires_at
            expire(action, agent, now)
        elif decision == ApprovalDecision.APPROVED:
            close(action, agent, ApprovalDecision.APPROVED, by=by, reason=reason, now=now)
            # Back to the orchestrator: the same gates and guards decide at act time.
            action.status = ActionStatus.PLANNED
            action.next_step_at = now
            # In the failure's trace, linked to the operator's request.
            with services.action_trace(action):
                services._advance(action, now)
        else:
            close(action, agent, ApprovalDecision.REJECTED, by=by, reason=reason, now=now)
            detail = f"rejected by {by}" + (f": {reason}" if reason else "")
            services._skip(action, agent, SkipReason.REJECTED, detail, now)
    if expired_at is not None:
        raise Conflict(
            f"The approval of action {action_id} expired at {expired_at.isoformat()}: "
            "it was skipped as rejected."
        )
    return action


def not_waiting(action: RemediationAction) -> str:
    if action.approval_decision:
        by = f" by {action.approval_decided_by}" if action.approval_decided_by else ""
        at = action.approval_decided_at.isoformat() if action.approval_decided_at else ""
        return (
            f"Action {action.pk} is not awaiting approval: it was {action.approval_decision}"
            f"{by} at {at}; it is {action.status}."
        )
    return f"Action {action.pk} is {action.status}, not awaiting approval."


def expire(action: RemediationAction, agent: Agent, now) -> None:
    """Nobody decided in time: as a rejection, with reason "approval expired"."""
    spec = action.steps[action.step_index]
    close(
        action, agent, ApprovalDecision.EXPIRED, by=services.ACTOR, reason=EXPIRED_REASON, now=now
    )
    detail = (
        f"{EXPIRED_REASON}: nobody approved step {action.step_index + 1} "
        f"within {spec.get('approve', 0)}s"
    )
    services._skip(action, agent, SkipReason.REJECTED, detail, now)


def withdraw(action: RemediationAction, agent: Agent, outcome: str, now) -> None:
    """The action ends while it waits (the agent recovered, was terminated ...)."""
    close(action, agent, ApprovalDecision.WITHDRAWN, by=services.ACTOR, reason=outcome, now=now)


def close(action: RemediationAction, agent: Agent, decision: str, *, by: str, reason: str, now):
    """Record the decision on the action and publish it; the caller saves the action."""
    action.approval_decision = decision
    action.approval_decided_by = by[:150]
    action.approval_decided_at = now
    action.approval_reason = reason[:300]
    action.approval_expires_at = None
    detail = f"{decision} by {by}" + (f": {reason}" if reason else "")
    services._note(action, now, detail, approval=decision, actor=by, reason=reason)
    publish(
        "watchdog.approval.decided",
        {
            "action_id": action.pk,
            "agent_id": agent.pk,
            "kind": action.step,
            "policy": action.policy.name,
            "step_index": action.step_index,
            "decision": decision,
            "by": action.approval_decided_by,
            "reason": action.approval_reason,
        },
        key=f"approval.decided:{action.pk}:{action.step_index}",
    )
    log.warning(
        "watchdog.approval_decided",
        action_id=action.pk,
        agent_id=agent.pk,
        decision=decision,
        by=action.approval_decided_by,
    )
