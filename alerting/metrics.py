"""The metrics alerting publishes, declared in the monitoring catalogue."""

from monitoring.catalog import MetricSpec, MetricType, Producer, declare

declare(
    MetricSpec(
        "alerts_firing",
        MetricType.GAUGE,
        "alerts",
        ("rule", "severity"),
        "Alerts firing now (acknowledged ones included), per rule and severity.",
        producer=Producer.CONSOLE,
        app="alerting",
    ),
    MetricSpec(
        "notifications_total",
        MetricType.COUNTER,
        "notifications",
        ("channel", "status"),
        "Notifications that reached a final status (delivered, failed), per channel.",
        producer=Producer.CONSOLE,
        app="alerting",
    ),
    MetricSpec(
        "notifications_failed_total",
        MetricType.COUNTER,
        "notifications",
        ("channel",),
        "Notifications given up on after their last attempt, per channel.",
        producer=Producer.CONSOLE,
        app="alerting",
    ),
)
