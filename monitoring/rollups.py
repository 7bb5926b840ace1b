"""Per-minute rollups of every series: count, sum, min, max, p50/p95/p99 and a sketch.

A periodic job rolls up each minute once it has closed (plus a short grace for
samples in flight), oldest first, one minute per transaction; a cursor row
records how far it got and is locked with SKIP LOCKED, so several workers never
roll the same minute. A sample that arrives for a minute already rolled up puts
that minute in the backlog (see ``samples``), and the job rolls it up again.

The sketch is a DDSketch (relative accuracy ``SKETCH_RELATIVE_ACCURACY``): any
quantile it answers is within that relative error of the true one, and sketches
merge exactly, so a 5-minute or hourly percentile is the merge of minute
sketches, never a re-read of raw samples. The minute's own p50/p95/p99 are
exact (computed from the samples) and stored beside it.
"""

import time
from collections import defaultdict
from datetime import datetime, timedelta

from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import DDSketchProto
from django.db import connection, transaction
from django.db.models import DateTimeField, Min
from django.utils import timezone

from monitoring import partitions
from monitoring.models import MetricSample, RollupBacklog, RollupCursor

SKETCH_RELATIVE_ACCURACY = 0.01
MINUTE = timedelta(minutes=1)
# A minute is rolled up this long after it ends, for samples still in flight.
GRACE = timedelta(seconds=15)
COPY_ROLLUPS = (
    "COPY monitor_rollups (series_id, minute, count, sum, min, max, p50, p95, p99, sketch) "
    "FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ("int8", "timestamptz", "int8", *["float8"] * 6, "bytea")


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def new_sketch() -> DDSketch:
    return DDSketch(relative_accuracy=SKETCH_RELATIVE_ACCURACY)


def dump_sketch(sketch: DDSketch) -> bytes:
    """The sketch as the library's protobuf message, each store in the smaller of its
    two encodings the format allows: contiguous counts (every bin between the lowest
    and the highest, empty ones included) or a map of the non-empty bins.

    A minute of a few dozen samples fills a few dozen bins spread over hundreds
    (at 1 % accuracy one decade of values spans about 115 bins): the map is several
    times smaller, and a percentile rule reads and parses every minute of its
    window for every series it selects. A busy minute fills its span densely and
    keeps the contiguous form.
    """
    message = DDSketchProto.to_proto(sketch)
    for store in (message.positiveValues, message.negativeValues):
        counts = store.contiguousBinCounts
        filled = {
            store.contiguousBinIndexOffset + n: count for n, count in enumerate(counts) if count
        }
        # A map entry costs about 13 bytes (key, tag, length, a double); a dense bin 8.
        if filled and 13 * len(filled) < 8 * len(counts):
            del counts[:]
            store.contiguousBinIndexOffset = 0
            store.binCounts.update(filled)
    return message.SerializeToString()


def load_sketch(data: bytes) -> DDSketch:
    """A library sketch from ``dump_sketch``'s bytes (or the library's own, dense ones)."""
    message = DDSketchMessage()
    message.ParseFromString(bytes(data))
    sketch = DDSketchProto.from_proto(message)  # reads the contiguous counts only
    for stored, store in (
        (message.positiveValues, sketch._store),
        (message.negativeValues, sketch._negative_store),
    ):
        for key, count in stored.binCounts.items():
            store.add(key, count)
    sketch._count = sketch._negative_store.count + sketch._zero_count + sketch._store.count
    return sketch


def exact_quantile(ordered: list[float], q: float) -> float:
    """The lower nearest-rank quantile of sorted values (what DDSketch approximates)."""
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def summarise(values: list[float]) -> tuple:
    """(count, sum, min, max, p50, p95, p99, sketch bytes) of one series' minute."""
    ordered = sorted(values)
    sketch = new_sketch()
    for value in ordered:
        sketch.add(value)
    return (
        len(ordered),
        sum(ordered),
        ordered[0],
        ordered[-1],
        exact_quantile(ordered, 0.50),
        exact_quantile(ordered, 0.95),
        exact_quantile(ordered, 0.99),
        dump_sketch(sketch),
    )


def roll_up(now: datetime | None = None, *, budget_seconds: float = 5.0, max_minutes=120) -> int:
    """Roll up closed minutes not yet rolled up, then backlogged ones; how many it did."""
    now = now or timezone.now()
    closed = floor_minute(now - GRACE)
    deadline = time.monotonic() + budget_seconds
    done = 0
    # Workers may race to create the cursor: the first one wins, the rest find it.
    RollupCursor.objects.bulk_create([RollupCursor(name="samples")], ignore_conflicts=True)
    while done < max_minutes and time.monotonic() < deadline:
        with transaction.atomic():
            cursor = (
                RollupCursor.objects.select_for_update(skip_locked=True)
                .filter(name="samples")
                .first()
            )
            if cursor is None:
                return done  # another worker holds it
            minute = _next_minute(cursor, closed)
            if minute is None:
                return done
            roll_minute(minute)
            if cursor.rolled_until is None or minute >= cursor.rolled_until:
                cursor.rolled_until = minute + MINUTE
                cursor.save(update_fields=["rolled_until"])
            RollupBacklog.objects.filter(minute=minute).delete()
        done += 1
    return done


def _next_minute(cursor: RollupCursor, closed: datetime) -> datetime | None:
    backlog = RollupBacklog.objects.order_by("minute").values_list("minute", flat=True).first()
    if cursor.rolled_until is not None and backlog is not None and backlog < cursor.rolled_until:
        return backlog
    start = cursor.rolled_until
    if start is None:
        oldest = MetricSample.objects.aggregate(oldest=Min("ts"))["oldest"]
        if oldest is None:
            return None
        start = floor_minute(oldest)
    return start if start < closed else None


def roll_minute(minute: datetime) -> int:
    """(Re)compute the rollups of every series with samples in ``minute``; rows written."""
    values: dict[int, list[float]] = defaultdict(list)
    stamp = DateTimeField().get_db_prep_value
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT series_id, value FROM monitor_samples WHERE ts >= %s AND ts < %s",
            [stamp(minute, connection), stamp(minute + MINUTE, connection)],
        )
        for series_id, value in cursor.fetchall():
            values[series_id].append(value)
    rows = [(series_id, minute, *summarise(found)) for series_id, found in values.items()]
    partitions.ensure_days(partitions.ROLLUPS, {partitions.day_of(minute)})
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM monitor_rollups WHERE minute = %s", [stamp(minute, connection)])
        if not rows:
            return 0
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(COPY_ROLLUPS) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(
                "INSERT INTO monitor_rollups "
                "(series_id, minute, count, sum, min, max, p50, p95, p99, sketch) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(row[0], stamp(minute, connection), *row[2:]) for row in rows],
            )
    return len(rows)
