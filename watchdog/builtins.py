"""The default policy. Created when missing after migrate; never overwritten.

Migration 0004 brought an existing default up to today's defaults (60 s
cooldown, steps), unless an operator had changed it.
"""

from monitoring.models import AgentRole
from watchdog.models import (
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_GRACEFUL_STOP_SECONDS,
    DEFAULT_MAX_RESTARTS_PER_HOUR,
    DEFAULT_VERIFY_SECONDS,
    RemediationPolicy,
    Step,
    Trigger,
)

RESTART_POLICY = "restart-failed-worker"
# What operators' manual actions are recorded under: its trigger matches no event.
MANUAL_POLICY = "manual"

# Restart; not healthy within 60 s: the action escalates to a person.
DEFAULT_STEPS = [{"kind": Step.RESTART_WORKER.value, "after": 0, "verify": DEFAULT_VERIFY_SECONDS}]


def ensure_default_policies() -> None:
    RemediationPolicy.objects.get_or_create(
        name=RESTART_POLICY,
        defaults={
            "trigger": Trigger.AGENT_FAILED,
            "agent_role": AgentRole.WORKER,
            "steps": DEFAULT_STEPS,
            "graceful_stop_seconds": DEFAULT_GRACEFUL_STOP_SECONDS,
            "cooldown_seconds": DEFAULT_COOLDOWN_SECONDS,
            "max_per_hour": DEFAULT_MAX_RESTARTS_PER_HOUR,
        },
    )


def manual_policy() -> RemediationPolicy:
    """The policy operators' manual actions are recorded under, created on first use."""
    policy, _ = RemediationPolicy.objects.get_or_create(
        name=MANUAL_POLICY,
        defaults={
            "trigger": Trigger.MANUAL,
            "steps": DEFAULT_STEPS,
            "graceful_stop_seconds": DEFAULT_GRACEFUL_STOP_SECONDS,
            "priority": 1000,
        },
    )
    return policy
