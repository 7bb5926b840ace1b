"""Latency of the series query: one series, 24 h of 1 s samples, p95 over 1 min steps.

Runs against the database the environment names (DATABASE_URL; migrated), stores
its own series (labelled with a random agent id), rolls it up, then times
``monitoring.queries.series_query`` and, as its ceiling, the bare SQL read of the
same rollup rows. Prints JSON; ``--explain`` adds the plans (EXPLAIN ANALYZE) of
the statements the query runs. The series and its samples are deleted afterwards
unless ``--keep``.

    DATABASE_URL=postgres://... SECRET_KEY=... uv run python bench/query_latency.py --explain
"""

import argparse
import gc
import json
import os
import random
import secrets
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from monitoring import queries, rollups, samples  # noqa: E402
from monitoring.models import MetricRollup, MetricSeries  # noqa: E402

BATCH = 50_000


def store_day(agent: str, now, seconds: int) -> MetricSeries:
    rng = random.Random(1)  # noqa: S311 (sample values, not secrets)
    first = int((now - timedelta(seconds=seconds)).timestamp())
    labels = {"agent": agent, "task_kind": "bench"}
    for offset in range(0, seconds, BATCH):
        batch = [
            {
                "name": "task_latency_seconds",
                "labels": labels,
                "ts": first + offset + n,
                "value": rng.lognormvariate(0, 1),
            }
            for n in range(min(BATCH, seconds - offset))
        ]
        samples.ingest(batch, now=now)
    while rollups.roll_up(now, budget_seconds=120, max_minutes=5000):
        pass
    return MetricSeries.objects.get(metric="task_latency_seconds", agent_id=agent)


def timed(call, runs: int) -> dict:
    """Wall-clock percentiles, and this process's CPU time per call: on a shared
    machine the wall clock also counts waiting for a core."""
    spent, cpu = [], []
    for _ in range(runs):
        began, began_cpu = time.perf_counter(), time.process_time()
        call()
        spent.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
    cuts = statistics.quantiles(spent, n=100)
    cpu_cuts = statistics.quantiles(cpu, n=100)
    return {
        "runs": runs,
        "p50_ms": round(cuts[49], 2),
        "p95_ms": round(cuts[94], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(spent), 2),
        "cpu_p50_ms": round(cpu_cuts[49], 2),
        "cpu_p95_ms": round(cpu_cuts[94], 2),
    }


def explain(sql: str, params) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return [row[0] for row in cursor.fetchall()]


def captured_statements(call) -> list[tuple[str, list]]:
    """The statements ``call`` sends, with their parameters, for EXPLAIN."""
    seen = []

    def keep(execute, sql, params, many, context):
        seen.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        call()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--agg", default="p95")
    parser.add_argument("--step", type=int, default=60)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--series", type=int, help="time a series kept by an earlier run")
    args = parser.parse_args()

    began = time.perf_counter()
    if args.series:
        series = MetricSeries.objects.get(pk=args.series)
        now = max(
            MetricRollup.objects.filter(series=series).values_list("minute", flat=True)
        ) + timedelta(minutes=1)
        args.keep = True
    else:
        now = timezone.now()
        series = store_day(f"bench-query-{secrets.token_hex(3)}", now, args.hours * 3600)
    loaded = time.perf_counter() - began
    # As a serving process does at start-up (monitoring.ingest.asgi.lifespan):
    # what is loaded by now stays out of the collector's full collections.
    gc.collect()
    gc.freeze()
    start, end = now - timedelta(hours=args.hours), now

    def query():
        return queries.series_query([series.id], start=start, end=end, step=args.step, agg=args.agg)

    answer = query()
    report = {
        "database": connection.vendor,
        "series": series.id,
        "samples_stored": None if args.series else args.hours * 3600,
        "load_and_roll_up_s": round(loaded, 1),
        "agg": args.agg,
        "step": args.step,
        "source": answer.source,
        "points": len(answer.series[0].points),
        "load_average": os.getloadavg(),
        "series_query": timed(query, args.runs),
    }
    statements = captured_statements(query)
    rollup_sql, rollup_params = next(
        (sql, params) for sql, params in statements if "monitor_rollups" in sql
    )

    def bare():
        with connection.cursor() as cursor:
            cursor.execute(rollup_sql, rollup_params)
            cursor.fetchall()

    report["ceiling_bare_rollup_read"] = timed(bare, args.runs)
    report["statements_per_query"] = len(statements)
    if args.explain:
        report["plans"] = {sql: explain(sql, params) for sql, params in statements}
    if not args.keep:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM monitor_samples WHERE series_id = %s", [series.id])
            cursor.execute("DELETE FROM monitor_rollups WHERE series_id = %s", [series.id])
        series.delete()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
