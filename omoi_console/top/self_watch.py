"""The console's own health as metrics in monitoring, so its own rules can alert on it.

Every run stores one small batch through the same ingest as agents' samples,
in series whose names start with ``console_`` and whose ``console`` label names
this console (producer "console", app "console" in the catalogue): the event
bus's lag (age of the oldest unprocessed outbox event: one indexed query), the
latest rule evaluation's duration and the running count of failed notification
attempts (noted in the cache where they happen, ``observability.self_metrics``),
and the age of each console process's last liveness beat. The default rules of
``alerting.builtins`` named ``console-...`` watch them.
"""

import structlog
from django.conf import settings
from django.utils import timezone

from monitoring import samples
from monitoring.catalog import MetricSpec, MetricType, Producer, declare
from observability import liveness, self_metrics
from omoi_console.models import Event, EventStatus

log = structlog.get_logger(__name__)

EVENT_BUS_LAG = "console_event_bus_lag_seconds"
RULE_EVALUATION = "console_rule_evaluation_seconds"
NOTIFICATION_FAILURES = "console_notification_failures_total"
PROCESS_AGE = "console_process_age_seconds"
# Every series carries this label, naming the console (OTEL_SERVICE_NAME) it is about:
# its own series, apart from any agent's.
CONSOLE_LABEL = "console"
# Which of the console's processes a liveness series is about.
PROCESS_LABEL = "process"

SPECS = (
    MetricSpec(
        EVENT_BUS_LAG,
        MetricType.GAUGE,
        "seconds",
        (CONSOLE_LABEL,),
        "Age of the oldest outbox event not yet processed by its handlers (0: none waiting).",
        producer=Producer.CONSOLE,
        app="console",
        detection=None,
    ),
    MetricSpec(
        RULE_EVALUATION,
        MetricType.GAUGE,
        "seconds",
        (CONSOLE_LABEL,),
        "How long the latest run of alert rule evaluation took.",
        producer=Producer.CONSOLE,
        app="console",
        detection=None,
    ),
    MetricSpec(
        NOTIFICATION_FAILURES,
        MetricType.COUNTER,
        "attempts",
        (CONSOLE_LABEL,),
        "Failed notification delivery attempts (retried or given up on), a running total.",
        producer=Producer.CONSOLE,
        app="console",
        detection=None,
    ),
    MetricSpec(
        PROCESS_AGE,
        MetricType.GAUGE,
        "seconds",
        (CONSOLE_LABEL, PROCESS_LABEL),
        "Seconds since the console's process (worker, beat, ticker) last proved it is alive.",
        producer=Producer.CONSOLE,
        app="console",
        max_series=10,
        detection=None,
    ),
)
declare(*SPECS)


def event_bus_lag(now) -> float:
    oldest = (
        Event.objects.filter(status=EventStatus.PENDING)
        .order_by("occurred_at")
        .values_list("occurred_at", flat=True)
        .first()
    )
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def record_console_metrics() -> int:
    """Store one sample of each of the console's own metrics; how many were stored."""
    now = timezone.now()
    ts = now.timestamp()
    own = {CONSOLE_LABEL: settings.OTEL_SERVICE_NAME}
    batch = [{"name": EVENT_BUS_LAG, "labels": own, "ts": ts, "value": event_bus_lag(now)}]
    readings = self_metrics.readings()
    for reading, name in (
        (self_metrics.RULE_EVALUATION_SECONDS, RULE_EVALUATION),
        (self_metrics.NOTIFICATION_FAILURES, NOTIFICATION_FAILURES),
    ):
        if reading in readings:
            batch.append({"name": name, "labels": own, "ts": ts, "value": readings[reading]})
    for process, age in liveness.ages().items():
        if age is not None:
            batch.append(
                {
                    "name": PROCESS_AGE,
                    "labels": {**own, PROCESS_LABEL: process},
                    "ts": ts,
                    "value": age,
                }
            )
    return samples.ingest(batch, now=now).samples
