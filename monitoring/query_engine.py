"""Aggregating samples over buckets of time, from raw samples, rollups, or both.

A query is a plan (which bucket boundaries, which stretches of time rollups
answer and which raw samples answer) evaluated into cells: one per group of
series and bucket. Rollups answer whole minutes up to ``RollupCursor.rolled_until``;
the minutes after it, and minutes whose rollup is stale (in ``RollupBacklog``),
come from raw samples, so a query never misses a sample that has not been
rolled up yet.

Percentiles: from raw samples alone a bucket's percentile is exact (the lower
nearest rank, as the rollups' own p50/p95/p99); a one-minute bucket of one
series served by rollups uses the stored exact value; anything else merges the
minutes' DDSketches and is within the sketch's relative accuracy.
"""

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection
from django.db.models import Count, F, FloatField, Func, Max, Min, Q, Sum

from monitoring.models import MetricRollup, MetricSample
from monitoring.rollups import exact_quantile
from monitoring.sketches import merge_sketches

PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
AGGREGATIONS = ("avg", "min", "max", "sum", "count", "rate", *PERCENTILES)
MINUTE_SECONDS = 60
# Work one request may do: rows read from each source.
MAX_RAW_SAMPLES = 250_000
MAX_ROLLUP_ROWS = 200_000


class EpochSeconds(Func):
    """A timestamp as Unix seconds, computed by PostgreSQL: turning 100,000 timestamps
    into Python datetimes costs more than the query."""

    template = "extract(epoch from %(expressions)s)::float8"
    output_field = FloatField()


def seconds_column(name: str):
    """The column ``name`` in a form ``as_seconds`` turns into Unix seconds."""
    # SQLite's date arithmetic works in floating-point days, too coarse for
    # bucket edges: there Django's own datetimes are converted instead.
    return EpochSeconds(name) if connection.vendor == "postgresql" else F(name)


def as_seconds(value) -> float:
    return value if isinstance(value, float) else value.timestamp()


class QueryTooLarge(Exception):
    """The query would read more than a request may; a narrower one would answer."""


@dataclass(frozen=True)
class Plan:
    """Buckets ``[start + i*step, start + (i+1)*step)`` up to ``end`` (Unix seconds).

    ``rollup_range`` (minute-aligned, or None) is answered by rollups, except
    the ``stale`` minutes; ``raw_ranges`` by raw samples. Together they cover
    ``[start, end)`` exactly once.
    """

    start: float
    end: float
    step: float
    raw_ranges: tuple[tuple[float, float], ...]
    rollup_range: tuple[float, float] | None = None
    stale: frozenset[float] = frozenset()

    @property
    def source(self) -> str:
        return "rollup" if self.rollup_range else "raw"

    @property
    def raw_after(self) -> float | None:
        """Where raw samples take over from rollups at the end of the range, if they do."""
        if not self.rollup_range or self.rollup_range[1] >= self.end:
            return None
        return self.rollup_range[1]


def plan(start, end, step, *, rollups_until=None, stale=()) -> Plan:
    """A plan that serves whole minutes before ``rollups_until`` from rollups.

    Only valid when minute boundaries never cut a bucket (step a whole number of
    minutes and start on a minute, or a single bucket): the caller decides.
    """
    if rollups_until is None:
        return Plan(start, end, step, ((start, end),))
    first = math.ceil(start / MINUTE_SECONDS) * MINUTE_SECONDS
    last = min(math.floor(end / MINUTE_SECONDS) * MINUTE_SECONDS, rollups_until)
    if first >= last:
        return Plan(start, end, step, ((start, end),))
    stale_minutes = frozenset(m for m in stale if first <= m < last)
    raw = [(start, first)] if start < first else []
    raw += [(minute, minute + MINUTE_SECONDS) for minute in sorted(stale_minutes)]
    raw += [(last, end)] if last < end else []
    return Plan(start, end, step, tuple(raw), (first, last), stale_minutes)


@dataclass
class Cell:
    """What one group of series holds for one bucket, whatever answered it."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    increase: float | None = None
    values: list[float] = field(default_factory=list)
    sketches: list[bytes] = field(default_factory=list)
    stored: float | None = None

    def result(self, agg: str, step: float) -> float | None:
        if agg == "rate":
            return None if self.increase is None else self.increase / step
        if self.count == 0:
            return None
        if agg == "count":
            return float(self.count)
        if agg == "sum":
            return self.total
        if agg == "avg":
            return self.total / self.count
        if agg == "min":
            return self.low
        if agg == "max":
            return self.high
        return self._percentile(PERCENTILES[agg])

    def _percentile(self, q: float) -> float:
        if self.stored is not None:
            return self.stored
        if not self.sketches:
            return exact_quantile(sorted(self.values), q)
        sketch = merge_sketches(self.sketches)
        for value in self.values:
            sketch.add(value)
        return sketch.quantile(q)


def evaluate(groups: dict[int, object], the_plan: Plan, agg: str, *, series_filter=None):
    """``{group: {bucket index: value}}`` for every bucket that holds data.

    ``groups`` maps series ids to the group they count towards (the series
    itself, or its agent); ``series_filter`` (a queryset of ids) replaces the
    id list in the SQL when the groups are many.
    """
    cells: dict[object, dict[int, Cell]] = {}
    ids = series_filter if series_filter is not None else list(groups)
    if the_plan.raw_ranges:
        _add_raw(cells, groups, ids, the_plan, agg)
    if the_plan.rollup_range:
        _add_rollups(cells, groups, ids, the_plan, agg)
    answer = {}
    for group, buckets in cells.items():
        points = {}
        for index, cell in buckets.items():
            value = cell.result(agg, the_plan.step)
            if value is not None:
                points[index] = value
        if points:
            answer[group] = points
    return answer


# Aggregations the database can add up per agent by itself.
ADDITIVE = ("count", "sum", "min", "max", "avg")


def totals_by_agent(series, the_plan: Plan) -> dict[str, Cell]:
    """Count, sum, min and max per agent over the whole of ``the_plan`` (one bucket),
    added up by the database: a fleet-wide ranking reads one row per agent and
    source, not one per sample or minute. ``series`` is a queryset of series."""
    cells: dict[str, Cell] = {}

    def add(rows):
        for agent, count, total, low, high in rows:
            if count:
                cell = cells.setdefault(agent, Cell())
                cell.count += count
                cell.total += total
                cell.low = min(cell.low, low)
                cell.high = max(cell.high, high)

    if the_plan.raw_ranges:
        within = Q()
        for low, high in the_plan.raw_ranges:
            within |= Q(ts__gte=_stamp(low), ts__lt=_stamp(high))
        add(
            MetricSample.objects.filter(within, series__in=series)
            .values("series__agent_id")
            .annotate(n=Count("value"), t=Sum("value"), lo=Min("value"), hi=Max("value"))
            .values_list("series__agent_id", "n", "t", "lo", "hi")
            .order_by()
        )
    if the_plan.rollup_range:
        low, high = the_plan.rollup_range
        add(
            MetricRollup.objects.filter(
                series__in=series, minute__gte=_stamp(low), minute__lt=_stamp(high)
            )
            .exclude(minute__in=[_stamp(minute) for minute in the_plan.stale])
            .values("series__agent_id")
            .annotate(n=Sum("count"), t=Sum("sum"), lo=Min("min"), hi=Max("max"))
            .values_list("series__agent_id", "n", "t", "lo", "hi")
            .order_by()
        )
    return cells


def _cell(cells, group, index) -> Cell:
    buckets = cells.setdefault(group, {})
    found = buckets.get(index)
    if found is None:
        found = buckets[index] = Cell()
    return found


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _add_raw(cells, groups, ids, the_plan: Plan, agg: str) -> None:
    within = Q()
    for low, high in the_plan.raw_ranges:
        within |= Q(ts__gte=_stamp(low), ts__lt=_stamp(high))
    rows = (
        MetricSample.objects.filter(within, series_id__in=ids)
        .order_by("series_id", "ts")
        .values_list("series_id", seconds_column("ts"), "value")[: MAX_RAW_SAMPLES + 1]
    )
    start, step = the_plan.start, the_plan.step
    keep_values = agg in PERCENTILES
    previous_series, previous_value = None, None
    # A plain fetch, not a server-side cursor: the LIMIT bounds it, and on
    # PostgreSQL a named cursor costs round trips for nothing.
    for number, (series_id, ts, value) in enumerate(rows):
        if number == MAX_RAW_SAMPLES:
            raise QueryTooLarge(
                f"The range holds more than {MAX_RAW_SAMPLES} raw samples; "
                "ask for fewer series, a shorter range, or a step of whole minutes."
            )
        group = groups.get(series_id)
        if group is None:
            continue
        cell = _cell(cells, group, int((as_seconds(ts) - start) // step))
        if agg == "rate":
            if series_id == previous_series:
                # A counter that went down was restarted: it counted up from zero since.
                grown = value - previous_value if value >= previous_value else value
                cell.increase = (cell.increase or 0.0) + grown
            previous_series, previous_value = series_id, value
            continue
        cell.count += 1
        cell.total += value
        cell.low = min(cell.low, value)
        cell.high = max(cell.high, value)
        if keep_values:
            cell.values.append(value)


def rollup_columns(agg: str, *, use_stored: bool) -> tuple[str, ...]:
    if agg in PERCENTILES:
        return (agg,) if use_stored else ("sketch",)
    return {"sum": ("sum",), "avg": ("sum",), "min": ("min",), "max": ("max",)}.get(agg, ())


def _add_rollups(cells, groups, ids, the_plan: Plan, agg: str) -> None:
    low, high = the_plan.rollup_range
    single = len(set(groups.values())) == len(groups)
    use_stored = the_plan.step == MINUTE_SECONDS and the_plan.start % MINUTE_SECONDS == 0
    use_stored = use_stored and single
    columns = rollup_columns(agg, use_stored=use_stored)
    rows = MetricRollup.objects.filter(
        series_id__in=ids, minute__gte=_stamp(low), minute__lt=_stamp(high)
    ).values_list("series_id", seconds_column("minute"), "count", *columns)[: MAX_ROLLUP_ROWS + 1]
    rows = list(rows)
    if len(rows) > MAX_ROLLUP_ROWS:
        raise QueryTooLarge(
            f"The range holds more than {MAX_ROLLUP_ROWS} minutes of rollups; "
            "ask for fewer series or a shorter range."
        )
    start, step, stale = the_plan.start, the_plan.step, the_plan.stale
    for series_id, minute, count, *found in rows:
        group = groups.get(series_id)
        moment = as_seconds(minute)
        if group is None or moment in stale:
            continue
        buckets = cells.get(group)
        if buckets is None:
            buckets = cells[group] = {}
        index = int((moment - start) // step)
        cell = buckets.get(index)
        if cell is None:
            cell = buckets[index] = Cell()
        cell.count += count
        if agg in ("sum", "avg"):
            cell.total += found[0]
        elif agg == "min":
            cell.low = min(cell.low, found[0])
        elif agg == "max":
            cell.high = max(cell.high, found[0])
        elif agg in PERCENTILES:
            if use_stored:
                cell.stored = found[0]
            else:
                cell.sketches.append(found[0])
