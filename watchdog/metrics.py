"""The metrics the watchdog publishes, declared in the monitoring catalogue."""

from monitoring.catalog import MetricSpec, MetricType, Producer, declare

declare(
    MetricSpec(
        "watchdog_actions_total",
        MetricType.COUNTER,
        "actions",
        ("step", "outcome"),
        "Remediation actions finished, per step (restart_worker, ...) and outcome.",
        producer=Producer.CONSOLE,
        app="watchdog",
    ),
    MetricSpec(
        "watchdog_escalations_total",
        MetricType.COUNTER,
        "escalations",
        ("policy",),
        "Escalations to people, per remediation policy.",
        producer=Producer.CONSOLE,
        app="watchdog",
    ),
)
