"""Rules and receivers every installation has. Created when missing after migrate; never
overwritten, so an operator's edits (disabling, re-wording, re-pointing) stick.

Each default rule links its runbook (docs/runbooks/) in ``runbook_url``.
"""

from alerting.models import AlertRule, Receiver

HEARTBEAT_RULE = "agent-heartbeat"
RUNBOOKS = "docs/runbooks"
CONSOLE_RECEIVER = "console"
# Without recipients of its own, it mails OMOI_ALERT_EMAIL_TO (and is skipped while that is empty).
EMAIL_RECEIVER = "email"

DEFAULT_RULES = [
    {
        "name": HEARTBEAT_RULE,
        "kind": "heartbeat",
        "severity": "critical",
        "summary": "Agent {agent_id} ({role}) stopped sending heartbeats",
    },
    {
        "name": "agent-reported-failed",
        "kind": "agent",
        "severity": "critical",
        "summary": "Agent {agent_id} ({role}) reported that it failed",
        "params": {"states": ["failed"], "reported": True},
        "evaluate_every": "5s",
    },
    {
        "name": "agent-unresponsive",
        "kind": "agent",
        "severity": "error",
        "summary": "Agent {agent_id} ({role}) sends heartbeats but its task makes no progress",
        "params": {"states": ["stuck"]},
        "evaluate_every": "5s",
    },
    {
        "name": "remediation-failed",
        "kind": "remediation",
        "severity": "critical",
        "summary": "Automatic remediation of agent {agent_id} ({role}) gave up: a person is needed",
    },
    {
        "name": "remediation-approval",
        "kind": "approval",
        "severity": "warning",
        "summary": "Remediation of agent {agent_id} ({role}) waits for an operator: "
        "approve or reject step {step} ({kind}) of action {action_id}",
    },
    {
        "name": "watchdog-storm",
        "kind": "storm",
        "severity": "critical",
        "summary": "{unhealthy} of {total} {role}s failed at once: automatic restarts of "
        "{role}s are paused",
    },
    {
        "name": "agent-anomaly-high",
        "kind": "agent",
        "severity": "error",
        "summary": "Agent {agent_id} ({role}) is unhealthy: its composite health is anomalous",
        "params": {"health_anomalous": True},
    },
    {
        "name": "task-latency-p95-high",
        "kind": "threshold",
        "severity": "warning",
        "summary": "Tasks of agent {agent} take {value}s at the 95th percentile",
        "metric": "task_latency_seconds",
        "aggregation": "p95",
        "window": "10m",
        "group_by": ["agent"],
        "condition": "> 900",
        "for": "5m",
    },
    {
        "name": "queue-depth-high",
        "kind": "threshold",
        "severity": "warning",
        "summary": "Queue {queue} of agent {agent} holds {value} tasks",
        "metric": "queue_depth",
        "aggregation": "avg",
        "window": "10m",
        "group_by": ["agent", "queue"],
        "condition": "> 1000",
        "for": "10m",
    },
    {
        "name": "lock-wait-high",
        "kind": "threshold",
        "severity": "warning",
        "summary": "Agent {agent} waits {value}s for lock {lock} at the 95th percentile",
        "metric": "lock_wait_seconds",
        "aggregation": "p95",
        "window": "10m",
        "group_by": ["agent", "lock"],
        "condition": "> 60",
        "for": "5m",
    },
    # The console's own health (omoi_console.top.self_watch records these metrics).
    {
        "name": "console-event-bus-lagging",
        "kind": "threshold",
        "severity": "error",
        "summary": "The console's event bus is {value}s behind: events wait for their handlers",
        "metric": "console_event_bus_lag_seconds",
        "aggregation": "max",
        "window": "2m",
        "condition": "> 60",
        "for": "2m",
    },
    {
        "name": "console-process-stale",
        "kind": "threshold",
        "severity": "critical",
        "summary": "The console's {process} last proved it is alive {value}s ago",
        "metric": "console_process_age_seconds",
        "aggregation": "max",
        "window": "2m",
        "group_by": ["process"],
        "condition": "> 30",
    },
    {
        "name": "console-notifications-failing",
        "kind": "threshold",
        "severity": "warning",
        "summary": "Notification deliveries fail {value} times a second",
        "metric": "console_notification_failures_total",
        "aggregation": "rate",
        "window": "10m",
        "condition": "> 0.01",
        "for": "5m",
    },
    {
        "name": "console-rule-evaluation-slow",
        "kind": "threshold",
        "severity": "warning",
        "summary": "A run of alert rule evaluation took {value}s",
        "metric": "console_rule_evaluation_seconds",
        "aggregation": "max",
        "window": "10m",
        "condition": "> 10",
        "for": "10m",
    },
]


def ensure_builtin_rules() -> None:
    from alerting.api.serializers import AlertRuleSerializer

    existing = set(AlertRule.objects.values_list("name", flat=True))
    for document in DEFAULT_RULES:
        if document["name"] in existing:
            continue
        annotations = {"runbook_url": f"{RUNBOOKS}/{document['name']}.md"}
        serializer = AlertRuleSerializer(data={**document, "annotations": annotations})
        serializer.is_valid(raise_exception=True)
        serializer.save()


def ensure_builtin_receivers() -> None:
    for name, kind in ((CONSOLE_RECEIVER, "console"), (EMAIL_RECEIVER, "email")):
        Receiver.objects.get_or_create(
            name=name, defaults={"kind": kind, "config": {}, "default": True}
        )
