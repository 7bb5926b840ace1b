"""Every event name on the bus and the payload fields it must carry.

docs/monitoring/events.md documents the same table for people; a contract test
keeps the two in step, and ``publish`` refuses a payload that lacks a field.
"""

AGENT_FIELDS = ("agent_id", "role")
ANOMALY_FIELDS = ("anomaly_id", "series", "series_id", "metric", "agent_id")

CATALOG: dict[str, tuple[str, ...]] = {
    "monitor.agent.state_changed": (*AGENT_FIELDS, "from_state", "to_state", "reason", "actor"),
    "monitor.agent.heartbeat_lost": (*AGENT_FIELDS, "last_heartbeat_at", "missed"),
    "monitor.agent.recovered": (*AGENT_FIELDS, "from_state", "to_state", "down_seconds"),
    "monitor.agent.stuck": (
        *AGENT_FIELDS,
        "task_id",
        "progress",
        "progress_changed_at",
        "stuck_after",
        "seconds_without_progress",
    ),
    "monitor.agent.health_anomalous": (*AGENT_FIELDS, "score", "components"),
    "monitor.agent.health_recovered": (*AGENT_FIELDS, "score", "anomalous_seconds"),
    "monitor.anomaly.detected": (
        *ANOMALY_FIELDS,
        "score",
        "direction",
        "severity",
        "detector",
        "started_at",
        "expected_low",
        "expected_high",
        "observed",
    ),
    "monitor.anomaly.resolved": (
        *ANOMALY_FIELDS,
        "peak_score",
        "started_at",
        "ended_at",
        "duration_seconds",
    ),
    "monitor.alert.triggered": ("alert_id", "rule", "severity", "fingerprint", "labels", "summary"),
    "monitor.alert.acknowledged": ("alert_id", "rule", "fingerprint", "labels", "by"),
    "monitor.alert.unacknowledged": ("alert_id", "rule", "fingerprint", "labels", "by"),
    "monitor.alert.resolved": ("alert_id", "rule", "fingerprint", "labels", "duration_seconds"),
    "monitor.alert.escalated": ("alert_id", "rule", "fingerprint", "labels", "level"),
    "watchdog.action.started": ("action_id", "agent_id", "kind", "policy", "dry_run"),
    "watchdog.action.succeeded": ("action_id", "agent_id", "kind", "policy", "seconds"),
    "watchdog.action.step": ("action_id", "agent_id", "kind", "policy", "step_index", "detail"),
    "watchdog.action.deferred": ("action_id", "agent_id", "kind", "policy", "reason", "until"),
    "watchdog.action.skipped": ("action_id", "agent_id", "kind", "policy", "reason", "detail"),
    "watchdog.action.failed": ("action_id", "agent_id", "kind", "policy", "reason"),
    "watchdog.escalated": ("action_id", "agent_id", "role", "policy", "reason"),
    "watchdog.task.failed_over": (
        "action_id",
        "agent_id",
        "role",
        "policy",
        "target_agent_id",
        "task_id",
        "progress",
    ),
    "watchdog.replacement.requested": (
        "action_id",
        "agent_id",
        "role",
        "policy",
        "via",
        "registry_request_id",
    ),
    "watchdog.approval.requested": (
        "action_id",
        "agent_id",
        "role",
        "kind",
        "policy",
        "step_index",
        "plan",
        "expires_at",
    ),
    "watchdog.approval.decided": (
        "action_id",
        "agent_id",
        "kind",
        "policy",
        "step_index",
        "decision",
        "by",
        "reason",
    ),
    "watchdog.storm.started": ("role", "unhealthy", "total", "window_seconds"),
    "watchdog.storm.ended": ("role", "unhealthy", "total", "paused_seconds"),
    "watchdog.breaker.opened": ("policy", "failures", "until"),
    "watchdog.switch.changed": ("dry_run", "by", "reason"),
}


def check_payload(name: str, payload: dict) -> None:
    """Raise ValueError when ``name`` is unknown or ``payload`` lacks a field."""
    fields = CATALOG.get(name)
    if fields is None:
        raise ValueError(f"unknown event name {name!r}")
    missing = [field for field in fields if field not in payload]
    if missing:
        raise ValueError(f"{name} payload lacks {', '.join(missing)}")
