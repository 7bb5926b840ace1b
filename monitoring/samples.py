"""Metric samples in: a batch is checked whole, then stored whole or not at all.

``ingest`` is the one way samples enter the console: the HTTP endpoint, OTLP and
the event-bus consumer all hand it plain ``{name, labels, ts, value}`` dicts.
On PostgreSQL the samples go in with one binary COPY into the day-partitioned
table; on SQLite with one bulk insert. Series ids are cached in this process, so
a batch of known series costs no lookups.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from monitoring import catalog, partitions
from monitoring.catalog import AGENT_LABEL, Producer
from monitoring.models import MetricSeries, RollupBacklog, RollupCursor
from omoi_console.foundation.labels import LABEL_NAME, storable

LABEL_VALUE_MAX_LENGTH = 200
MAX_LABELS = 16
# How many series ids this process remembers before it starts over.
SERIES_CACHE_LIMIT = 500_000
COPY_SAMPLES = "COPY monitor_samples (series_id, ts, value) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ("int8", "timestamptz", "float8")
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Problem:
    index: int | None
    field: str
    reason: str

    def as_dict(self) -> dict:
        return {"index": self.index, "field": self.field, "detail": self.reason}


class BatchRejected(Exception):
    """The batch was not stored; ``problems`` says why, sample by sample."""

    def __init__(self, problems: list[Problem], detail: str | None = None):
        self.problems = problems
        self.detail = detail or f"{len(problems)} problem(s) in the batch; nothing was stored."
        super().__init__(self.detail)


@dataclass(frozen=True)
class Stored:
    samples: int
    series_created: int = 0
    duplicate: bool = False

    def as_dict(self) -> dict:
        return {
            "stored": self.samples,
            "series_created": self.series_created,
            "duplicate": self.duplicate,
        }


# (metric, ((label, value), ...)) -> series id, for series known to exist.
_series_ids: dict[tuple, int] = {}


def forget_series() -> None:
    _series_ids.clear()


def fingerprint(labels: dict) -> str:
    canonical = json.dumps(labels, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def ingest(
    samples, *, agent_id: str | None = None, key: str | None = None, now: datetime | None = None
) -> Stored:
    """Check and store one batch. Raises ``BatchRejected`` (nothing stored).

    ``agent_id`` is set when an agent sends the batch with its own token: it may
    then only send agent metrics, and only about itself (the ``agent`` label is
    filled in, or must name it). ``key`` makes the batch idempotent: a batch
    whose key was stored before is not stored again.
    """
    now = now or timezone.now()
    rows, problems = parse(samples, agent_id=agent_id, now=now)
    if problems:
        raise BatchRejected(problems)
    if key is not None and not (0 < len(key) <= 200 and storable(key)):
        raise BatchRejected([Problem(None, "key", "Idempotency keys are 1-200 characters.")])
    partitions.ensure_days(partitions.SAMPLES, _days_spanned(rows))
    with transaction.atomic():
        if key is not None and not _claim_key(key, len(rows), now):
            return Stored(0, duplicate=True)
        resolved, created = _resolve_series({series for series, _, _ in rows})
        _write(rows, resolved)
        _mark_late_minutes(rows)
    _series_ids.update(resolved)
    return Stored(len(rows), series_created=created)


def _days_spanned(rows: list[tuple]) -> list:
    """Every day from the batch's oldest sample to its newest (one or two, as a rule)."""
    first = partitions.day_of(min(ts for _, ts, _ in rows))
    last = partitions.day_of(max(ts for _, ts, _ in rows))
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def parse(samples, *, agent_id: str | None, now: datetime) -> tuple[list[tuple], list[Problem]]:
    """``[(series key, ts, value)]`` and the problems found, sample by sample."""
    if not isinstance(samples, list):
        return [], [Problem(None, "samples", "Expected a list of samples.")]
    if not samples:
        return [], [Problem(None, "samples", "The batch is empty.")]
    limit = settings.METRIC_MAX_SAMPLES_PER_BATCH
    if len(samples) > limit:
        return [], [Problem(None, "samples", f"At most {limit} samples per batch.")]
    oldest = now - timedelta(days=settings.METRIC_SAMPLE_RETENTION_DAYS)
    newest = now + timedelta(seconds=settings.METRIC_FUTURE_TOLERANCE_SECONDS)
    oldest_s, newest_s = oldest.timestamp(), newest.timestamp()
    rows, problems = [], []
    seen: dict[tuple, int] = {}
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            problems.append(Problem(index, "", "A sample is an object {name, labels, ts, value}."))
            continue
        found = _parse_one(index, sample, agent_id, oldest_s, newest_s)
        if isinstance(found, Problem):
            problems.append(found)
            continue
        series, seconds, value = found
        earlier = seen.setdefault((series, seconds), index)
        if earlier != index:
            problems.append(Problem(index, "ts", f"Same series and timestamp as sample {earlier}."))
            continue
        rows.append((series, datetime.fromtimestamp(seconds, UTC), value))
    return rows, problems


FIELDS = frozenset({"name", "labels", "ts", "value"})
NO_LABELS: dict = {}


def _parse_one(index, sample, agent_id, oldest_s, newest_s):
    """(series key, seconds, value), or the sample's first problem.

    Written for the common case, a sample of a series this process has stored
    before: its labels were checked when the series was created, so they are
    not checked again.
    """
    if not FIELDS.issuperset(sample):
        return Problem(index, sorted(sample.keys() - FIELDS)[0], "Unknown field.")
    name = sample.get("name")
    spec = catalog.CATALOG.get(name) if type(name) is str else None
    if spec is None:
        shown = repr(name[:100]) if isinstance(name, str) and storable(name) else "this metric"
        return Problem(index, "name", f"Unknown metric {shown}; see /api/v1/metrics/catalog.")
    labels = sample.get("labels", NO_LABELS)
    if type(labels) is not dict:
        return Problem(index, "labels", "Labels are an object of names to texts.")
    if agent_id is not None:
        if spec.producer != Producer.AGENT:
            return Problem(index, "name", f"{name} is computed by the console, not sent.")
        if AGENT_LABEL in spec.allowed_labels:
            claimed = labels.get(AGENT_LABEL, agent_id)
            if claimed != agent_id:
                return Problem(index, "labels.agent", "An agent may only report about itself.")
            if AGENT_LABEL not in labels:
                labels = {**labels, AGENT_LABEL: agent_id}
    try:
        key = (name, tuple(sorted(labels.items())))
        known = key in _series_ids
    except TypeError:  # a label value that cannot be hashed (a list, an object)
        known = False
    if not known:
        problem = _check_labels(index, labels, spec)
        if problem:
            return problem
        key = (name, tuple(sorted(labels.items())))
    seconds = sample.get("ts")
    if type(seconds) is not float and type(seconds) is not int:
        seconds = _seconds(seconds)
        if seconds is None:
            return Problem(
                index, "ts", "A timestamp is Unix seconds or an ISO 8601 time with zone."
            )
    if not oldest_s <= seconds <= newest_s:
        if seconds != seconds or seconds < oldest_s:
            return Problem(index, "ts", "Older than the sample retention.")
        return Problem(index, "ts", "More than the allowed tolerance in the future.")
    value = sample.get("value")
    if type(value) is not float:
        if type(value) is not int:
            return Problem(index, "value", "A value is a number.")
        value = float(value)
    if value - value != 0.0:  # NaN or infinite
        return Problem(index, "value", "A value must be finite (no NaN or infinity).")
    return key, seconds, value


def _check_labels(index: int, labels: dict, spec) -> Problem | None:
    if len(labels) > MAX_LABELS:
        return Problem(index, "labels", f"At most {MAX_LABELS} labels.")
    for label, text in labels.items():
        if label not in spec.allowed_labels:
            if isinstance(label, str) and storable(label) and LABEL_NAME.fullmatch(label):
                reason = f"{spec.name} has no label {label!r}; it has {', '.join(spec.labels)}."
            else:
                reason = "Not a label name."
            return Problem(index, "labels", reason)
        if not isinstance(text, str):
            return Problem(index, f"labels.{label}", "A label value is text.")
        if len(text) > LABEL_VALUE_MAX_LENGTH or not storable(text):
            return Problem(
                index,
                f"labels.{label}",
                f"At most {LABEL_VALUE_MAX_LENGTH} characters of storable text.",
            )
    return None


def _seconds(ts) -> float | None:
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int | float):
        return float(ts) if math.isfinite(ts) else None
    if isinstance(ts, str) and len(ts) <= 40:
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None
        return moment.timestamp()
    return None


def _claim_key(key: str, count: int, now: datetime) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO monitoring_ingestbatch (key, samples, received_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO NOTHING",
            [key, count, now],
        )
        return cursor.rowcount == 1


def _resolve_series(keys: set[tuple]) -> tuple[dict[tuple, int], int]:
    """Ids of every series in ``keys``, creating the missing ones within each metric's cap."""
    resolved = {key: _series_ids[key] for key in keys if key in _series_ids}
    unknown = [key for key in keys if key not in resolved]
    if not unknown:
        return resolved, 0
    by_metric: dict[str, dict[str, tuple]] = {}
    for key in unknown:
        by_metric.setdefault(key[0], {})[fingerprint(dict(key[1]))] = key
    created = 0
    problems = []
    for metric, wanted in sorted(by_metric.items()):
        _lock_series_of(metric)
        found = dict(
            MetricSeries.objects.filter(metric=metric, fingerprint__in=list(wanted)).values_list(
                "fingerprint", "id"
            )
        )
        missing = [print_ for print_ in wanted if print_ not in found]
        if missing:
            spec = catalog.get(metric)
            have = MetricSeries.objects.filter(metric=metric).count()
            if have + len(missing) > spec.series_cap():
                problems.append(
                    Problem(
                        None,
                        "labels",
                        f"{metric} would have {have + len(missing)} series, over its cap of "
                        f"{spec.series_cap()}: too many distinct label values.",
                    )
                )
                continue
            MetricSeries.objects.bulk_create(
                [
                    MetricSeries(
                        metric=metric,
                        labels=dict(wanted[print_][1]),
                        fingerprint=print_,
                        agent_id=dict(wanted[print_][1]).get(AGENT_LABEL, ""),
                    )
                    for print_ in missing
                ],
                ignore_conflicts=True,
            )
            found.update(
                MetricSeries.objects.filter(metric=metric, fingerprint__in=missing).values_list(
                    "fingerprint", "id"
                )
            )
            created += len(missing)
        resolved.update({wanted[print_]: series_id for print_, series_id in found.items()})
    if problems:
        raise BatchRejected(problems, "The batch would create too many series; nothing was stored.")
    return resolved, created


def _lock_series_of(metric: str) -> None:
    """Serialise series creation per metric, so concurrent batches cannot overshoot its cap.

    SQLite needs nothing: its write transactions are serial already.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"omoi.series:{metric}"])


def _write(rows: list[tuple], resolved: dict[tuple, int]) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor, cursor.cursor.copy(COPY_SAMPLES) as copy:
            copy.set_types(COPY_TYPES)
            for series, ts, value in rows:
                copy.write_row((resolved[series], ts, value))
        return
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO monitor_samples (series_id, ts, value) VALUES (%s, %s, %s)",
            [
                (resolved[series], ts.replace(tzinfo=None).isoformat(" "), value)
                for series, ts, value in rows
            ],
        )


def _mark_late_minutes(rows: list[tuple]) -> None:
    """Minutes the rollup job has already passed are queued to be rolled up again."""
    rolled_until = (
        RollupCursor.objects.filter(name="samples").values_list("rolled_until", flat=True).first()
    )
    if rolled_until is None:
        return
    late = {ts.replace(second=0, microsecond=0) for _, ts, _ in rows if ts < rolled_until}
    if late:
        RollupBacklog.objects.bulk_create(
            [RollupBacklog(minute=minute) for minute in late], ignore_conflicts=True
        )
