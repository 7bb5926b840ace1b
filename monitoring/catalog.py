"""The metrics catalogue: every metric the console stores, declared once, in code.

A metric has a name, a type, a unit, the label names its series may carry, a
description and its producer (who sends or computes it). Ingest refuses a sample
of a metric that is not here, or with a label the metric does not declare.
Apps above monitoring add the metrics they publish with ``declare`` from their
``AppConfig.ready()``, so the catalogue is complete once Django is set up.

``/api/v1/metrics/catalog`` serves it and docs/monitoring/metrics.md is generated
from it (``manage.py metrics_doc``); a test fails when the page is stale.
"""

import re
from dataclasses import dataclass, field, replace

from django.db import models

from monitoring.detectors import DEFAULT_DETECTOR

METRIC_NAME = re.compile(r"[a-z_][a-z0-9_]{0,99}")
# Every series names the agent it is about when there is one: ingest fills it in
# from an agent's token, and the query API filters and ranks agents by it.
AGENT_LABEL = "agent"


class MetricType(models.TextChoices):
    GAUGE = "gauge", "Gauge (a level, sampled)"
    COUNTER = "counter", "Counter (a running total that only grows, except on reset)"


class Producer(models.TextChoices):
    AGENT = "agent", "Agents (sent to the ingest API)"
    CONSOLE = "console", "The console itself"


class DetectOn(models.TextChoices):
    """Which number of a series' minute its anomaly detector is fed."""

    MEAN = "mean", "Mean of the minute's samples"
    MIN = "min", "Smallest sample of the minute"
    MAX = "max", "Largest sample of the minute"
    P50 = "p50", "Median of the minute"
    P95 = "p95", "95th percentile of the minute"
    P99 = "p99", "99th percentile of the minute"
    SUM = "sum", "Sum of the minute's samples"
    COUNT = "count", "Number of samples in the minute"
    INCREASE = "increase", "Growth of a counter since the previous minute (a reset counts from 0)"


@dataclass(frozen=True)
class Detection:
    """How a metric's series are watched for anomalies unless an operator says otherwise.

    ``on`` empty means "by the metric's type": a gauge's mean, a counter's increase.
    """

    on: str = ""
    detector: str = DEFAULT_DETECTOR
    params: tuple[tuple[str, float], ...] = ()
    severity: str = "warning"

    def as_dict(self) -> dict:
        return {
            "on": self.on,
            "detector": self.detector,
            "params": dict(self.params),
            "severity": self.severity,
        }


BY_TYPE = Detection()


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str
    unit: str
    labels: tuple[str, ...]
    description: str
    producer: str = Producer.AGENT
    # The most series (distinct label sets) the metric may have; ingest refuses
    # a batch that would create more. None uses the site default.
    max_series: int | None = None
    # The owning app, for the generated documentation.
    app: str = "monitoring"
    # The default anomaly detection of its series (None: not watched). An
    # operator's DetectorSetting row for the metric replaces it.
    detection: Detection | None = BY_TYPE
    allowed_labels: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r} is not lower_snake_case")
        object.__setattr__(self, "allowed_labels", frozenset(self.labels))
        if self.detection is not None and not self.detection.on:
            on = DetectOn.INCREASE if self.type == MetricType.COUNTER else DetectOn.MEAN
            object.__setattr__(self, "detection", replace(self.detection, on=on))

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "unit": self.unit,
            "labels": list(self.labels),
            "description": self.description,
            "producer": self.producer,
            "app": self.app,
            "max_series": self.series_cap(),
            "detection": self.detection.as_dict() if self.detection else None,
        }

    def series_cap(self) -> int:
        from django.conf import settings

        return self.max_series or settings.METRIC_MAX_SERIES_PER_METRIC


CATALOG: dict[str, MetricSpec] = {}


def declare(*specs: MetricSpec) -> None:
    """Add metrics to the catalogue; declaring the same spec twice is harmless."""
    for spec in specs:
        known = CATALOG.get(spec.name)
        if known is not None and known != spec:
            raise ValueError(f"metric {spec.name!r} is declared twice, differently")
        CATALOG[spec.name] = spec


def get(name: str) -> MetricSpec | None:
    return CATALOG.get(name)


def ordered() -> list[MetricSpec]:
    return sorted(CATALOG.values(), key=lambda spec: (spec.app, spec.name))


declare(
    MetricSpec(
        "task_latency_seconds",
        MetricType.GAUGE,
        "seconds",
        (AGENT_LABEL, "task_kind"),
        "How long the agent took for one task, from pickup to result.",
        detection=Detection(DetectOn.P95),
    ),
    MetricSpec(
        "queue_depth",
        MetricType.GAUGE,
        "tasks",
        (AGENT_LABEL, "queue"),
        "Tasks waiting in a queue the agent reads from.",
    ),
    MetricSpec(
        "lock_wait_seconds",
        MetricType.GAUGE,
        "seconds",
        (AGENT_LABEL, "lock"),
        "Time the agent waited for a shared lock (a repository, a file, a ticket).",
        detection=Detection(DetectOn.P95),
    ),
    MetricSpec(
        "task_failures_total",
        MetricType.COUNTER,
        "tasks",
        (AGENT_LABEL, "task_kind", "reason"),
        "Tasks the agent gave up on or that ended in an error, since the agent started.",
    ),
    MetricSpec(
        "error_rate",
        MetricType.GAUGE,
        "ratio",
        (AGENT_LABEL,),
        "Share of the agent's recent operations that failed (0 to 1).",
    ),
    MetricSpec(
        "clock_skew_seconds",
        MetricType.GAUGE,
        "seconds",
        (AGENT_LABEL,),
        "Agent clock minus console clock, as measured at heartbeat time.",
    ),
    MetricSpec(
        "heartbeat_age_seconds",
        MetricType.GAUGE,
        "seconds",
        (AGENT_LABEL, "role"),
        "Seconds since the agent's last heartbeat, when the console looked.",
        producer=Producer.CONSOLE,
        # A sawtooth by nature; the heartbeat deadlines already judge it.
        detection=None,
    ),
    MetricSpec(
        "agent_availability",
        MetricType.GAUGE,
        "ratio",
        ("role",),
        "Share of the role's live agents that are healthy (idle or running).",
        producer=Producer.CONSOLE,
    ),
)


DOC_HEADER = """# Metrics catalogue

Every metric Omoi Console stores, generated from the code's catalogue
(`monitoring/catalog.py` and the `metrics.py` of each app) by
`uv run manage.py metrics_doc`; a test fails when this page is stale. The same
list is served at `GET /api/v1/metrics/catalog`.

Agents send the metrics produced by *agents* to `POST /api/v1/metrics/ingest`
(or as OTLP); the console computes the others. A sample names its metric, a
value for some of the metric's labels and nothing else; the `agent` label is
filled in from an agent's own token. A metric may have at most `max series`
distinct label sets (`default` is `OMOI_METRIC_MAX_SERIES_PER_METRIC`, 20,000);
a batch that would create more is refused (422).
"""


def render_markdown() -> str:
    lines = [DOC_HEADER]
    for app in sorted({spec.app for spec in CATALOG.values()}):
        lines.append(f"## {app}\n")
        lines.append(
            "| name | type | unit | labels | producer | max series | anomaly detection "
            "| description |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for spec in ordered():
            if spec.app != app:
                continue
            labels = ", ".join(f"`{label}`" for label in spec.labels)
            watched = spec.detection
            detection = f"`{watched.detector}` on {watched.on}" if watched else "none"
            lines.append(
                f"| `{spec.name}` | {spec.type} | {spec.unit} | {labels} | {spec.producer} "
                f"| {spec.max_series or 'default'} | {detection} | {spec.description} |"
            )
        lines.append("")
    return "\n".join(lines)
