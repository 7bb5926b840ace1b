"""The default policy. Created when missing after migrate; never overwritten."""

from monitoring.models import AgentRole
from watchdog.models import RemediationPolicy, Step, Trigger

RESTART_POLICY = "restart-failed-worker"


def ensure_default_policies() -> None:
    RemediationPolicy.objects.get_or_create(
        name=RESTART_POLICY,
        defaults={
            "trigger": Trigger.AGENT_FAILED,
            "agent_role": AgentRole.WORKER,
            "step": Step.RESTART_WORKER,
            "verify_seconds": 60,
            "cooldown_seconds": 300,
            "max_per_hour": 3,
        },
    )
