"""OTLP metrics in: an ``ExportMetricsServiceRequest`` becomes one ingest batch.

The mapping (docs/monitoring/otlp.md says it for senders):

* Gauge and sum data points (int or double) become samples; histograms,
  exponential histograms and summaries do not (the catalogue declares no such
  metrics) and are rejected point by point, as are points of metrics the
  catalogue does not know. They are counted in the response's ``partial_success``
  so the sender learns what was dropped, while the rest is stored: a process's
  SDK exports every instrument it has, not only the ones the console keeps.
* Everything else that is wrong refuses the whole request, as a batch on the
  JSON endpoint does: nothing is stored.
* A metric's name maps to a catalogue name: lower case, every run of characters
  other than ``a-z0-9_`` (dots above all) becomes one ``_``; a unit of time or
  bytes adds ``_seconds`` or ``_bytes`` (``ms``, ``us`` and ``ns`` are scaled to
  seconds) and a ratio (``1``) ``_ratio``, unless the name already ends so; a
  monotonic sum adds ``_total``. When that name is not in the catalogue, the
  name without the unit suffix is tried, then both without ``_total``.
* Data-point attribute names map like metric names and become labels. Of the
  resource attributes only ``service.instance.id`` is used: it is the ``agent``
  label, unless a data point names its agent itself.
"""

import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from monitoring import catalog, samples
from monitoring.catalog import AGENT_LABEL, MetricType

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# The resource attribute that names the agent a process is (OpenTelemetry's
# semantic convention for "this instance of the service").
AGENT_RESOURCE_ATTRIBUTE = "service.instance.id"
# Units with a dimension: (catalogue unit, name suffix, factor to that unit).
UNITS = {
    "s": ("seconds", 1.0),
    "ms": ("seconds", 1e-3),
    "us": ("seconds", 1e-6),
    "ns": ("seconds", 1e-9),
    "By": ("bytes", 1.0),
}
UNIT_ANNOTATION = re.compile(r"\{[^}]*\}")
NOT_NAME = re.compile(r"[^a-z0-9_]+")
# A data point with this flag marks a series that stopped: there is no value.
NO_RECORDED_VALUE = 1
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
# Names quoted in an answer are cut to this length: a client chooses them.
SHOWN_NAME_LENGTH = 100
# The most problems named in one answer; the rest are counted.
MAX_NAMED_PROBLEMS = 100
# Where a sample's field came from in the data point.
SAMPLE_FIELDS = {"ts": "timeUnixNano", "value": "value"}
NOT_STORED_KINDS = {
    "histogram": "histograms",
    "exponential_histogram": "exponential histograms",
    "summary": "summaries",
}


class ExportRefused(Exception):
    """Nothing was stored; ``problems`` are ``(field, description)`` pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        self.message = message
        self.problems = problems or []
        super().__init__(message)


@dataclass
class Exported:
    stored: samples.Stored
    rejected_points: int = 0
    rejected_reasons: list[str] = field(default_factory=list)

    def response(self) -> ExportMetricsServiceResponse:
        response = ExportMetricsServiceResponse()
        if self.rejected_points:
            response.partial_success.rejected_data_points = self.rejected_points
            response.partial_success.error_message = summarise(self.rejected_reasons)
        return response


def decode(body: bytes, encoding: str) -> ExportMetricsServiceRequest:
    """The request in ``body`` (protobuf or the OTLP JSON mapping); ExportRefused if it is not."""
    request = ExportMetricsServiceRequest()
    try:
        if encoding == PROTOBUF:
            request.ParseFromString(body)
        else:
            # Receivers must ignore fields they do not know (the OTLP JSON rules).
            json_format.Parse(body.decode("utf-8"), request, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, RecursionError):
        kind = "protobuf" if encoding == PROTOBUF else "OTLP JSON"
        raise ExportRefused(f"The body is not an ExportMetricsServiceRequest in {kind}.") from None
    return request


def content_key(sender: str, body: bytes) -> str:
    """An idempotency key for a body from a sender: an exporter's retry resends the same bytes."""
    return f"otlp:{sender}:{hashlib.blake2b(body, digest_size=16).hexdigest()}"


def export(
    request: ExportMetricsServiceRequest,
    *,
    agent_id: str | None = None,
    key: str | None = None,
    now: datetime | None = None,
) -> Exported:
    """Store the request's gauge and sum points as one batch; ExportRefused if any is wrong."""
    batch = translate(request)
    if batch.problems:
        raise refused(batch.problems)
    if not batch.samples:
        if batch.rejected:
            exc = refused(batch.rejected)
            exc.message = "No data point is of a metric the console stores; nothing was stored."
            raise exc
        return Exported(samples.Stored(0))
    try:
        stored = samples.ingest(batch.samples, agent_id=agent_id, key=key, now=now)
    except samples.BatchRejected as exc:
        raise refused(
            [
                (_located(batch.locations, problem), problem.reason)
                for problem in exc.problems
                if problem.field != "key"
            ]
        ) from None
    return Exported(stored, len(batch.rejected), [reason for _, reason in batch.rejected])


@dataclass
class Batch:
    samples: list[dict] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def translate(request: ExportMetricsServiceRequest) -> Batch:
    """The request as ingest samples, with where each came from and what could not map."""
    batch = Batch()
    points = count_points(request)
    if points > settings.METRIC_MAX_SAMPLES_PER_BATCH:
        limit = settings.METRIC_MAX_SAMPLES_PER_BATCH
        batch.problems.append(("resourceMetrics", f"At most {limit} data points per request."))
        return batch
    for r, resource_metrics in enumerate(request.resource_metrics):
        agent = _resource_agent(resource_metrics.resource.attributes)
        for s, scope_metrics in enumerate(resource_metrics.scope_metrics):
            for m, metric in enumerate(scope_metrics.metrics):
                where = f"resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}]"
                _translate_metric(batch, metric, where, agent)
    return batch


def count_points(request: ExportMetricsServiceRequest) -> int:
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def _translate_metric(batch: Batch, metric, where: str, agent: str | None) -> None:
    kind = metric.WhichOneof("data")
    if kind is None:
        return
    points = getattr(metric, kind).data_points
    shown = repr(metric.name[:SHOWN_NAME_LENGTH])
    if kind in NOT_STORED_KINDS:
        reason = f"{shown}: {NOT_STORED_KINDS[kind]} are not stored"
        batch.rejected.extend((f"{where}.{kind}.dataPoints", reason) for _ in points)
        return
    monotonic = kind == "sum" and metric.sum.is_monotonic
    spec, factor = catalogue_spec(metric.name, metric.unit, monotonic=monotonic)
    if spec is None:
        mapped = catalogue_names(metric.name, metric.unit, monotonic=monotonic)[0]
        reason = f"{shown} (as {mapped[:SHOWN_NAME_LENGTH]!r}) is not in the metrics catalogue"
        batch.rejected.extend((f"{where}.{kind}.dataPoints", reason) for _ in points)
        return
    problem = _kind_problem(metric, kind, spec)
    if problem:
        batch.problems.append((f"{where}.{kind}", problem))
        return
    for p, point in enumerate(points):
        location = f"{where}.{kind}.dataPoints[{p}]"
        if point.flags & NO_RECORDED_VALUE:
            continue
        found = _sample(point, spec, factor, agent)
        if isinstance(found, tuple):
            batch.problems.append((f"{location}.{found[0]}", found[1]))
            continue
        batch.samples.append(found)
        batch.locations.append(location)


def _kind_problem(metric, kind: str, spec) -> str | None:
    if kind == "gauge" or not metric.sum.is_monotonic:
        if spec.type != MetricType.GAUGE:
            return f"{spec.name} is a counter: send it as a monotonic sum."
        return None
    if spec.type != MetricType.COUNTER:
        return f"{spec.name} is a gauge: send it as a gauge or a non-monotonic sum."
    if metric.sum.aggregation_temporality != CUMULATIVE:
        return f"{spec.name} is a running total: send cumulative sums, not delta."
    return None


def _sample(point, spec, factor: float, agent: str | None) -> dict | tuple[str, str]:
    value_kind = point.WhichOneof("value")
    if value_kind is None:
        return "value", "A data point needs asInt or asDouble."
    if not point.time_unix_nano:
        return "timeUnixNano", "A data point needs its time."
    if len(point.attributes) > samples.MAX_LABELS:
        return "attributes", f"At most {samples.MAX_LABELS} attributes per data point."
    labels = {}
    for attribute in point.attributes:
        label = label_name(attribute.key)
        if label in labels:
            shown = label[:SHOWN_NAME_LENGTH]
            return "attributes", f"Two attributes map to the label {shown!r}."
        text = attribute_text(attribute.value)
        if text is None:
            shown = label[:SHOWN_NAME_LENGTH]
            return f"attributes.{shown}", "An attribute value is a string, number or bool."
        labels[label] = text
    if agent is not None and AGENT_LABEL in spec.allowed_labels:
        labels.setdefault(AGENT_LABEL, agent)
    value = getattr(point, value_kind)
    return {
        "name": spec.name,
        "labels": labels,
        "ts": point.time_unix_nano / 1e9,
        "value": value * factor if factor != 1.0 else value,
    }


@functools.lru_cache(maxsize=4096)
def catalogue_names(name: str, unit: str, *, monotonic: bool) -> tuple[str, ...]:
    """The catalogue names an OTLP metric may have, the preferred one first."""
    base = NOT_NAME.sub("_", name.lower()).strip("_")
    unit = UNIT_ANNOTATION.sub("", unit).strip()
    suffix = UNITS[unit][0] if unit in UNITS else ("ratio" if unit == "1" else "")
    total = "_total" if monotonic else ""
    stem = base.removesuffix("_total") if monotonic else base
    stems = [f"{stem}_{suffix}", stem] if suffix and not stem.endswith(f"_{suffix}") else [stem]
    # A monotonic sum sent for a gauge still finds it, to be told what it should be.
    endings = [total, ""] if total else [""]
    return tuple(dict.fromkeys(f"{stem}{ending}" for ending in endings for stem in stems))


def catalogue_spec(name: str, unit: str, *, monotonic: bool):
    """The catalogue entry an OTLP metric maps to and the factor its values take, or (None, 1)."""
    for candidate in catalogue_names(name, unit, monotonic=monotonic):
        spec = catalog.get(candidate)
        if spec is not None:
            dimension, factor = UNITS.get(UNIT_ANNOTATION.sub("", unit).strip(), (None, 1.0))
            return spec, factor if dimension == spec.unit else 1.0
    return None, 1.0


@functools.lru_cache(maxsize=4096)
def label_name(key: str) -> str:
    return NOT_NAME.sub("_", key.lower()).strip("_") or "_"


def attribute_text(value) -> str | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    return None


def _resource_agent(attributes) -> str | None:
    for attribute in attributes:
        if attribute.key == AGENT_RESOURCE_ATTRIBUTE:
            return attribute_text(attribute.value)
    return None


def _located(locations: list[str], problem: samples.Problem) -> str:
    where = locations[problem.index] if problem.index is not None else "resourceMetrics"
    if problem.field in ("", "name", "samples"):
        return where
    field_ = SAMPLE_FIELDS.get(problem.field) or problem.field.replace("labels", "attributes", 1)
    return f"{where}.{field_}"


def refused(problems: list[tuple[str, str]]) -> ExportRefused:
    shown = problems[:MAX_NAMED_PROBLEMS]
    more = len(problems) - len(shown)
    message = f"{len(problems)} problem(s) in the request; nothing was stored."
    if more:
        message += f" The first {len(shown)} are listed."
    return ExportRefused(message, shown)


def summarise(reasons: list[str]) -> str:
    """One line per distinct reason, with how many points it covers."""
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    lines = [f"{reason} ({count} point(s))" for reason, count in counts.items()]
    return "; ".join(lines[:MAX_NAMED_PROBLEMS])
