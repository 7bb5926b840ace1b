"""Rules every installation has. Created when missing after migrate; never overwritten,
so an operator's edits (disabling, re-wording) stick."""

from alerting.models import AlertRule, RuleKind, Severity

HEARTBEAT_RULE = "agent-heartbeat"


def ensure_builtin_rules() -> None:
    AlertRule.objects.get_or_create(
        name=HEARTBEAT_RULE,
        defaults={
            "kind": RuleKind.HEARTBEAT,
            "severity": Severity.CRITICAL,
            "summary": "Agent {agent_id} ({role}) stopped sending heartbeats",
            "annotations": {"runbook": "docs/architecture.md#the-loop"},
        },
    )
