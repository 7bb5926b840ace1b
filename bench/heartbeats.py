"""Heartbeat ingest throughput on the embedded stack, against its own ceiling.

Runs the in-process server on a scratch SQLite database (or on DATABASE_URL),
registers a fleet and has CONCURRENCY clients post heartbeats as fast as the
server answers for DURATION seconds. The ceiling measured in the same run is
GET /healthz (one SELECT 1 through the same middleware stack): what any
database-touching request costs here. Writes JSON to var/bench/heartbeats.json.

    uv run python bench/heartbeats.py [--agents 50] [--concurrency 20] [--duration 10]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django():
    if not os.environ.get("DATABASE_URL"):
        os.environ.setdefault("OMOI_DATA_DIR", tempfile.mkdtemp(prefix="omoi-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


async def hammer(client, duration, request):
    latencies, statuses = [], {}
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        status = await request(client)
        latencies.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
    return latencies, statuses


async def measure(base_url, concurrency, duration, make_request):
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(hammer(client, duration, make_request(i)) for i in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    statuses: dict[int, int] = {}
    for _, s in results:
        for code, n in s.items():
            statuses[code] = statuses.get(code, 0) + n
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


async def run(options):
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.db import connection

    from omoi_console.top.embedded import EmbeddedApp
    from omoi_console.top.simulation import fleet_prefix, register_fleet

    # The in-process server listens on loopback, which production settings need not list.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    agents = await sync_to_async(register_fleet)(fleet_prefix("bench"), options.agents, 5.0)
    app = EmbeddedApp(with_ticker=False)
    await app.start()
    try:

        def heartbeat(i):
            agent = agents[i % len(agents)]
            headers = {"Authorization": f"Bearer {agent.token}"}
            body = {"state": "running", "task_id": "bench", "progress": 0.5}

            async def send(client):
                response = await client.post(
                    f"/api/v1/agents/{agent.id}/heartbeat", json=body, headers=headers
                )
                return response.status_code

            return send

        def health(i):
            async def send(client):
                return (await client.get("/healthz")).status_code

            return send

        ceiling = await measure(app.base_url, options.concurrency, options.duration, health)
        beats = await measure(app.base_url, options.concurrency, options.duration, heartbeat)
    finally:
        await app.stop()
    return {
        "database": connection.vendor,
        "agents": options.agents,
        "concurrency": options.concurrency,
        "duration_seconds": options.duration,
        "ceiling_healthz": ceiling,
        "heartbeats": beats,
        "share_of_ceiling": round(beats["per_second"] / ceiling["per_second"], 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "heartbeats.json")
    options = parser.parse_args()
    setup_django()
    result = asyncio.run(run(options))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    # A rate of refusals is no measurement: fail rather than report it.
    for name in ("ceiling_healthz", "heartbeats"):
        if set(result[name]["statuses"]) != {"200"}:
            raise SystemExit(f"{name}: not every request succeeded: {result[name]['statuses']}")


if __name__ == "__main__":
    main()
