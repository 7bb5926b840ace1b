"""Rule evaluation at fleet scale: 1,000 rules over 10,000 series, 20 ticks, on PostgreSQL.

Stores ``--series`` series of ``queue_depth`` (agents x queues, the agents
registered) with 10 minutes of rollups before the first tick and the minutes
the ticks move through, and ``--rules`` threshold rules (each selects one queue
with a matcher, groups by agent, and reduces a 5 minute window with avg, max or
p95, in turn; one rule in fifty looks for deep queues, the others for depths
no queue reaches). Then it times evaluator ticks, each evaluating every rule
once (as the periodic job does when all are due), 15 s of clock apart, so the
window moves and alerts open and resolve as it does.

The first tick finds every breach at once and opens its alerts together: an
alert storm, timed and reported apart (``storm_tick_s``, ``storm_alerts``).
Then ``--ticks`` ticks in the steady state give ``tick_p50_s`` and
``tick_p99_s``: a fleet on a normal day, where a queue that is deep stays deep
from one minute to the next but for one queue in a hundred, so alerts open once
and stay while a few come and go each minute, and every firing alert's value
moves each minute. The same is then run on flapping data (every queue's minutes
drawn afresh, so a third of the firing alerts change every minute) and reported
apart under ``flapping``, as the storm is. The floor in the same run
(``floor_read_s``) is one raw read of every rollup row the rules select (the
window's rows of the metric, sketches included), with no reduction and no alert
bookkeeping: no evaluation can read less.

``ws_push_p99_s`` is the time from an alert's change (acknowledged, then given
back, in turn: each publishes its event) to the message on a console websocket
that filtered for it, over the configured channel layer, ``--pushes`` times.

Runs against the database the environment names (DATABASE_URL; migrated; use a
scratch database: everything the bench stores is deleted afterwards). Writes
bench/results/rules.json.

    DATABASE_URL=postgres://.../scratch REDIS_URL=... SECRET_KEY=... uv run python bench/rules.py
"""

import argparse
import json
import math
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
# The websocket part connects as a browser on this machine would.
os.environ.setdefault("ALLOWED_HOSTS", "localhost")

import django
import verdict

django.setup()

from django.db import connection  # noqa: E402

from alerting import evaluator  # noqa: E402
from alerting.models import OPEN_STATUSES, Alert, AlertEvent, AlertRule  # noqa: E402
from monitoring import partitions, rollups  # noqa: E402
from monitoring.models import Agent, AgentRole, AgentState, MetricSeries  # noqa: E402
from omoi_console.foundation import collector  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rules.json"
MINUTE = timedelta(minutes=1)
# Minutes of rollups before the first tick's window ends; the ticks' own minutes follow.
MINUTES = 10
QUEUES = 10
AGGREGATIONS = ("avg", "max", "p95")
TICK = timedelta(seconds=15)  # of clock between ticks
TARGETS = {"tick_p99_s": 1.0, "ws_push_p99_s": 1.0}
# Steady data: the share of queues deep at the start, and of queues that change over
# (deep to calm or back) each minute.
DEEP_SHARE = 0.1
FLIPS_PER_MINUTE = 0.01


def minute_values(data: str, count: int, minutes: int):
    """The sketch each series gets each minute (series index, minute -> sketch).

    ``steady``: each queue is calm (values up to 99) or deep (values above 99.5, which
    the breaching rules look for), and stays so from one minute to the next but for
    ``FLIPS_PER_MINUTE`` of the queues, which change over: alerts open once and stay,
    a few come and go every minute, as in a fleet on a normal day. ``flapping``:
    every minute of every queue is drawn afresh from 64 random sketches (values 0 to
    100), so a window's maximum crosses 99.5 back and forth and about a third of the
    firing alerts change every minute: a fleet flapping as hard as it can.
    """
    rng = random.Random(2)  # noqa: S311 (sample values, not secrets)
    if data == "flapping":
        pool = [rollups.summarise([rng.uniform(0, 100) for _ in range(20)]) for _ in range(64)]
        return lambda n, m: pool[(n + m) % len(pool)]
    calm = [rollups.summarise([rng.uniform(0, 99) for _ in range(20)]) for _ in range(16)]
    deep = [rollups.summarise([rng.uniform(99.6, 100) for _ in range(20)]) for _ in range(16)]
    hot = [rng.random() < DEEP_SHARE for _ in range(count)]
    states = []
    for _ in range(minutes):
        states.append(list(hot))
        for n in rng.sample(range(count), round(count * FLIPS_PER_MINUTE)):
            hot[n] = not hot[n]
    return lambda n, m: (deep if states[m][n] else calm)[(n + m) % 16]


def store(count: int, start: datetime, minutes: int, tag: str, data: str) -> list[int]:
    agents = max(1, count // QUEUES)
    # The fleet is registered: an alert about an agent nobody knows is resolved as stale.
    Agent.objects.bulk_create(
        [
            Agent(
                id=f"{tag}-a{a}",
                name=f"{tag}-a{a}",
                role=AgentRole.WORKER,
                owner=f"team-{a % 7}",
                state=AgentState.RUNNING,
            )
            for a in range(agents)
        ]
    )
    series = MetricSeries.objects.bulk_create(
        [
            MetricSeries(
                metric="queue_depth",
                labels={"agent": f"{tag}-a{a}", "queue": f"{tag}-q{q}"},
                fingerprint=f"{tag}-{a}-{q}",
                agent_id=f"{tag}-a{a}",
            )
            for a in range(agents)
            for q in range(QUEUES)
        ]
    )
    sketch = minute_values(data, len(series), minutes)
    partitions.ensure_days(
        partitions.ROLLUPS, {partitions.day_of(start + m * MINUTE) for m in range(minutes)}
    )
    with connection.cursor() as cursor, cursor.cursor.copy(rollups.COPY_ROLLUPS) as copy:
        copy.set_types(rollups.COPY_TYPES)
        for n, s in enumerate(series):
            for m in range(minutes):
                copy.write_row((s.pk, start + m * MINUTE, *sketch(n, m)))
    return [s.pk for s in series]


def make_rules(count: int, tag: str) -> list[AlertRule]:
    rules = [
        AlertRule(
            name=f"{tag}-rule-{n}",
            kind="threshold",
            summary="Queue {queue} of {agent} is deep",
            metric="queue_depth",
            matchers=[f"queue={tag}-q{n % QUEUES}"],
            aggregation=AGGREGATIONS[n % len(AGGREGATIONS)],
            window=timedelta(minutes=5),
            group_by=["agent", "queue"],
            operator=">",
            # One rule in fifty breaches for the deep queues; the others never do, as
            # most rules most of the time.
            threshold=99.5 if n % 50 == 0 else 1000.0,
        )
        for n in range(count)
    ]
    for rule in rules[:3]:
        rule.full_clean()
    return AlertRule.objects.bulk_create(rules)


def floor_read(now: datetime, tag: str) -> float:
    """One raw read of every rollup row the rules select: the window's rows of the metric."""
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT r.series_id, r.sum, r.count, r.max, r.sketch FROM monitor_rollups r "
            "JOIN monitoring_metricseries s ON s.id = r.series_id "
            "WHERE s.metric = 'queue_depth' AND s.fingerprint LIKE %s "
            "AND r.minute >= %s AND r.minute < %s",
            [f"{tag}-%", now - timedelta(minutes=5), now],
        )
        cursor.fetchall()
    return time.perf_counter() - began


def ws_push(pushes: int) -> list[float]:
    """Seconds from an alert's change (acknowledged, then given back, in turn) to the
    message on a console websocket, over the configured channel layer."""
    import asyncio

    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth import get_user_model

    from alerting import lifecycle
    from alerting.builtins import HEARTBEAT_RULE
    from omoi_console.asgi import application

    # Dispatch in this process: the push is what is measured, not a worker's queue.
    from omoi_console.foundation.events.tasks import dispatch_events
    from omoi_console.foundation.roles import VIEWER, grant_role, sync_roles
    from omoi_console.models import OperatorToken

    dispatch_events.app.conf.task_always_eager = True
    sync_roles()
    user = get_user_model().objects.create_user(f"bench-{secrets.token_hex(4)}")
    grant_role(user, VIEWER)
    _, token = OperatorToken.issue(user=user, name="bench")
    rule = AlertRule.objects.get(name=HEARTBEAT_RULE)
    alert = lifecycle.fire_alert(rule, {"agent_id": f"bench-{secrets.token_hex(4)}"})

    def change(n: int) -> None:
        if n % 2 == 0:
            lifecycle.acknowledge_alert(alert, user)
        else:
            lifecycle.unacknowledge_alert(alert, "bench")

    async def run() -> list[float]:
        headers = [
            (b"origin", b"http://localhost"),
            (b"host", b"localhost"),
            (b"authorization", f"Bearer {token}".encode()),
        ]
        feed = WebsocketCommunicator(application, "/ws/console/", headers=headers)
        connected, _ = await feed.connect()
        assert connected
        await feed.send_json_to({"type": "filter", "events": ["monitor.alert.*acknowledged"]})
        await feed.receive_json_from(timeout=10)
        spent = []
        for n in range(pushes):
            began = time.perf_counter()
            await sync_to_async(change, thread_sensitive=False)(n)
            await feed.receive_json_from(timeout=10)
            spent.append(time.perf_counter() - began)
        await feed.disconnect()
        return spent

    try:
        return asyncio.run(run())
    finally:
        lifecycle.resolve_alert(alert, reason="bench over")
        Alert.objects.filter(pk=alert.pk).delete()
        user.delete()


def run(args, data: str) -> dict:
    """Store a fleet of ``data``, time the storm tick and ``args.ticks`` ticks after it,
    then delete it all; what was measured."""
    tag = f"b{secrets.token_hex(3)}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # Every tick's window is full: the minutes the ticks move through are stored too,
    # as if their samples had arrived and been rolled up on time.
    ahead = math.ceil((args.ticks + 1) * TICK / MINUTE)
    ids = store(args.series, now - MINUTES * MINUTE, MINUTES + ahead, tag, data)
    rules = make_rules(args.rules, tag)
    with connection.cursor() as cursor:
        # What autovacuum does to freshly loaded tables in production: statistics for the
        # planner, and the dead rows of earlier runs out of the way.
        cursor.execute(
            "VACUUM ANALYZE monitor_rollups, monitoring_metricseries, alerting_alertrule, "
            "alerting_alert, alerting_alertevent, alerting_notification, omoi_console_event"
        )
    # The evaluator runs in a worker process, which settles its collector once loaded.
    collector.settle()
    try:
        history = AlertEvent.objects.filter(alert__rule__in=rules)
        changes = []

        def tick(n: int) -> float:
            moment = now + n * TICK
            AlertRule.objects.filter(pk__in=[r.pk for r in rules]).update(next_evaluation_at=moment)
            before = history.count()
            began = time.perf_counter()
            evaluated = evaluator.evaluate_due(moment, budget_seconds=600)
            spent = time.perf_counter() - began
            assert evaluated >= len(rules), evaluated
            changes.append(history.count() - before)
            return spent

        storm = tick(0)
        storm_alerts = Alert.objects.filter(rule__in=rules).count()
        ticks = [tick(n) for n in range(1, args.ticks + 1)]
        return {
            "storm": storm,
            "storm_alerts": storm_alerts,
            "ticks": ticks,
            "changes": changes[1:],
            "floor": statistics.median(floor_read(now + n * TICK, tag) for n in range(5)),
            "alerts": Alert.objects.filter(rule__in=rules).count(),
            "still_open": Alert.objects.filter(rule__in=rules, status__in=OPEN_STATUSES).count(),
        }
    finally:
        Alert.objects.filter(rule__in=rules).delete()
        AlertRule.objects.filter(pk__in=[r.pk for r in rules]).delete()
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM monitor_rollups WHERE series_id = ANY(%s)", [ids])
        MetricSeries.objects.filter(pk__in=ids).delete()
        Agent.objects.filter(pk__startswith=f"{tag}-").delete()


def spread(ticks: list[float], changes: list[int]) -> dict:
    """Median, 99th percentile and maximum of the ticks; of the quiet ones (no alert
    changed); and the cost of one alert change beyond a quiet tick."""
    cuts = statistics.quantiles(ticks, n=100, method="inclusive") if len(ticks) > 1 else ticks * 99
    quiet = [spent for spent, changed in zip(ticks, changes, strict=True) if not changed]
    quiet_p50 = round(statistics.median(quiet), 3) if quiet else None
    busy = [(s, c) for s, c in zip(ticks, changes, strict=True) if c]
    return {
        "p50": round(statistics.median(ticks), 3),
        "p99": round(cuts[98], 3),
        "max": round(max(ticks), 3),
        "quiet_p50": quiet_p50,
        "quiet_max": round(max(quiet), 3) if quiet else None,
        "ms_per_change": (
            round(1000 * statistics.median((s - (quiet_p50 or 0)) / c for s, c in busy), 2)
            if busy
            else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rules", type=int, default=1_000)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--pushes", type=int, default=200)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("the rules bench runs on PostgreSQL (set DATABASE_URL)")

    started = datetime.now(UTC)
    steady = run(args, "steady")
    flapping = run(args, "flapping")
    pushes = ws_push(args.pushes)
    push_cuts = statistics.quantiles(pushes, n=100, method="inclusive")
    ticks, changes = steady["ticks"], steady["changes"]
    figures = spread(ticks, changes)
    flaps = spread(flapping["ticks"], flapping["changes"])
    result = {
        "series": args.series,
        "rules": args.rules,
        "ticks": args.ticks,
        "storm_tick_s": round(steady["storm"], 3),
        "storm_alerts": steady["storm_alerts"],
        "alerts_seen": steady["alerts"],
        "alerts_open_at_end": steady["still_open"],
        "tick_p50_s": figures["p50"],
        "tick_p99_s": figures["p99"],
        "tick_max_s": figures["max"],
        # Alert history rows each tick wrote (opened, fired, resolved, dropped...): the
        # window moves a whole minute every fourth tick, and alerts change with it.
        "changes_per_tick": changes,
        "quiet_tick_p50_s": figures["quiet_p50"],
        "quiet_tick_max_s": figures["quiet_max"],
        "ms_per_change": figures["ms_per_change"],
        "floor_read_s": round(steady["floor"], 3),
        "ratio_to_floor": round(steady["floor"] / figures["p50"], 3),
        # The same fleet and rules on flapping data (``minute_values``), reported apart
        # as the storm is: what a tick costs when a third of the alerts change at once.
        "flapping": {
            "storm_tick_s": round(flapping["storm"], 3),
            "tick_p50_s": flaps["p50"],
            "tick_p99_s": flaps["p99"],
            "tick_max_s": flaps["max"],
            "changes_per_tick": flapping["changes"],
            "quiet_tick_p50_s": flaps["quiet_p50"],
            "ms_per_change": flaps["ms_per_change"],
        },
        "ws_push_p50_s": round(statistics.median(pushes), 4),
        "ws_push_p99_s": round(push_cuts[98], 4),
        "ws_pushes": len(pushes),
    }
    result["targets"] = {
        name: {"target": f"<= {bound}", "value": result[name], "pass": result[name] <= bound}
        for name, bound in TARGETS.items()
    }
    result["command"] = "uv run python bench/rules.py " + " ".join(sys.argv[1:])
    result["run"] = {
        **verdict.git_commit(),
        "started_at": started.isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average": [round(n, 2) for n in os.getloadavg()[:2]],
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
