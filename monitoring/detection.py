"""Anomaly detection over rollups: one detector per watched series, fed a value per minute.

Which metrics are watched, by which detector and on which number of the minute
comes from the catalogue (each metric's ``detection``), replaced per metric by
an operator's ``DetectorSetting`` row. Detectors read closed minutes, the ones
the rollup job has finished, so they cost one update per series per minute
whatever the sample rate.

A cursor row (``RollupCursor`` "detectors", locked with SKIP LOCKED, as the
rollup job does) says how far detection got; several workers never feed a
minute twice. Each series' detector state lives in ``SeriesDetector`` and is
restored on the next run, so a restarted worker carries on without a new
warm-up. A minute rolled up again later (a late sample) is not fed again:
detectors see each minute once, in order.

Anomalies follow the detector's excursions, not its scores: a row in
``monitor_anomalies`` opens on the sample that alarms (``monitor.anomaly.detected``)
and closes when the detector is calm again (``monitor.anomaly.resolved``),
ending at the first minute whose value was back in range. One excursion is one row.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField

from monitoring import catalog, detector_states
from monitoring.catalog import DetectOn
from monitoring.detector_states import Saved, as_datetime
from monitoring.detectors import (
    ALARM_SCORE,
    Detector,
    InvalidSample,
    get_detector,
    restore_detector,
)
from monitoring.models import (
    DetectorSetting,
    MetricSeries,
    MonitorAnomaly,
    RollupCursor,
    SeriesDetector,
)
from monitoring.rollups import MINUTE
from omoi_console.foundation.events import NewEvent, publish_many
from omoi_console.foundation.events.tracing import new_trace_ids

log = structlog.get_logger(__name__)

CURSOR = "detectors"
ROLLUP_CURSOR = "samples"
# Minutes fed per transaction: catching up after downtime is a few transactions.
BATCH_MINUTES = 30
# Stale anomalies ended per batch of minutes; any more wait for the next batch.
STALE_BATCH = 1000
COLUMNS = ("count", "sum", "min", "max", "p50", "p95", "p99")


@dataclass(frozen=True)
class Watch:
    """How one metric's series are watched: the catalogue's default or an operator's setting."""

    metric: str
    detector: str
    params: dict = field(hash=False)
    on: str
    severity: str
    source: str  # "catalog" or "setting"

    @property
    def config(self) -> str:
        """What a series' state was built with; a state of another config starts afresh."""
        params = json.dumps(self.params, sort_keys=True, separators=(",", ":"))
        return f"{self.detector}/{self.on}/{params}"

    def new_detector(self) -> Detector:
        return get_detector(self.detector, **self.params)

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "detector": self.detector,
            "params": self.params,
            "on": self.on,
            "severity": self.severity,
            "source": self.source,
        }


def catalog_watch(spec: catalog.MetricSpec) -> Watch | None:
    found = spec.detection
    if found is None:
        return None
    return Watch(spec.name, found.detector, dict(found.params), found.on, found.severity, "catalog")


def watches() -> dict[str, Watch]:
    """Every watched metric and how: catalogue defaults, replaced by operators' settings."""
    watched = {}
    for spec in catalog.ordered():
        default = catalog_watch(spec)
        if default is not None:
            watched[spec.name] = default
    for row in DetectorSetting.objects.all():
        if catalog.get(row.metric) is None:
            continue  # a metric no longer declared: nothing to watch
        if not row.enabled:
            watched.pop(row.metric, None)
            continue
        watched[row.metric] = Watch(
            row.metric, row.detector, dict(row.params), row.on, row.severity, "setting"
        )
    return watched


def detect(*, budget_seconds: float = 5.0) -> int:
    """Feed the detectors every rolled-up minute they have not seen; how many minutes it fed."""
    deadline = time.monotonic() + budget_seconds
    RollupCursor.objects.bulk_create([RollupCursor(name=CURSOR)], ignore_conflicts=True)
    watched = watches()
    done = 0
    while time.monotonic() < deadline:
        with transaction.atomic():
            cursor = (
                RollupCursor.objects.select_for_update(skip_locked=True).filter(name=CURSOR).first()
            )
            if cursor is None:
                return done  # another worker is at it
            until = (
                RollupCursor.objects.filter(name=ROLLUP_CURSOR)
                .values_list("rolled_until", flat=True)
                .first()
            )
            start = cursor.rolled_until or _first_minute(until)
            if until is None or start is None or start >= until:
                return done
            end = min(start + BATCH_MINUTES * MINUTE, until)
            feed_minutes(start, end, watched)
            close_stale(end)
            cursor.rolled_until = end
            cursor.save(update_fields=["rolled_until"])
        done += round((end - start) / MINUTE)
    return done


def close_stale(until: datetime) -> int:
    """End the anomalies of series that have sent nothing for a while; how many.

    A series that stops (its agent is gone, or stopped reporting the metric)
    would otherwise keep its anomaly open for good. It ends after the last
    minute seen, and the series stops counting towards its agent's health.
    """
    cutoff = until - timedelta(seconds=settings.DETECTION_STALE_SECONDS)
    stale = list(
        MonitorAnomaly.objects.filter(ended_at__isnull=True, series__detector__minute__lt=cutoff)
        .select_related("series__detector")
        .order_by("id")[:STALE_BATCH]
    )
    if not stale:
        return 0
    for anomaly in stale:
        anomaly.ended_at = max(anomaly.started_at, anomaly.series.detector.minute + MINUTE)
        anomaly.explanation = {**anomaly.explanation, "ended_by": "no data"}
    MonitorAnomaly.objects.bulk_update(stale, ["ended_at", "explanation"])
    SeriesDetector.objects.filter(series_id__in=[a.series_id for a in stale]).update(score=0.0)
    _publish([], stale)
    return len(stale)


def _first_minute(until: datetime | None) -> datetime | None:
    """Where detection starts on a new installation: recent history, to warm up on."""
    if until is None:
        return None
    backfill = timedelta(seconds=settings.DETECTION_BACKFILL_SECONDS)
    oldest = _oldest_rollup_minute()
    if oldest is None:
        return None
    return max(oldest, until - backfill)


def _oldest_rollup_minute() -> datetime | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT MIN(minute) FROM monitor_rollups")
        (oldest,) = cursor.fetchone()
    if oldest is None:
        return None
    return as_datetime(oldest)


@dataclass
class Found:
    """What one run found: anomalies to open, and open ones that changed (peak or end)."""

    opened: list[MonitorAnomaly] = field(default_factory=list)
    changed: dict[int, MonitorAnomaly] = field(default_factory=dict)


def feed_minutes(start: datetime, end: datetime, watched: dict[str, Watch]) -> int:
    """Feed the rollups of ``[start, end)`` to their series' detectors; series fed."""
    by_series = _rollups(start, end, list(watched))
    if not by_series:
        return 0
    ids = list(by_series)
    states = detector_states.load(ids)
    open_now = {
        anomaly.series_id: anomaly
        for anomaly in MonitorAnomaly.objects.filter(series_id__in=ids, ended_at__isnull=True)
    }
    found = Found()
    rows = []
    for series_id, (metric, agent_id, minutes) in by_series.items():
        feed = SeriesFeed(
            series_id,
            agent_id,
            watched[metric],
            states.get(series_id),
            open_now.get(series_id),
            found,
        )
        feed.feed(minutes)
        row = feed.row()
        if row is not None:
            rows.append(row)
    detector_states.save(rows)
    opened = MonitorAnomaly.objects.bulk_create(found.opened)
    if found.changed:
        MonitorAnomaly.objects.bulk_update(
            list(found.changed.values()), ["peak_score", "explanation", "ended_at"]
        )
    _publish(opened, [a for a in found.changed.values() if a.ended_at is not None])
    return len(rows)


def _rollups(start: datetime, end: datetime, metrics: list[str]) -> dict:
    """{series_id: (metric, agent_id, [(minute, {column: value}), ...])} in minute order."""
    if not metrics:
        return {}
    stamp = DateTimeField().get_db_prep_value
    # Only constants and placeholders go into the text; values are parameters.
    marks = ", ".join(["%s"] * len(metrics))
    numbers = ", ".join(f"r.{column}" for column in COLUMNS)
    series_table = MetricSeries._meta.db_table
    sql = (
        f"SELECT r.series_id, r.minute, {numbers}, s.metric, s.agent_id "  # noqa: S608
        f"FROM monitor_rollups r JOIN {series_table} s ON s.id = r.series_id "
        f"WHERE r.minute >= %s AND r.minute < %s AND s.metric IN ({marks}) "
        "ORDER BY r.series_id, r.minute"
    )
    found: dict = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [stamp(start, connection), stamp(end, connection), *metrics])
        for series_id, minute, *numbers, metric, agent_id in cursor.fetchall():
            entry = found.get(series_id)
            if entry is None:
                entry = found[series_id] = (metric, agent_id, [])
            entry[2].append((as_datetime(minute), dict(zip(COLUMNS, numbers, strict=True))))
    return found


def reading(on: str, numbers: dict) -> float:
    """The number of a minute a detector is fed (``increase`` is worked out by the caller)."""
    if on == DetectOn.MEAN:
        return numbers["sum"] / numbers["count"]
    if on == DetectOn.INCREASE:
        return numbers["max"]  # a counter's newest total, as near as a minute's summary says
    return float(numbers[on])


class SeriesFeed:
    """One series' detector for one run: restored, fed its new minutes, and saved."""

    def __init__(self, series_id: int, agent_id: str, watch: Watch, saved, anomaly, found: Found):
        self.series_id, self.agent_id, self.watch, self.found = series_id, agent_id, watch, found
        self.saved = saved if saved is not None and saved.config == watch.config else None
        if self.saved is not None:
            self.detector = restore_detector(json.loads(self.saved.state))
            self.minute, self.value = self.saved.minute, self.saved.value
            self.previous = self.saved.previous
        else:
            self.detector = watch.new_detector()
            self.minute, self.value, self.previous = None, 0.0, None
        self.score = self.saved.score if self.saved is not None else 0.0
        self.anomaly = anomaly
        self.changed = False

    def feed(self, minutes: list[tuple[datetime, dict]]) -> None:
        if self.anomaly is not None and self.anomaly.detector != self.watch.detector:
            # Its detector no longer watches the series: the excursion is over for it.
            self._close(minutes[0][0])
        for minute, numbers in minutes:
            if self.minute is not None and minute <= self.minute:
                continue  # fed before (a minute rolled up again after a late sample)
            self._feed_one(minute, reading(self.watch.on, numbers))

    def _feed_one(self, minute: datetime, raw: float) -> None:
        self.changed = True
        self.minute = minute
        if self.watch.on == DetectOn.INCREASE:
            before, self.previous = self.previous, raw
            if before is None:
                return  # a counter's first total says nothing about its growth
            raw = raw - before if raw >= before else raw  # a reset starts again from 0
        try:
            score = self.detector.update(minute.timestamp(), raw)
        except InvalidSample:
            return
        self.value, self.score = raw, score
        detector, anomaly = self.detector, self.anomaly
        if detector.in_excursion:
            if anomaly is None and score >= ALARM_SCORE:
                self.anomaly = MonitorAnomaly(
                    series_id=self.series_id,
                    metric=self.watch.metric,
                    agent_id=self.agent_id,
                    started_at=minute,
                    peak_score=score,
                    direction=detector.direction or "up",
                    detector=self.watch.detector,
                    severity=self.watch.severity,
                    explanation=self._explanation(raw),
                )
                self.found.opened.append(self.anomaly)
            elif anomaly is not None and score > anomaly.peak_score:
                anomaly.peak_score, anomaly.explanation = score, self._explanation(raw)
                self._mark(anomaly)
        elif anomaly is not None:
            since = detector.calm_since
            self._close(datetime.fromtimestamp(since, UTC) if since is not None else minute)

    def _explanation(self, observed: float) -> dict:
        return {
            "expected_low": self.detector.expected_low,
            "expected_high": self.detector.expected_high,
            "observed": observed,
            "on": self.watch.on,
        }

    def _close(self, ended: datetime) -> None:
        anomaly, self.anomaly = self.anomaly, None
        anomaly.ended_at = max(ended, anomaly.started_at)
        self._mark(anomaly)

    def _mark(self, anomaly: MonitorAnomaly) -> None:
        if anomaly.pk is not None:  # a new one is written with its final fields anyway
            self.found.changed[anomaly.pk] = anomaly

    def row(self) -> Saved | None:
        """The state to save, or None when nothing about it changed."""
        if self.minute is None or not self.changed:
            return None
        anomaly = self.anomaly
        return Saved(
            self.series_id,
            self.watch.config,
            self.detector.state_json(),
            self.minute,
            self.value,
            self.previous,
            # What composite health reads: an excursion counts at its peak until it ends.
            anomaly.peak_score if anomaly is not None else self.score,
        )


def _publish(opened: list[MonitorAnomaly], closed: list[MonitorAnomaly]) -> None:
    """``monitor.anomaly.detected`` per new anomaly, ``monitor.anomaly.resolved`` per ended one."""
    ended = [anomaly for anomaly in opened if anomaly.ended_at is not None] + closed
    if not opened and not ended:
        return
    names = {
        series.pk: str(series)
        for series in MetricSeries.objects.filter(
            pk__in={anomaly.series_id for anomaly in opened + ended}
        )
    }
    events = []
    for anomaly in opened:
        payload = {
            **_identity(anomaly, names),
            "score": anomaly.peak_score,
            "direction": anomaly.direction,
            "severity": anomaly.severity,
            "detector": anomaly.detector,
            "started_at": anomaly.started_at,
            **anomaly.explanation,
        }
        trace = new_trace_ids("monitoring.anomaly", series=names.get(anomaly.series_id, ""))
        events.append(
            NewEvent("monitor.anomaly.detected", payload, key=f"anomaly:{anomaly.pk}", trace=trace)
        )
        log.warning(
            "anomaly.detected",
            anomaly_id=anomaly.pk,
            metric=anomaly.metric,
            agent_id=anomaly.agent_id,
            direction=anomaly.direction,
        )
    for anomaly in ended:
        payload = {
            **_identity(anomaly, names),
            "peak_score": anomaly.peak_score,
            "started_at": anomaly.started_at,
            "ended_at": anomaly.ended_at,
            "duration_seconds": (anomaly.ended_at - anomaly.started_at).total_seconds(),
        }
        events.append(
            NewEvent("monitor.anomaly.resolved", payload, key=f"anomaly:{anomaly.pk}:resolved")
        )
    publish_many(events)


def _identity(anomaly: MonitorAnomaly, names: dict[int, str]) -> dict:
    return {
        "anomaly_id": anomaly.pk,
        "series": names.get(anomaly.series_id, ""),
        "series_id": anomaly.series_id,
        "metric": anomaly.metric,
        "agent_id": anomaly.agent_id,
    }
