"""What makes a remediation policy valid, and whether one matches a trigger.

One check (``policy_problems``) serves the model's ``clean()`` (admin), the API
serializer and the default policies, so a bad policy is refused the same way
everywhere, naming the field, and nothing is half-saved.
"""

from alerting import matchers as alert_matchers
from monitoring.models import Agent, Severity
from watchdog.models import RemediationPolicy, Trigger

MAX_STEPS = 10
MAX_STEP_SECONDS = 86400
# How long a step may wait for an operator's approval before it counts as rejected.
MAX_APPROVAL_SECONDS = 86400
STEP_KEYS = frozenset({"kind", "after", "verify", "approve"})
ALERT_FIELDS = ("alert_rule", "severity", "matchers")


def step_problems(steps) -> list[str]:
    from watchdog.steps import STEPS

    if not isinstance(steps, list) or not steps:
        return ['a non-empty list of steps such as [{"kind": "restart_worker", "verify": 60}]']
    if len(steps) > MAX_STEPS:
        return [f"at most {MAX_STEPS} steps"]
    problems = []
    for number, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            problems.append(f"step {number}: an object with kind, after, verify and approve")
            continue
        unknown = sorted(set(step) - STEP_KEYS)
        if unknown:
            problems.append(f"step {number}: unknown key(s) {', '.join(unknown)}")
        kinds = [name for name, kind in STEPS.items() if not kind.manual_only]
        if step.get("kind") not in kinds:
            problems.append(
                f"step {number}: kind {step.get('kind')!r} is not one of {', '.join(kinds)}"
            )
        for key in ("after", "verify"):
            value = step.get(key, 0)
            if type(value) is not int or not 0 <= value <= MAX_STEP_SECONDS:
                problems.append(
                    f"step {number}: {key} is whole seconds from 0 to {MAX_STEP_SECONDS}"
                )
        problems += approval_problems(number, step)
    return problems


def approval_problems(number: int, step: dict) -> list[str]:
    """``approve``: how long the step waits for an operator's approval (0 or absent: none)."""
    from watchdog.steps import STEPS

    value = step.get("approve", 0)
    if type(value) is not int or not 0 <= value <= MAX_APPROVAL_SECONDS:
        return [
            f"step {number}: approve is whole seconds from 0 (no approval) to "
            f"{MAX_APPROVAL_SECONDS}: how long the step waits for an operator"
        ]
    kind = STEPS.get(step.get("kind"))
    if value and kind is not None and not kind.acts_on_agent:
        return [f"step {number}: approve: a {kind.name} step does nothing to the agent to approve"]
    return []


def policy_problems(fields: dict) -> dict[str, list[str]]:
    """Problems by field name; empty when the policy is valid."""
    problems: dict[str, list[str]] = {}
    steps = step_problems(fields.get("steps"))
    if steps:
        problems["steps"] = steps
    try:
        alert_matchers.parse_all(fields.get("matchers") or [])
    except ValueError as exc:
        problems["matchers"] = [str(exc)]
    severity = fields.get("severity") or ""
    if severity and severity not in Severity.values:
        problems["severity"] = [f"one of {', '.join(Severity.values)}, or empty for any"]
    if fields.get("trigger") == Trigger.ALERT and not any(
        fields.get(name) for name in (*ALERT_FIELDS, "agent_role")
    ):
        # It would act on every agent any alert names: the empty selector.
        problems.setdefault("matchers", []).append(
            "an alert policy must say what it acts on: set alert_rule, severity, "
            "matchers or agent_role"
        )
    if fields.get("trigger") == Trigger.MANUAL:
        problems["trigger"] = [
            "manual is reserved for operators' actions; choose agent_failed or alert"
        ]
    if fields.get("trigger") != Trigger.ALERT:
        for name in ALERT_FIELDS:
            if fields.get(name):
                problems.setdefault(name, []).append(
                    "only a policy with the alert trigger matches on alerts"
                )
    return problems


def policy_matches(policy: RemediationPolicy, agent: Agent, alert: dict | None) -> bool:
    if policy.agent_role and policy.agent_role != agent.role:
        return False
    if policy.trigger == Trigger.ALERT:
        if alert is None:
            return False
        if policy.alert_rule and policy.alert_rule != alert.get("rule"):
            return False
        if policy.severity and policy.severity != alert.get("severity"):
            return False
        parsed = alert_matchers.parse_all(policy.matchers or [])
        return alert_matchers.matches_all(parsed, alert.get("labels") or {})
    return alert is None


def matching_policy(trigger: str, agent: Agent, alert: dict | None = None):
    """The first enabled policy (by priority) for this trigger that matches."""
    from watchdog import batch

    for policy in batch.policies(trigger):
        if policy_matches(policy, agent, alert):
            return policy
    return None
