"""The read side of metrics: the catalogue with series counts, range queries, top agents.

``series_query`` answers "this aggregation of these series, bucket by bucket"
from rollups when the range is long and the step a whole number of minutes,
and from raw samples otherwise; the minutes not rolled up yet always come from
raw samples (see ``query_engine``). Every query is bounded: points per series,
range length, and rows read per source.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from monitoring import catalog
from monitoring.models import MetricSeries, RollupBacklog, RollupCursor
from monitoring.query_engine import (
    ADDITIVE,
    AGGREGATIONS,
    MINUTE_SECONDS,
    PERCENTILES,
    QueryTooLarge,
    evaluate,
    plan,
    totals_by_agent,
)

__all__ = ["AGGREGATIONS", "PERCENTILES", "BadQuery", "QueryTooLarge", "series_query"]

MAX_POINTS = 1500
# Ranges up to this long are answered from raw samples even when rollups could.
RAW_RANGE_SECONDS = 3600
MAX_TOP_WINDOW_SECONDS = 86_400
MAX_TOP_K = 100
# A range with more stale minutes than this waits for the rollup job.
MAX_STALE_MINUTES = 120
DAY_SECONDS = 86_400


class BadQuery(ValueError):
    """A query parameter that cannot be answered; ``field`` names it."""

    def __init__(self, field: str, detail: str):
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}")


@dataclass(frozen=True)
class SeriesPoints:
    id: int
    labels: dict
    points: list[tuple[int | float, float]]

    def as_dict(self) -> dict:
        return {"id": self.id, "labels": self.labels, "points": [list(p) for p in self.points]}


@dataclass(frozen=True)
class QueryResult:
    agg: str
    step: int
    start: int
    end: int
    source: str
    raw_after: float | None
    series: list[SeriesPoints]


@dataclass(frozen=True)
class TopResult:
    metric: str
    agg: str
    window: int
    source: str
    results: list[tuple[str, float]]


def max_range_seconds() -> int:
    return settings.METRIC_ROLLUP_RETENTION_DAYS * DAY_SECONDS


def check_agg(agg: str) -> None:
    if agg not in AGGREGATIONS:
        raise BadQuery("agg", f"Choose one of {', '.join(AGGREGATIONS)}.")


def rollup_state(start: float, end: float) -> tuple[float | None, list[float]]:
    """Where rollups end (Unix seconds, or None before the first) and the stale minutes before."""
    cursor = RollupCursor.objects.filter(name="samples").values_list("rolled_until", flat=True)
    rolled_until = cursor.first()
    if rolled_until is None:
        return None, []
    until = min(rolled_until.timestamp(), end)
    stale = list(
        RollupBacklog.objects.filter(
            minute__gte=datetime.fromtimestamp(start, tz=UTC),
            minute__lt=datetime.fromtimestamp(until, tz=UTC),
        ).values_list("minute", flat=True)[: MAX_STALE_MINUTES + 1]
    )
    if len(stale) > MAX_STALE_MINUTES:
        raise QueryTooLarge(
            "Too many minutes of this range wait to be rolled up again; try again shortly."
        )
    return rolled_until.timestamp(), [minute.timestamp() for minute in stale]


def series_query(
    series: Sequence[MetricSeries | int],
    *,
    start: datetime,
    end: datetime,
    step: int,
    agg: str,
    now: datetime | None = None,
) -> QueryResult:
    """``agg`` of each series over ``[start, end)`` in buckets of ``step`` seconds.

    Buckets are aligned to whole multiples of ``step`` since the Unix epoch
    (``start`` rounds down, ``end`` up); a point ``[t, v]`` is the bucket that
    starts at ``t``, and buckets without data have no point. ``rate`` is the
    per-second increase of a counter within each bucket, counting a drop as a
    restart from zero. Raises ``BadQuery`` for parameters it cannot answer and
    ``QueryTooLarge`` when the answer would read too much.
    """
    check_agg(agg)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise BadQuery("step", "A step is a whole number of seconds, at least 1.")
    if end <= start:
        raise BadQuery("end", "The end comes after the start.")
    first = math.floor(start.timestamp() / step) * step
    last = math.ceil(end.timestamp() / step) * step
    if last - first > max_range_seconds():
        raise BadQuery("start", f"A range spans at most {max_range_seconds()} seconds.")
    if (last - first) / step > MAX_POINTS:
        raise BadQuery(
            "step",
            f"At most {MAX_POINTS} points per series: use a step of at least "
            f"{math.ceil((last - first) / MAX_POINTS)} seconds for this range.",
        )
    found = _series_objects(series)
    the_plan = _plan_series_query(first, last, step, agg, now or timezone.now())
    values = evaluate({one.id: one.id for one in found}, the_plan, agg)
    return QueryResult(
        agg=agg,
        step=step,
        start=first,
        end=last,
        source=the_plan.source,
        raw_after=the_plan.raw_after,
        series=[
            SeriesPoints(
                one.id,
                one.labels,
                [
                    (first + index * step, value)
                    for index, value in sorted(values.get(one.id, {}).items())
                ],
            )
            for one in found
        ],
    )


def _series_objects(series) -> list[MetricSeries]:
    wanted = [one for one in series if not isinstance(one, MetricSeries)]
    if not wanted:
        return list(series)
    known = MetricSeries.objects.in_bulk(wanted)
    return [
        one if isinstance(one, MetricSeries) else known[one]
        for one in series
        if isinstance(one, MetricSeries) or one in known
    ]


def _plan_series_query(first: int, last: int, step: int, agg: str, now: datetime):
    retained_from = now.timestamp() - settings.METRIC_SAMPLE_RETENTION_DAYS * DAY_SECONDS
    rollable = agg != "rate" and step % MINUTE_SECONDS == 0
    wanted = last - first > RAW_RANGE_SECONDS or first < retained_from
    if not (rollable and wanted):
        return plan(first, last, step)
    rolled_until, stale = rollup_state(first, last)
    return plan(first, last, step, rollups_until=rolled_until, stale=stale)


def top_agents(
    metric: str,
    *,
    agg: str,
    window: int,
    k: int = 10,
    order: str = "desc",
    now: datetime | None = None,
) -> TopResult:
    """The ``k`` agents with the highest (or lowest) ``agg`` of ``metric`` over the last ``window``
    seconds. An agent's value covers all its series of the metric: their samples
    together (count, sum, min, max, avg, percentiles) or their rates added up."""
    if catalog.get(metric) is None:
        raise BadQuery("metric", "Unknown metric; see /api/v1/metrics/catalog.")
    check_agg(agg)
    if not 1 <= window <= MAX_TOP_WINDOW_SECONDS:
        raise BadQuery("window", f"A window is 1 to {MAX_TOP_WINDOW_SECONDS} seconds.")
    if not 1 <= k <= MAX_TOP_K:
        raise BadQuery("k", f"k is 1 to {MAX_TOP_K}.")
    if order not in ("asc", "desc"):
        raise BadQuery("order", "Order is asc or desc.")
    end = (now or timezone.now()).timestamp()
    start = end - window
    series = MetricSeries.objects.filter(metric=metric).exclude(agent_id="")
    if agg == "rate":
        the_plan = plan(start, end, window)
    else:
        rolled_until, stale = rollup_state(start, end)
        the_plan = plan(start, end, window, rollups_until=rolled_until, stale=stale)
    if agg in ADDITIVE:
        totals = totals_by_agent(series, the_plan)
        values = {agent: cell.result(agg, window) for agent, cell in totals.items()}
    else:
        groups = dict(series.values_list("id", "agent_id"))
        points = evaluate(groups, the_plan, agg, series_filter=series.values("id"))
        values = {agent: found[0] for agent, found in points.items() if 0 in found}
    ranked = sorted(
        values.items(),
        key=lambda pair: (-pair[1] if order == "desc" else pair[1], pair[0]),
    )
    return TopResult(metric, agg, window, the_plan.source, ranked[:k])


def metric_catalogue() -> list[dict]:
    """Every metric of the catalogue with how many series it has."""
    counts = dict(
        MetricSeries.objects.order_by()
        .values_list("metric")
        .annotate(n=Count("id"))
        .values_list("metric", "n")
    )
    return [{**spec.as_dict(), "series": counts.get(spec.name, 0)} for spec in catalog.ordered()]
