"""Rules and receivers every installation has. Created when missing after migrate; never
overwritten, so an operator's edits (disabling, re-wording, re-pointing) stick."""

from alerting.models import AlertRule, Receiver, RuleKind, Severity

HEARTBEAT_RULE = "agent-heartbeat"
CONSOLE_RECEIVER = "console"
# Without recipients of its own, it mails OMOI_ALERT_EMAIL_TO (and is skipped while that is empty).
EMAIL_RECEIVER = "email"


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


def ensure_builtin_receivers() -> None:
    for name, kind in ((CONSOLE_RECEIVER, "console"), (EMAIL_RECEIVER, "email")):
        Receiver.objects.get_or_create(
            name=name, defaults={"kind": kind, "config": {}, "default": True}
        )
