"""Rollups against a brute-force computation, late samples, partitions and retention."""

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection, connections

from monitoring import metric_jobs, partitions, retention, rollups, samples
from monitoring.models import (
    IngestBatch,
    MetricRollup,
    MetricSample,
    RollupBacklog,
    RollupCursor,
)

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def batch(values_by_minute: dict[int, list[float]], queue="inbox") -> list[dict]:
    out = []
    for minute, values in values_by_minute.items():
        for n, value in enumerate(values):
            ts = START + timedelta(minutes=minute, seconds=n * 59.0 / max(1, len(values)))
            out.append(
                {
                    "name": "queue_depth",
                    "labels": {"agent": "a-1", "queue": queue},
                    "ts": ts.timestamp(),
                    "value": value,
                }
            )
    return out


def nearest_rank(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


@pytest.mark.django_db
def test_it_rolls_up_closed_minutes_exactly_and_sketches_within_their_error():
    rng = random.Random(7)
    minutes = {
        m: [rng.lognormvariate(0, 1.5) for _ in range(rng.randint(20, 60))] for m in range(3)
    }
    with time_machine.travel(START + timedelta(minutes=3, seconds=30), tick=False):
        samples.ingest(batch(minutes))
        # The minute still open (and its grace) is not rolled up yet.
        samples.ingest(batch({3: [1.0, 2.0]}))

        assert rollups.roll_up() == 3

    rows = {r.minute: r for r in MetricRollup.objects.order_by("minute")}
    assert sorted(rows) == [START + timedelta(minutes=m) for m in range(3)]
    for m, values in minutes.items():
        row = rows[START + timedelta(minutes=m)]
        assert row.count == len(values)
        assert row.sum == pytest.approx(sum(values))
        assert (row.min, row.max) == (min(values), max(values))
        for q, stored in ((0.5, row.p50), (0.95, row.p95), (0.99, row.p99)):
            assert stored == nearest_rank(values, q)
    # Merged sketches answer for the three minutes together within the stated accuracy.
    merged = rollups.new_sketch()
    for row in rows.values():
        merged.merge(rollups.load_sketch(row.sketch))
    everything = [v for values in minutes.values() for v in values]
    accuracy = rollups.SKETCH_RELATIVE_ACCURACY
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = nearest_rank(everything, q)
        assert abs(merged.get_quantile_value(q) - exact) <= accuracy * exact * 1.0001


@pytest.mark.django_db
def test_it_rolls_up_a_minute_again_when_a_late_sample_arrives():
    with time_machine.travel(START + timedelta(minutes=5), tick=False):
        samples.ingest(batch({0: [1.0, 2.0], 1: [5.0]}))
        rollups.roll_up()
        assert RollupCursor.objects.get().rolled_until == START + timedelta(minutes=4)
        assert MetricRollup.objects.get(minute=START).count == 2

        samples.ingest(batch({0: [30.0]}, queue="inbox") + batch({0: [4.0]}, queue="late"))
        assert list(RollupBacklog.objects.values_list("minute", flat=True)) == [START]
        assert rollups.roll_up() == 1

    assert not RollupBacklog.objects.exists()
    assert MetricRollup.objects.filter(minute=START).count() == 2  # inbox and late
    inbox = MetricRollup.objects.get(minute=START, series__labels__queue="inbox")
    assert (inbox.count, inbox.max) == (3, 30.0)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_rolls_each_minute_once_when_workers_race():
    with time_machine.travel(START + timedelta(minutes=40), tick=False):
        samples.ingest(batch({m: [float(m), 1.0] for m in range(30)}))
    errors, done = [], []

    def worker():
        try:
            with time_machine.travel(START + timedelta(minutes=40), tick=False):
                done.append(rollups.roll_up())
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert MetricRollup.objects.count() == 30
    assert sum(done) >= 30
    assert RollupCursor.objects.get().rolled_until >= START + timedelta(minutes=30)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_keeps_partitions_ahead_and_drops_whole_days_past_retention(settings):
    settings.METRIC_SAMPLE_RETENTION_DAYS = 2
    settings.METRIC_ROLLUP_RETENTION_DAYS = 3
    settings.METRIC_PARTITIONS_AHEAD_DAYS = 1
    drop_every_partition()
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        partitions.ensure_ahead(now)
        sample_days = sorted(partitions.existing_partitions(partitions.SAMPLES).values())
        assert sample_days == [datetime(2026, 11, d).date() for d in (18, 19, 20, 21)]
        old = now - timedelta(days=1, hours=12)  # Nov 18, 18:00: inside retention
        samples.ingest([_at(old, 1.0), _at(now, 2.0)])

    later = now + timedelta(days=1)  # Nov 21 06:00: Nov 18 is wholly past two days
    with time_machine.travel(later, tick=False):
        metric_jobs.create_partitions_ahead(later)
        assert retention.SAMPLES.count(later) == {"monitor_samples partitions": 1}
        dropped = retention.SAMPLES.prune_batch(later, 1000)

    assert dropped.removed == {"monitor_samples partitions": 1} and not dropped.more
    remaining = sorted(partitions.existing_partitions(partitions.SAMPLES).values())
    assert remaining[0] == datetime(2026, 11, 19).date()
    assert remaining[-1] == datetime(2026, 11, 22).date()
    assert list(MetricSample.objects.values_list("value", flat=True)) == [2.0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_creates_the_partition_a_batch_needs_on_the_spot():
    now = datetime(2026, 11, 20, 23, 59, 50, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        stored = samples.ingest([_at(now + timedelta(seconds=60), 1.0)])
    assert stored.samples == 1
    assert (
        datetime(2026, 11, 21).date() in partitions.existing_partitions(partitions.SAMPLES).values()
    )


def test_it_deletes_old_rows_in_bounded_batches_on_sqlite(db, settings):
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL drops partitions instead")
    settings.METRIC_SAMPLE_RETENTION_DAYS = 1
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        samples.ingest(
            [_at(now - timedelta(hours=20, minutes=n), float(n)) for n in range(5)]
            + [_at(now, 9.0)]
        )
    later = now + timedelta(hours=5)
    steps = [retention.SAMPLES.prune_batch(later, 2) for _ in range(3)]
    assert [step.removed for step in steps] == [{"monitor_samples": 2}] * 2 + [
        {"monitor_samples": 1}
    ]
    assert [step.more for step in steps] == [True, True, False]
    # Oldest first: the youngest old sample (n=0) went last.
    assert list(MetricSample.objects.values_list("value", flat=True)) == [9.0]


@pytest.mark.django_db
def test_it_forgets_batch_keys_after_their_retention(settings):
    settings.METRIC_BATCH_KEY_RETENTION_HOURS = 1
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        samples.ingest([_at(now, 1.0)], key="old")
    with time_machine.travel(now + timedelta(minutes=90), tick=False):
        samples.ingest([_at(now + timedelta(minutes=90), 1.0)], key="new")
        retention.BATCH_KEYS.prune_batch(now + timedelta(minutes=90), 100)
    assert list(IngestBatch.objects.values_list("key", flat=True)) == ["new"]


def _at(moment: datetime, value: float) -> dict:
    return {
        "name": "queue_depth",
        "labels": {"agent": "a-1", "queue": "inbox"},
        "ts": moment.timestamp(),
        "value": value,
    }


def drop_every_partition():
    """Partitions outlive the tests that made them (a flush empties tables, not these)."""
    for table in partitions.TABLES:
        for name in partitions.existing_partitions(table):
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE {name}")
    partitions.forget_known()
