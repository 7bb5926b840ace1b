"""Range queries and top agents, checked against a brute-force computation over the same samples."""

import itertools
import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto

from monitoring import queries, query_engine, rollups, samples, sketches
from monitoring.models import MetricSeries, RollupCursor
from monitoring.rollups import dump_sketch, load_sketch, new_sketch

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
SPAN = timedelta(hours=2)
NOW = T0 + SPAN + timedelta(minutes=5)
EXACT = ("count", "sum", "min", "max", "avg")
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
SERIES = [
    ("task_latency_seconds", {"agent": "w1", "task_kind": "build"}),
    ("task_latency_seconds", {"agent": "w1", "task_kind": "test"}),
    ("task_latency_seconds", {"agent": "w2", "task_kind": "build"}),
    ("clock_skew_seconds", {"agent": "w3"}),
]


def generate(seed: int = 7) -> list[dict]:
    """Irregular samples (1-2 s apart, some exactly on minute boundaries) for every series."""
    rng = random.Random(seed)
    batch = []
    for name, labels in SERIES:
        moment = T0.timestamp()
        while moment < (T0 + SPAN).timestamp():
            if name == "clock_skew_seconds":
                value = round(rng.gauss(0, 0.5), 4)  # both signs, and zero now and then
            else:
                value = round(rng.lognormvariate(0, 1), 4)
            batch.append({"name": name, "labels": labels, "ts": moment, "value": value})
            moment += rng.choice([2, 3, 5, 0.5])
    return batch


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def stored(db, frozen):
    """The generated samples, stored; {series id: [(unix ts, value)]}."""
    batch = generate()
    samples.ingest(batch, now=NOW)
    by_series = defaultdict(list)
    ids = {
        (one.metric, tuple(sorted(one.labels.items()))): one.id
        for one in MetricSeries.objects.all()
    }
    for sample in batch:
        key = (sample["name"], tuple(sorted(sample["labels"].items())))
        by_series[ids[key]].append((sample["ts"], sample["value"]))
    return dict(by_series)


def brute_force(points, start: float, end: float, step: float, agg: str) -> dict[float, float]:
    """The answer worked out the slow, obvious way."""
    buckets = defaultdict(list)
    ordered = sorted(points)
    for ts, value in ordered:
        if start <= ts < end:
            buckets[start + (ts - start) // step * step].append((ts, value))
    if agg == "rate":
        increases = defaultdict(float)
        inside = [(ts, value) for ts, value in ordered if start <= ts < end]
        for (_, before), (ts, after) in itertools.pairwise(inside):
            bucket = start + (ts - start) // step * step
            increases[bucket] += after - before if after >= before else after
        return {bucket: total / step for bucket, total in increases.items()}
    answer = {}
    for bucket, items in buckets.items():
        values = sorted(value for _, value in items)
        n = len(values)
        answer[bucket] = {
            "count": n,
            "sum": math.fsum(values),
            "min": values[0],
            "max": values[-1],
            "avg": math.fsum(values) / n,
            **{name: values[int(q * (n - 1))] for name, q in QUANTILES.items()},
        }[agg]
    return answer


def as_dict(result, series_id) -> dict[float, float]:
    found = next(one for one in result.series if one.id == series_id)
    return dict(found.points)


def assert_exact(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for bucket, value in expected.items():
        assert got[bucket] == pytest.approx(value, rel=1e-9, abs=1e-9), bucket


def assert_within_sketch_accuracy(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    accuracy = rollups.SKETCH_RELATIVE_ACCURACY
    for bucket, value in expected.items():
        assert abs(got[bucket] - value) <= accuracy * abs(value) + 1e-9, (
            bucket,
            got[bucket],
            value,
        )


@pytest.mark.parametrize("step", [60, 7, 1])
@pytest.mark.parametrize("agg", [*EXACT, *QUANTILES])
def test_it_answers_short_ranges_exactly_from_raw_samples(stored, agg, step):
    start, end = T0 + timedelta(minutes=13), T0 + timedelta(minutes=30)

    result = queries.series_query(list(stored), start=start, end=end, step=step, agg=agg)

    assert result.source == "raw"
    first = math.floor(start.timestamp() / step) * step
    last = math.ceil(end.timestamp() / step) * step
    assert (result.start, result.end) == (first, last)
    for series_id, points in stored.items():
        assert_exact(as_dict(result, series_id), brute_force(points, first, last, step, agg))


@pytest.mark.parametrize("agg", [*EXACT, *QUANTILES])
def test_it_answers_long_ranges_with_minute_steps_from_rollups(stored, agg):
    rollups.roll_up(NOW)
    start, end = T0, T0 + SPAN

    result = queries.series_query(list(stored), start=start, end=end, step=60, agg=agg)

    assert result.source == "rollup" and result.raw_after is None
    for series_id, points in stored.items():
        expected = brute_force(points, start.timestamp(), end.timestamp(), 60, agg)
        # One minute of one series: the rollup's own exact percentile.
        assert_exact(as_dict(result, series_id), expected)


@pytest.mark.parametrize("agg", [*EXACT, *QUANTILES])
def test_it_merges_minute_sketches_for_coarser_steps(stored, agg):
    rollups.roll_up(NOW)
    start, end = T0, T0 + SPAN

    result = queries.series_query(list(stored), start=start, end=end, step=300, agg=agg)

    assert result.source == "rollup"
    for series_id, points in stored.items():
        expected = brute_force(points, start.timestamp(), end.timestamp(), 300, agg)
        got = as_dict(result, series_id)
        if agg in QUANTILES:
            assert_within_sketch_accuracy(got, expected)
        else:
            assert_exact(got, expected)


@pytest.mark.parametrize("agg", ["count", "sum", "p95"])
def test_it_answers_minutes_not_yet_rolled_up_from_raw_samples(stored, agg):
    rolled = T0 + timedelta(minutes=60)
    rollups.roll_up(rolled + rollups.GRACE)
    assert RollupCursor.objects.get().rolled_until == T0 + timedelta(minutes=60)
    start, end = T0, T0 + SPAN

    result = queries.series_query(list(stored), start=start, end=end, step=300, agg=agg)

    assert result.source == "rollup"
    assert result.raw_after == (T0 + timedelta(minutes=60)).timestamp()
    for series_id, points in stored.items():
        expected = brute_force(points, start.timestamp(), end.timestamp(), 300, agg)
        got = as_dict(result, series_id)
        if agg in QUANTILES:
            assert_within_sketch_accuracy(got, expected)
        else:
            assert_exact(got, expected)


def test_it_rereads_minutes_whose_rollup_went_stale(stored):
    rollups.roll_up(NOW)
    series_id = next(iter(stored))
    late = (T0 + timedelta(minutes=10, seconds=0.1)).timestamp()
    name, labels = SERIES[0]
    samples.ingest([{"name": name, "labels": labels, "ts": late, "value": 1000.0}], now=NOW)
    points = [*stored[series_id], (late, 1000.0)]

    result = queries.series_query([series_id], start=T0, end=T0 + SPAN, step=60, agg="max")

    expected = brute_force(points, T0.timestamp(), (T0 + SPAN).timestamp(), 60, "max")
    assert_exact(as_dict(result, series_id), expected)
    assert as_dict(result, series_id)[(T0 + timedelta(minutes=10)).timestamp()] == 1000.0


def counter_samples(values_by_offset) -> list[dict]:
    labels = {"agent": "w1", "task_kind": "build", "reason": "timeout"}
    return [
        {"name": "task_failures_total", "labels": labels, "ts": T0.timestamp() + offset, "value": v}
        for offset, v in values_by_offset
    ]


def test_it_counts_a_counter_reset_as_a_restart_from_zero(db, frozen):
    # 0 -> 10 -> 20, restart, 5 -> 15: the counter grew by 10 + 10 + 5 + 10.
    samples.ingest(counter_samples([(0, 0), (10, 10), (20, 20), (30, 5), (40, 15)]), now=NOW)
    series = MetricSeries.objects.get()

    result = queries.series_query(
        [series], start=T0, end=T0 + timedelta(minutes=1), step=60, agg="rate"
    )

    assert result.series[0].points == [(T0.timestamp(), 35 / 60)]


def test_it_computes_rate_per_bucket_like_brute_force(db, frozen):
    rng = random.Random(3)
    total, batch = 0.0, []
    for offset in range(0, 3600, 5):
        total = 0.0 if rng.random() < 0.02 else total + rng.randint(0, 4)
        batch.append((offset, total))
    samples.ingest(counter_samples(batch), now=NOW)
    series = MetricSeries.objects.get()
    points = [(T0.timestamp() + offset, value) for offset, value in batch]

    result = queries.series_query(
        [series], start=T0, end=T0 + timedelta(hours=1), step=120, agg="rate"
    )

    assert result.source == "raw"
    expected = brute_force(points, T0.timestamp(), T0.timestamp() + 3600, 120, "rate")
    assert_exact(dict(result.series[0].points), expected)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"agg": "median"}, "agg"),
        ({"step": 0}, "step"),
        ({"step": 1.5}, "step"),
        ({"end": T0 - timedelta(seconds=1)}, "end"),
        ({"step": 1, "end": T0 + timedelta(hours=1)}, "step"),
        ({"start": T0 - timedelta(days=400), "step": 86_400}, "start"),
    ],
)
def test_it_refuses_queries_it_cannot_answer(db, frozen, changes, field):
    query = {"start": T0, "end": T0 + timedelta(minutes=5), "step": 60, "agg": "avg", **changes}

    with pytest.raises(queries.BadQuery) as refused:
        queries.series_query([], **query)

    assert refused.value.field == field


def test_it_refuses_to_read_more_raw_samples_than_a_request_may(stored, monkeypatch):
    monkeypatch.setattr(query_engine, "MAX_RAW_SAMPLES", 100)

    with pytest.raises(queries.QueryTooLarge):
        queries.series_query(list(stored), start=T0, end=T0 + SPAN, step=7, agg="avg")


def test_it_ranks_agents_by_their_series_together(stored):
    rollups.roll_up(NOW - timedelta(minutes=30))
    window = 3600
    by_agent = defaultdict(list)
    for series in MetricSeries.objects.filter(metric="task_latency_seconds"):
        by_agent[series.agent_id] += stored[series.id]
    end = (T0 + SPAN).timestamp()

    with time_machine.travel(T0 + SPAN, tick=False):
        top = queries.top_agents("task_latency_seconds", agg="max", window=window, k=5)
        bottom = queries.top_agents(
            "task_latency_seconds", agg="count", window=window, k=1, order="asc"
        )
        p95 = queries.top_agents("task_latency_seconds", agg="p95", window=window, k=5)

    def expected(agg):
        return {
            agent: brute_force(points, end - window, end, window, agg)[end - window]
            for agent, points in by_agent.items()
        }

    maxima = expected("max")
    assert top.source == "rollup"
    assert top.results == sorted(maxima.items(), key=lambda pair: -pair[1])
    counts = expected("count")
    assert bottom.results == [min(counts.items(), key=lambda pair: pair[1])]
    for agent, value in p95.results:
        assert abs(value - expected("p95")[agent]) <= 0.01 * abs(expected("p95")[agent])


def test_it_refuses_unknown_metrics_and_windows_out_of_bounds(db):
    with pytest.raises(queries.BadQuery):
        queries.top_agents("no_such_metric", agg="avg", window=60)
    with pytest.raises(queries.BadQuery) as refused:
        queries.top_agents("queue_depth", agg="avg", window=10**9)
    assert refused.value.field == "window"


def test_it_merges_serialised_sketches_as_the_library_does():
    rng = random.Random(11)
    blobs, reference = [], new_sketch()
    for _ in range(30):
        sketch = new_sketch()
        for _ in range(rng.randint(1, 80)):
            sketch.add(rng.choice([0.0, rng.gauss(0, 3), rng.lognormvariate(2, 2)]))
        blobs.append(dump_sketch(sketch))
        reference.merge(load_sketch(blobs[-1]))
    raw = [rng.gauss(5, 5) for _ in range(50)]

    merged = sketches.merge_sketches(blobs)
    for value in raw:
        merged.add(value)
        reference.add(value)

    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
        assert merged.quantile(q) == pytest.approx(reference.get_quantile_value(q), rel=1e-12)


def test_it_keeps_a_sketch_of_few_samples_small_and_reads_back_every_quantile():
    rng = random.Random(5)
    few, busy = new_sketch(), new_sketch()
    for _ in range(20):
        few.add(rng.uniform(0.5, 100))
        few.add(-rng.uniform(0.5, 100))
    for value in range(1, 20_001):
        busy.add(value / 100)
    library = DDSketchProto.to_proto(few).SerializeToString()

    small = dump_sketch(few)
    dense = dump_sketch(busy)

    assert len(small) * 3 < len(library)
    assert len(dense) <= len(DDSketchProto.to_proto(busy).SerializeToString())
    for original, blob in ((few, small), (busy, dense)):
        loaded, merged = load_sketch(blob), sketches.merge_sketches([blob])
        assert loaded.count == original.count
        for q in (0.0, 0.05, 0.5, 0.95, 0.99, 1.0):
            # The mapping's parameters pass through the message as floats: the library's
            # own round trip moves a value by a few ulps too.
            assert loaded.get_quantile_value(q) == pytest.approx(
                original.get_quantile_value(q), rel=1e-12
            )
            assert merged.quantile(q) == pytest.approx(original.get_quantile_value(q), rel=1e-12)


def test_it_still_reads_sketches_of_another_accuracy():
    ours, coarse = new_sketch(), DDSketch(relative_accuracy=0.05)
    for value in range(1, 101):
        (ours if value % 2 else coarse).add(float(value))
    blobs = [dump_sketch(ours), DDSketchProto.to_proto(coarse).SerializeToString()]

    merged = sketches.merge_sketches(blobs)

    for q, exact in ((0.5, 50.0), (0.95, 95.0), (0.99, 99.0)):
        assert abs(merged.quantile(q) - exact) <= 0.07 * exact, q


def test_it_lists_the_catalogue_with_series_counts(stored):
    listed = {metric["name"]: metric["series"] for metric in queries.metric_catalogue()}

    assert listed["task_latency_seconds"] == 3
    assert listed["clock_skew_seconds"] == 1
    assert listed["queue_depth"] == 0


def test_it_ranks_agents_by_the_rates_of_their_counters_added_up(db, frozen):
    batch = []
    # w1 counts 2 per 10 s on two series; w2 counts 3 per 10 s on one, restarting once.
    for agent, kinds, per_step in (("w1", ("build", "test"), 2), ("w2", ("build",), 3)):
        for kind in kinds:
            labels = {"agent": agent, "task_kind": kind, "reason": "timeout"}
            for n in range(30):
                value = per_step * (n if agent == "w1" or n < 15 else n - 15)
                ts = NOW.timestamp() - 300 + n * 10
                batch.append(
                    {"name": "task_failures_total", "labels": labels, "ts": ts, "value": value}
                )
    samples.ingest(batch, now=NOW)

    top = queries.top_agents("task_failures_total", agg="rate", window=300)

    # 29 increases per series over 300 s; w2's restart counts its first value (0) as growth.
    assert top.results == [("w1", 2 * 2 * 29 / 300), ("w2", 3 * 28 / 300)]
