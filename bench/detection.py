"""Cost of anomaly detection over a fleet's rollups, against its own ceilings.

Stores ``--series`` series (one queue per agent) with ``--minutes`` minutes of
rollups, then times ``monitoring.detection.detect`` catching up on all of them
(restoring, feeding and saving every series' state, 30 minutes per transaction),
and steady-state runs that each feed a single new minute to every series: what
each 15 s job costs once caught up (the median of five). Ceilings from the same run:

- ``detector_only``: the same restores, updates and states in plain Python,
  without the database;
- ``read_only``: the bare SQL read of the same rollup rows.

Runs against the database the environment names (DATABASE_URL; migrated). Use
a scratch database: the detection cursor is moved, and everything the bench
stored is deleted afterwards. Writes bench/results/detection.json.

    DATABASE_URL=postgres://.../scratch SECRET_KEY=... uv run python bench/detection.py
"""

import argparse
import json
import os
import random
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")

import django

django.setup()

from django.db import connection  # noqa: E402

from monitoring import detection, partitions, rollups  # noqa: E402
from monitoring.detectors import get_detector, restore_detector  # noqa: E402
from monitoring.models import MetricSeries, RollupCursor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "detection.json"
MINUTE = timedelta(minutes=1)
# Steady-state runs timed; the median is reported. The first also pays for whatever a
# long-running worker has warm already (the broker connection, on the first event).
TICKS = 5


def store(count: int, minutes: int, start: datetime) -> tuple[list[int], list[list[float]]]:
    """``count`` series with ``minutes`` rollup rows each; their ids and values."""
    prefix = secrets.token_hex(3)
    series = MetricSeries.objects.bulk_create(
        [
            MetricSeries(
                metric="queue_depth",
                labels={"agent": f"b{prefix}-{n}", "queue": "inbox"},
                fingerprint=f"bench-{prefix}-{n}",
                agent_id=f"b{prefix}-{n}",
            )
            for n in range(count)
        ]
    )
    rng = random.Random(4)  # noqa: S311 (sample values, not secrets)
    values = [[rng.gauss(50, 5) for _ in range(minutes + TICKS)] for _ in series]
    write_minutes([s.pk for s in series], values, start, range(minutes))
    return [s.pk for s in series], values


def write_minutes(ids: list[int], values: list[list[float]], start: datetime, offsets) -> None:
    sketch = rollups.summarise([1.0])[-1]
    days = {partitions.day_of(start + m * MINUTE) for m in offsets}
    partitions.ensure_days(partitions.ROLLUPS, days)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(rollups.COPY_ROLLUPS) as copy:
                copy.set_types(rollups.COPY_TYPES)
                for pk, found in zip(ids, values, strict=True):
                    for m in offsets:
                        v = found[m]
                        copy.write_row((pk, start + m * MINUTE, 1, v, v, v, v, v, v, sketch))
        else:
            stamp = rollups.DateTimeField().get_db_prep_value
            cursor.executemany(
                "INSERT INTO monitor_rollups "
                "(series_id, minute, count, sum, min, max, p50, p95, p99, sketch) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (pk, stamp(start + m * MINUTE, connection), 1, *[found[m]] * 6, sketch)
                    for pk, found in zip(ids, values, strict=True)
                    for m in offsets
                ],
            )


def detector_only(values: list[list[float]], start: datetime, offsets, states=None):
    """The detectors' own work, per 30-minute batch as detection does it: restore, feed, save."""
    states = states or [None] * len(values)
    out = []
    began = time.perf_counter()
    for found, saved in zip(values, states, strict=True):
        state = saved
        for first in range(offsets.start, offsets.stop, detection.BATCH_MINUTES):
            det = get_detector() if state is None else restore_detector(state)
            for m in range(first, min(first + detection.BATCH_MINUTES, offsets.stop)):
                det.update((start + m * MINUTE).timestamp(), found[m])
            state = json.loads(det.state_json())
        out.append(state)
    return time.perf_counter() - began, out


def read_only(start: datetime, end: datetime) -> float:
    stamp = rollups.DateTimeField().get_db_prep_value
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT series_id, minute, count, sum, min, max, p50, p95, p99 FROM monitor_rollups "
            "WHERE minute >= %s AND minute < %s ORDER BY series_id, minute",
            [stamp(start, connection), stamp(end, connection)],
        )
        cursor.fetchall()
    return time.perf_counter() - began


def forget(ids: list[int]) -> None:
    with connection.cursor() as cursor:
        for first in range(0, len(ids), 500):
            chunk = ids[first : first + 500]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(f"DELETE FROM monitor_rollups WHERE series_id IN ({marks})", chunk)  # noqa: S608


def set_cursors(detected_until: datetime, rolled_until: datetime) -> None:
    RollupCursor.objects.update_or_create(name="samples", defaults={"rolled_until": rolled_until})
    RollupCursor.objects.update_or_create(
        name=detection.CURSOR, defaults={"rolled_until": detected_until}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args()

    saved = {c.name: c.rolled_until for c in RollupCursor.objects.all()}
    start = datetime.now(UTC).replace(second=0, microsecond=0) - (args.minutes + 5) * MINUTE
    ids, values = store(args.series, args.minutes, start)
    points = args.series * args.minutes
    try:
        set_cursors(start, start + args.minutes * MINUTE)
        began = time.perf_counter()
        fed = detection.detect(budget_seconds=3600)
        catch_up = time.perf_counter() - began
        assert fed == args.minutes, fed
        bare, states = detector_only(values, start, range(args.minutes))
        read = read_only(start, start + args.minutes * MINUTE)

        # Steady state: one new minute for every series, as each job run finds it.
        ticks, bare_ticks = [], []
        for m in range(args.minutes, args.minutes + TICKS):
            write_minutes(ids, values, start, range(m, m + 1))
            set_cursors(start + m * MINUTE, start + (m + 1) * MINUTE)
            began = time.perf_counter()
            detection.detect(budget_seconds=3600)
            ticks.append(time.perf_counter() - began)
            spent, states = detector_only(values, start, range(m, m + 1), states=states)
            bare_ticks.append(spent)
        tick, tick_bare = statistics.median(ticks), statistics.median(bare_ticks)
    finally:
        forget(ids)
        MetricSeries.objects.filter(pk__in=ids).delete()
        for name, until in saved.items():
            RollupCursor.objects.filter(name=name).update(rolled_until=until)
        RollupCursor.objects.exclude(name__in=saved).delete()

    result = {
        "database": connection.vendor,
        "series": args.series,
        "minutes": args.minutes,
        "catch_up": {
            "seconds": round(catch_up, 3),
            "series_minutes_per_s": round(points / catch_up),
            "detector_only_per_s": round(points / bare),
            "read_only_per_s": round(points / read),
            "ratio_to_detector_only": round(bare / catch_up, 3),
        },
        "steady_tick": {
            "runs": [round(spent, 3) for spent in ticks],
            "seconds": round(tick, 3),
            "detector_only_seconds": round(tick_bare, 3),
            "ratio_to_detector_only": round(tick_bare / tick, 3),
            "per_series_ms": round(tick * 1000 / args.series, 3),
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
