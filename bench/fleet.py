"""The benchmark's steps inside Django, run as subprocesses with the environment under test.

    python bench/fleet.py register --count 2000 --out agents.json
    python bench/fleet.py unbeaten
    python bench/fleet.py idle-tick --sizes 1000,100000 --ticks 20
    python bench/fleet.py mass-outage --agents 2000 --silent 1000 --interval 5
    python bench/fleet.py embedded --count 2000 --port 8123 --out agents.json
    python bench/fleet.py hello --port 8123

Each prints one JSON object on its last line of output.
"""

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")
    import django

    django.setup()


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def register(count: int) -> list[tuple[str, str]]:
    """Register a fleet and record each agent's first heartbeat, the one that changes its state.

    After it every heartbeat is the steady-state kind, which is what the bench
    measures; recording it here rather than over HTTP keeps the run short while
    the first heartbeat costs what it does.
    """
    from django.conf import settings
    from django.db import transaction

    from monitoring.models import Agent
    from monitoring.services import record_heartbeat
    from omoi_console.top.simulation import fleet_prefix, register_fleet

    agents = register_fleet(fleet_prefix("bench"), count, settings.HEARTBEAT_INTERVAL_SECONDS)
    # One commit for the lot: the rows are those of one heartbeat each, without
    # paying a disk flush per agent before anything is measured.
    with transaction.atomic():
        for agent in Agent.objects.filter(pk__in=[a.id for a in agents]):
            record_heartbeat(agent, state="running", task_id="bench", progress=0.5)
    return [(agent.id, agent.token) for agent in agents]


def command_register(options):
    started = time.monotonic()
    agents = register(options.count)
    Path(options.out).write_text(json.dumps(agents))
    emit({"registered": len(agents), "seconds": round(time.monotonic() - started, 2)})


def command_unbeaten(options):
    from monitoring.models import Agent

    emit({"unbeaten": Agent.objects.filter(last_heartbeat_at__isnull=True).count()})


def bulk_agents(prefix: str, start: int, count: int, **fields):
    from monitoring.models import Agent, AgentRole, AgentState

    batch = []
    for number in range(start, start + count):
        batch.append(
            Agent(
                id=f"{prefix}-{number:06d}",
                role=AgentRole.WORKER,
                state=AgentState.RUNNING,
                labels={"fleet": prefix},
                **fields,
            )
        )
        if len(batch) == 5000:
            Agent.objects.bulk_create(batch)
            batch = []
    Agent.objects.bulk_create(batch)


def analyze(model) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")


def idle_tick_at(size: int, ticks: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from monitoring.services import check_heartbeats

    durations = []
    for _ in range(ticks):
        started = time.perf_counter()
        moved = check_heartbeats()
        durations.append((time.perf_counter() - started) * 1000)
        if moved:
            raise SystemExit(f"idle tick moved {moved} agent(s): the table was not idle")
    bare = []
    with connection.cursor() as cursor:
        for _ in range(ticks):
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            bare.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as captured:
        check_heartbeats()
    plan = []
    statements = [q["sql"] for q in captured.captured_queries]
    if statements and statements[0].lstrip().upper().startswith("SELECT"):
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + statements[0])
            plan = [row[0] for row in cursor.fetchall()]
    return {
        "agents": size,
        "ticks": ticks,
        "median_ms": round(statistics.median(durations), 3),
        "bare_query_median_ms": round(statistics.median(bare), 3),
        "min_ms": round(min(durations), 3),
        "max_ms": round(max(durations), 3),
        "statements": statements,
        "plan": plan,
    }


def command_idle_tick(options):
    from django.utils import timezone

    from monitoring.models import Agent

    # Everyone heartbeated just now and is due an hour from now: a tick finds nothing.
    now = timezone.now()
    fields = {"last_heartbeat_at": now, "overdue_at": now + timedelta(hours=1)}
    results = {}
    present = 0
    for size in sorted(int(x) for x in options.sizes.split(",")):
        started = time.monotonic()
        bulk_agents("idle", present, size - present, **fields)
        present = size
        # Autovacuum would do it within a minute of such an insert; the steady state
        # is a table whose statistics are current.
        analyze(Agent)
        fill_seconds = round(time.monotonic() - started, 2)
        results[str(size)] = {**idle_tick_at(size, options.ticks), "fill_seconds": fill_seconds}
    results["setup"] = (
        "Agent rows bulk-inserted, all due an hour later, then ANALYZE; "
        "median wall time of check_heartbeats() called in a loop"
    )
    emit(results)


def command_mass_outage(options):
    from django.conf import settings
    from django.utils import timezone

    from monitoring.models import Agent, AgentState, AgentTransition
    from monitoring.services import check_heartbeats, failed_after_seconds

    interval = options.interval
    skew = timedelta(seconds=settings.HEARTBEAT_SKEW_SECONDS)
    silenced_at = timezone.now()
    first_deadline = silenced_at + timedelta(seconds=interval) + skew
    good = options.agents - options.silent
    fields = {
        "heartbeat_interval": interval,
        "last_heartbeat_at": silenced_at,
        "overdue_at": first_deadline,
    }
    bulk_agents("beating", 0, good, **fields)
    bulk_agents("silent", 0, options.silent, **fields)
    analyze(Agent)
    beating = Agent.objects.filter(id__startswith="beating-")
    silent_failed = Agent.objects.filter(id__startswith="silent-", state=AgentState.FAILED)
    failed_deadline = silenced_at + timedelta(seconds=failed_after_seconds(interval))
    give_up = failed_deadline + timedelta(seconds=options.timeout)

    ticks = []
    next_tick = time.monotonic()
    while timezone.now() < give_up:
        now = timezone.now()
        # The other half keeps heartbeating: what a heartbeat stores, for all of them at once.
        beating.update(last_heartbeat_at=now, overdue_at=now + timedelta(seconds=interval) + skew)
        started = time.perf_counter()
        moved = check_heartbeats()
        took = time.perf_counter() - started
        if moved:
            ticks.append(
                {
                    "at_s": round((now - silenced_at).total_seconds(), 2),
                    "moved": moved,
                    "seconds": round(took, 3),
                }
            )
        if now > failed_deadline and silent_failed.count() == options.silent:
            break
        # Beat's period; a tick that overran its slot is followed at once, as a
        # worker would take the next queued tick.
        next_tick = max(next_tick + options.tick, time.monotonic())
        time.sleep(max(0.0, next_tick - time.monotonic()))

    failed_at = {}
    for agent_id, at in (
        AgentTransition.objects.filter(agent__id__startswith="silent-", to_state=AgentState.FAILED)
        .order_by("at")
        .values_list("agent_id", "at")
    ):
        failed_at.setdefault(agent_id, at)
    lags = [(at - failed_deadline).total_seconds() for at in failed_at.values()]
    undetected = options.silent - len(lags)
    # An agent still not failed when the run gave up counts with the time it was
    # given: the percentiles are then lower bounds, and say so.
    lags += [(give_up - failed_deadline).total_seconds()] * undetected
    wrongly_failed = AgentTransition.objects.filter(
        agent__id__startswith="beating-", to_state=AgentState.FAILED
    ).count()
    emit(
        {
            "agents": options.agents,
            "silent": options.silent,
            "interval_s": interval,
            "failed_after_s": failed_after_seconds(interval),
            "tick_period_s": options.tick,
            "detected": options.silent - undetected,
            "percentiles_are_lower_bounds": bool(undetected),
            "beating_agents_failed": wrongly_failed,
            "detect_p50_s": round(percentile(lags, 0.5), 3) if lags else None,
            "detect_p99_s": round(percentile(lags, 0.99), 3) if lags else None,
            "detect_max_s": round(max(lags), 3) if lags else None,
            "ticks_that_moved": ticks,
        }
    )


def command_embedded(options):
    from django.core.management import call_command

    from omoi_console.top.embedded import EmbeddedApp

    call_command("migrate", interactive=False, verbosity=0)
    # Written before the server answers: once it does, the fleet is ready.
    Path(options.out).write_text(json.dumps(register(options.count)))

    async def serve():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        app = EmbeddedApp(port=options.port, with_ticker=False)
        await app.start()
        try:
            await stop.wait()
        finally:
            await app.stop()

    asyncio.run(serve())


def command_hello(options):
    """The embedded server's ceiling: the hello app on uvicorn configured as EmbeddedApp does."""
    import uvicorn
    from hello import app

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=options.port,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    uvicorn.Server(config).run()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("register")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    commands.add_parser("unbeaten")
    p = commands.add_parser("idle-tick")
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument("--ticks", type=int, default=20)
    p = commands.add_parser("mass-outage")
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--silent", type=int, default=1000)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--tick", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=90.0)
    p = commands.add_parser("embedded")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p = commands.add_parser("hello")
    p.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    if options.command == "hello":
        command_hello(options)
        return
    setup_django()
    {
        "register": command_register,
        "unbeaten": command_unbeaten,
        "idle-tick": command_idle_tick,
        "mass-outage": command_mass_outage,
        "embedded": command_embedded,
    }[options.command](options)


if __name__ == "__main__":
    main()
