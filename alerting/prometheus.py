"""Alerting's numbers for Prometheus.

``alerts_firing`` is read from the database at scrape time. Notifications and
rule evaluations happen in whichever process does the work (a web worker, a
Celery process), so they are prometheus_client counters and histograms, summed
across processes in multiprocess mode (see ``observability.prometheus``).
"""

from django.db.models import Count
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from alerting.models import Alert, AlertStatus
from monitoring.models import Severity

NOTIFICATIONS = Counter(
    "notifications",
    "Notifications that reached a final status (sent, dead), per channel.",
    ["channel", "status"],
)
RULE_EVALUATION = Histogram(
    "rule_evaluation_duration_seconds",
    "Time one alert rule's evaluation took, per rule kind: its alert changes, and its share "
    "of the reads it shares with the other rules of its tick.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def alert_metrics():
    """``alerts_firing`` per severity: acknowledged alerts still count, pending ones do not."""
    rows = (
        Alert.objects.filter(status__in=[AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED])
        .order_by()
        .values("severity")
        .annotate(count=Count("pk"))
    )
    firing = dict.fromkeys(Severity.values, 0) | {r["severity"]: r["count"] for r in rows}
    family = GaugeMetricFamily(
        "alerts_firing", "Alerts firing now, acknowledged ones included.", labels=["severity"]
    )
    for severity, count in firing.items():
        family.add_metric([severity], count)
    return [family]
