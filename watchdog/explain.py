"""Which policy would act on an agent (or an alert), and what it would do: read-only.

``explain`` walks the policies in the order ``matching_policy`` does, says for
each why it matches or not, and for the one that acts lists its steps as they
would run. It acts on nothing and records nothing.
"""

from django.conf import settings

from alerting import matchers as alert_matchers
from monitoring.models import Agent
from watchdog.models import (
    OPEN_ACTION_STATUSES,
    RemediationAction,
    RemediationPolicy,
    Trigger,
)
from watchdog.services import ACTIONABLE_STATES, ALERT_ACTIONABLE_STATES
from watchdog.steps import StepContext, get_step


def alert_payload(alert) -> dict:
    """The alert as ``monitor.alert.triggered`` tells it to the watchdog."""
    return {
        "alert_id": alert.pk,
        "rule": alert.rule.name,
        "severity": alert.severity,
        "fingerprint": alert.fingerprint,
        "labels": alert.labels,
    }


def alert_agent_id(alert: dict) -> str:
    labels = alert.get("labels") or {}
    return labels.get("agent_id") or labels.get("agent") or ""


def mismatch(policy: RemediationPolicy, trigger: str, agent: Agent, alert: dict | None) -> str:
    """Why ``policy`` does not act here; empty when it does."""
    if not policy.enabled:
        return "disabled"
    if policy.trigger != trigger:
        return f"trigger is {policy.trigger}"
    if policy.agent_role and policy.agent_role != agent.role:
        return f"for {policy.agent_role} agents; this one is a {agent.role}"
    if trigger != Trigger.ALERT:
        return ""
    if policy.alert_rule and policy.alert_rule != alert.get("rule"):
        return f"for alerts of rule {policy.alert_rule}"
    if policy.severity and policy.severity != alert.get("severity"):
        return f"for {policy.severity} alerts"
    parsed = alert_matchers.parse_all(policy.matchers or [])
    if not alert_matchers.matches_all(parsed, alert.get("labels") or {}):
        return "the alert's labels do not match " + ", ".join(policy.matchers)
    return ""


def explain(trigger: str, agent: Agent, alert: dict | None = None) -> dict:
    candidates, chosen = [], None
    for policy in RemediationPolicy.objects.exclude(trigger=Trigger.MANUAL):
        why = mismatch(policy, trigger, agent, alert)
        if not why and chosen is None:
            chosen = policy
        candidates.append(
            {
                "policy": policy.name,
                "priority": policy.priority,
                "matches": not why,
                "acts": policy is chosen,
                "why": why
                or ("acts" if policy is chosen else "matches, but a policy before it acts"),
            }
        )
    answer = {
        "trigger": trigger,
        "agent": agent.pk,
        "agent_state": agent.state,
        "alert": alert,
        "policy": chosen.name if chosen else None,
        "candidates": candidates,
        "would_act": False,
        "held_by": "",
        "steps": [],
    }
    if chosen is None:
        answer["held_by"] = "no policy matches"
        return answer
    answer["held_by"] = _held_by(chosen, trigger, agent)
    answer["would_act"] = not answer["held_by"]
    answer["steps"] = _steps(chosen, agent)
    return answer


def _held_by(policy, trigger: str, agent: Agent) -> str:
    """What would stop the policy acting now (the action would still be recorded)."""
    if settings.WATCHDOG_MODE == "off":
        return "the watchdog is off (OMOI_WATCHDOG_MODE=off)"
    actionable = ALERT_ACTIONABLE_STATES if trigger == Trigger.ALERT else ACTIONABLE_STATES
    if agent.state not in actionable:
        return f"not_actionable: the agent is {agent.state}"
    busy = (
        RemediationAction.objects.filter(agent=agent, status__in=OPEN_ACTION_STATUSES)
        .values_list("pk", flat=True)
        .first()
    )
    if busy is not None:
        return f"busy: action {busy} is already remediating the agent"
    if settings.WATCHDOG_MODE == "dry-run" or policy.dry_run:
        return "dry_run: it would be recorded, not acted on"
    return ""


def _steps(policy, agent: Agent) -> list[dict]:
    ctx = StepContext(
        action=RemediationAction(policy=policy, agent=agent), agent=agent, adapter=None
    )
    steps, last = [], len(policy.steps) - 1
    for index, spec in enumerate(policy.steps):
        wait = max(spec.get("after", 0), spec.get("verify", 0))
        step = get_step(spec["kind"])
        then = f"if {step.unhealed} within {wait}s, " + (
            "escalate to a person" if index == last else f"step {index + 2}"
        )
        approve = spec.get("approve", 0)
        steps.append(
            {
                "index": index,
                "kind": step.name,
                "plan": step.plan(ctx),
                "after": spec.get("after", 0),
                "verify": spec.get("verify", 0),
                "approve": approve,
                "approval": (
                    f"waits up to {approve}s for an operator to approve it; rejected or "
                    "not approved in time, the action is skipped (rejected)"
                    if approve
                    else ""
                ),
                "then": "ends the action, escalated" if step.name == "escalate" else then,
            }
        )
    return steps
