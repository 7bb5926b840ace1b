"""Metric ingest against its ceiling, raw COPY, measured in the same run.

* ``copy_rows_per_s``: psycopg's binary COPY straight into the samples table
  (the same partitioned shape and index), in batches of the size the HTTP run
  sends, one transaction each: what this machine's Postgres can take.
* ``http_samples_per_s``: samples stored end to end: agents' batches sent by the
  console's own client over HTTP to the production web server (the Procfile's
  line), checked, and stored.
* ``query_p95_ms``: one series with 24 h of 1 s samples, rolled up, queried for
  p95 over 1 min steps.
* ``rss_mb``: resident memory of the web server's processes before and after the
  sustained run.

    uv run python bench/ingest.py [--quick]

Writes bench/results/ingest.json; exits 1 when a batch that should have been
stored was not.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import scratch
import steps
import verdict
import webserver
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the client package lives at the top of the repository
RESULTS = ROOT / "bench" / "results" / "ingest.json"
TARGETS = {
    "http_samples_per_s": (">=", 100_000),
    "ratio": (">=", 0.25),
    "query_p95_ms": ("<", 50),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    return parser.parse_args()


class Plan:
    def __init__(self, quick: bool):
        self.agents = 20 if quick else 50
        self.series_per_agent = 50
        self.batch = 5000
        self.concurrency = 8
        self.seconds = 3.0 if quick else 20.0
        self.warm_up_seconds = 2.0 if quick else 5.0
        self.copy_rows = 300_000 if quick else 2_000_000
        self.query_runs = 20 if quick else 200


def rss_mb(server: webserver.WebServer) -> float:
    total = 0
    for pid in server.cpu_seconds():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def percentile(values, share):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


# --- the ceiling --------------------------------------------------------------


def copy_ceiling(url: str, plan: Plan) -> dict:
    """Binary COPY of prepared rows, batch by batch, each batch committed."""
    now = datetime.now(UTC)
    series = 2000
    rows = [
        (n % series + 1, now - timedelta(seconds=n // series, microseconds=n % 997), float(n))
        for n in range(plan.copy_rows)
    ]
    with psycopg.connect(url, autocommit=True) as connection:
        prepare_partitions(connection, now)
        started = time.perf_counter()
        for start in range(0, len(rows), plan.batch):
            with (
                connection.transaction(),
                connection.cursor() as cursor,
                cursor.copy(
                    "COPY monitor_samples (series_id, ts, value) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["int8", "timestamptz", "float8"])
                for row in rows[start : start + plan.batch]:
                    copy.write_row(row)
        seconds = time.perf_counter() - started
        connection.execute("TRUNCATE monitor_samples")
    return {"rows": len(rows), "seconds": round(seconds, 2), "per_s": round(len(rows) / seconds)}


def prepare_partitions(connection, now: datetime) -> None:
    for offset in (-1, 0, 1):
        day = (now + timedelta(days=offset)).date()
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        statement = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF monitor_samples "
            "FOR VALUES FROM ({}) TO ({})"
        ).format(
            sql.Identifier(f"monitor_samples_p{day:%Y%m%d}"),
            sql.Literal(start),
            sql.Literal(start + timedelta(days=1)),
        )
        connection.execute(statement)


# --- end to end ---------------------------------------------------------------


async def send_for(agent: str, token: str, url: str, plan: Plan, stop_at: float, totals):
    """One agent: samples of its series, one second apart, through the console's client."""
    from omoi_client import AsyncOmoiClient

    queues = [{"queue": f"q{n}"} for n in range(plan.series_per_agent)]
    tick = time.time() - 3600 + totals["offset"]
    # On loopback, compression would only spend both sides' CPU: sent as plain JSON.
    client = AsyncOmoiClient(
        url, token, batch_size=plan.batch, timeout=60, gzip_threshold=plan.batch * 1000
    )
    try:
        while time.monotonic() < stop_at:
            tick += 1
            for n, labels in enumerate(queues):
                client.record("queue_depth", float((int(tick) * 7 + n) % 101), labels, ts=tick)
            # The client sends in the background: keep a couple of batches ahead of it.
            while client.buffered > 2 * plan.batch:
                await asyncio.sleep(0.002)
    finally:
        await client.aclose()
    totals["sent"] += client.counters.sent
    totals["dropped"] += client.counters.dropped + client.counters.rejected


async def drive(agents, url: str, plan: Plan, seconds: float | None = None) -> dict:
    # Each run's samples start where the last one's ended, so none repeats a time.
    totals = {"sent": 0, "dropped": 0, "offset": drive.runs * 600}
    drive.runs += 1
    stop_at = time.monotonic() + (seconds or plan.seconds)
    await asyncio.gather(
        *(send_for(agent, token, url, plan, stop_at, totals) for agent, token in agents)
    )
    return totals


drive.runs = 0


def http_run(bench_dir: Path, databases: scratch.ScratchDatabases, template: str, plan: Plan):
    database = databases.create("http", template=template)
    env = production_env(bench_dir, databases, database)
    tokens_file = bench_dir / "agents.json"
    steps.fleet_step(env, "register", "--count", str(plan.agents), "--out", str(tokens_file))
    agents = json.loads(tokens_file.read_text())
    port = steps.free_port()
    command = webserver.procfile_command()
    server = webserver.WebServer(command, env, port, bench_dir / "web.log")
    try:
        server.start()
        server.wait_until_answering("/healthz", timeout=120)
        url = f"http://127.0.0.1:{port}"
        # Warm-up, not counted: every process verifies its agents' tokens, creates
        # their series and reaches its working-set size.
        warm = asyncio.run(drive(agents, url, plan, seconds=plan.warm_up_seconds))
        stored_before = count_samples(databases.url(database))
        if stored_before != warm["sent"]:
            raise steps.BenchFailed(f"warm-up sent {warm['sent']}, stored {stored_before}")
        rss_before = rss_mb(server)
        cpu_before, machine_before = server.cpu_seconds(), webserver.machine_cpu()
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        totals = asyncio.run(drive(agents, url, plan))
        seconds = time.perf_counter() - started
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = webserver.cpu_used(cpu_before, server.cpu_seconds())
        rss_after = rss_mb(server)
    finally:
        server.stop()
    stored = count_samples(databases.url(database)) - stored_before
    if totals["dropped"] or stored != totals["sent"]:
        raise steps.BenchFailed(
            f"sent {totals['sent']}, stored {stored}, dropped or refused {totals['dropped']}"
        )
    client_cpu = (own_after.ru_utime + own_after.ru_stime) - (
        own_before.ru_utime + own_before.ru_stime
    )
    return {
        "samples": stored,
        "seconds": round(seconds, 2),
        "per_s": round(stored / seconds),
        "server_cpu_share_of_all_cores": round(server_cpu / seconds / (os.cpu_count() or 1), 3),
        "client_cpu_share_of_one_core": round(client_cpu / seconds, 3),
        "machine_cpu_busy_share": round(
            webserver.machine_busy_share(machine_before, webserver.machine_cpu()), 3
        ),
        "rss_mb": {"before": rss_before, "after": rss_after},
    }


def count_samples(url: str) -> int:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT count(*) FROM monitor_samples").fetchone()[0]


def production_env(bench_dir: Path, databases, database: str) -> dict[str, str]:
    data_dir = bench_dir / f"data-{database}"
    data_dir.mkdir(exist_ok=True)
    return steps.clean_environment(
        DATABASE_URL=databases.url(database),
        REDIS_URL=steps.REDIS_URL,
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        OMOI_DATA_DIR=str(data_dir),
        # The web tier alone: no Celery worker or beat whose liveness /healthz could see.
        OMOI_LIVENESS_STALE_SECONDS="0",
        WEB_CONCURRENCY=os.environ.get("WEB_CONCURRENCY") or str(max(2, os.cpu_count() or 1)),
    )


def query_run(bench_dir, databases, template: str, plan: Plan) -> dict:
    """bench/query_latency.py on a database of its own: a day of 1 s samples, rolled up."""
    database = databases.create("query", template=template)
    env = production_env(bench_dir, databases, database)
    script = str(Path(__file__).resolve().parent / "query_latency.py")
    found = steps.run_step(
        [sys.executable, script, "--runs", str(plan.query_runs), "--keep"], env, timeout=1800
    )
    return {
        **found["series_query"],
        "ceiling": found["ceiling_bare_rollup_read"],
        **{key: found[key] for key in ("samples_stored", "source", "points", "load_and_roll_up_s")},
    }


def main() -> int:
    options = parse_args()
    plan = Plan(options.quick)
    databases = scratch.ScratchDatabases()
    report: dict = {}
    details: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="omoi-ingest-bench-") as workdir:
            bench_dir = Path(workdir)
            template = databases.create("template")
            steps.run_step(
                ["uv", "run", "manage.py", "migrate", "--no-input", "-v", "0"],
                production_env(bench_dir, databases, template),
            )
            ceiling_db = databases.create("copy", template=template)
            details["copy"] = copy_ceiling(databases.url(ceiling_db), plan)
            print(f"  raw COPY: {details['copy']['per_s']} rows/s", file=sys.stderr)
            details["http"] = http_run(bench_dir, databases, template, plan)
            print(f"  HTTP: {details['http']['per_s']} samples/s", file=sys.stderr)
            details["query"] = query_run(bench_dir, databases, template, plan)
            print(f"  query p95: {details['query']['p95_ms']} ms", file=sys.stderr)
    finally:
        databases.drop_all()
    report["copy_rows_per_s"] = details["copy"]["per_s"]
    report["http_samples_per_s"] = details["http"]["per_s"]
    report["ratio"] = round(report["http_samples_per_s"] / report["copy_rows_per_s"], 3)
    report["query_p95_ms"] = details["query"]["p95_ms"]
    report["rss_mb"] = details["http"]["rss_mb"]
    result = {
        **report,
        "verdict": judge(report),
        "plan": vars(plan),
        "details": details,
        "git": verdict.git_commit(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def judge(report: dict) -> dict:
    verdicts = {}
    for name, (operator, bound) in TARGETS.items():
        value = report.get(name)
        passed = None if value is None else (value >= bound if operator == ">=" else value < bound)
        verdicts[name] = {"target": f"{operator} {bound}", "value": value, "pass": passed}
    return verdicts


if __name__ == "__main__":
    try:
        sys.exit(main())
    except steps.BenchFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
