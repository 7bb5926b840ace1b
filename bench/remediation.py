"""Remediation: from an agent failing to its restart command reaching it, over 100 failures.

    uv run python bench/remediation.py [--failures 100] [--interval 1.0]

Production settings on a scratch Postgres database (created, migrated, dropped)
and Redis db 4. One process runs the console's side as its periodic jobs do
(``check_heartbeats`` every 1 s, ``advance_due`` every 2 s, event handlers
in-process as the embedded mode runs them) while simulated agents heartbeat
through ``record_heartbeat`` (the service behind the heartbeat endpoint) from
a few threads, one heartbeat per interval each. Two kinds of failure, a fleet
each:

* ``reported``: the agent says ``failed`` in a heartbeat and keeps polling;
* ``silent``: the agent stops for the FAILED deadline plus one check period,
  then polls again (still saying ``failed``), so the command can reach it.

``detect_p99_s`` is last heartbeat to FAILED minus the deadline (silent
agents); ``act_p99_s`` is FAILED to the restart handed out (both kinds). The
ceilings from the same run: the check period bounds detection, and the
agent's own poll interval bounds delivery (a command waits for the next poll),
so the run also splits act into the console's part (FAILED to command queued)
and the wait for the poll.

Writes bench/results/remediation.json.
"""

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import scratch  # noqa: E402
import steps  # noqa: E402
import verdict  # noqa: E402

RESULTS = BENCH / "results" / "remediation.json"
COMMAND = "uv run python bench/remediation.py"
TARGET_SECONDS = 2.0
CHECK_PERIOD = 1.0
ADVANCE_PERIOD = 2.0
AGENT_THREADS = 20


# --- the step, inside Django ------------------------------------------------------------


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)], 3)


class SimulatedAgent:
    def __init__(self, agent, kind: str, fail_at: float, deadline: float):
        self.agent = agent
        self.kind = kind
        self.fail_at = fail_at
        self.resume_at = fail_at + deadline + CHECK_PERIOD if kind == "silent" else fail_at
        self.next_beat = time.monotonic()
        self.last_beat_wall = None
        self.silenced_at_wall = None
        self.restart = None  # the command once handed out
        self.acked = False

    def due(self, now: float) -> bool:
        return now >= self.next_beat

    def beat(self, record_heartbeat, interval: float) -> None:
        now = time.monotonic()
        failing = now >= self.fail_at
        if self.kind == "silent" and failing and now < self.resume_at:
            if self.silenced_at_wall is None:
                self.silenced_at_wall = self.last_beat_wall
            self.next_beat = self.resume_at
            return
        if self.restart is not None:
            # Restarted: healthy again, and heartbeating on so it does not fail twice.
            acks = [] if self.acked else [self.restart.pk]
            record_heartbeat(
                self.agent, state="idle", acks=acks, generation=self.restart.generation
            )
            self.acked = True
            self.next_beat += interval
            return
        result = record_heartbeat(self.agent, state="failed" if failing else "running")
        self.agent = result.agent
        self.last_beat_wall = time.time()
        for command in result.commands:
            if command.kind == "restart":
                self.restart = command
        self.next_beat += interval


def run_step(options) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omoi_console.settings")
    import django

    django.setup()
    from django.db import connections

    from monitoring.models import AgentCommand, AgentState, AgentTransition
    from monitoring.services import check_heartbeats, failed_after_seconds, register_agent
    from monitoring.services import record_heartbeat as record
    from omoi_console.celery import app as celery_app
    from watchdog import services

    # Event handlers run in this process, as the embedded mode runs them.
    celery_app.conf.task_always_eager = True
    interval = options.interval
    deadline = failed_after_seconds(interval)
    start = time.monotonic() + 2 * interval  # every agent heartbeats before anything fails
    spread = options.spread
    fleet = []
    for kind in ("reported", "silent"):
        for index in range(options.failures):
            agent, _ = register_agent(f"{kind}-{index:03d}", "worker", heartbeat_interval=interval)
            fail_at = start + spread * index / options.failures
            fleet.append(SimulatedAgent(agent, kind, fail_at, deadline))
    give_up = start + spread + deadline + 30
    done = threading.Event()
    errors = []

    def agents(share):
        try:
            while not done.is_set() and time.monotonic() < give_up:
                now = time.monotonic()
                for sim in share:
                    if sim.due(now):
                        sim.beat(record, interval)
                if all(sim.acked for sim in share):
                    return
                time.sleep(0.01)  # the simulated agents' own pace, not a test's wait
        except Exception as exc:  # reported, not swallowed: the run fails below
            errors.append(repr(exc))
        finally:
            connections.close_all()

    def jobs():
        next_check = next_advance = time.monotonic()
        try:
            while not done.is_set() and time.monotonic() < give_up:
                now = time.monotonic()
                if now >= next_check:
                    check_heartbeats()
                    next_check = max(next_check + CHECK_PERIOD, time.monotonic())
                if now >= next_advance:
                    services.advance_due()
                    next_advance = max(next_advance + ADVANCE_PERIOD, time.monotonic())
                time.sleep(0.01)
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=agents, args=(fleet[i::AGENT_THREADS],))
        for i in range(AGENT_THREADS)
    ]
    ticker = threading.Thread(target=jobs)
    for thread in [*threads, ticker]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    ticker.join()

    failed_at = {}
    for agent_id, at in (
        AgentTransition.objects.filter(to_state=AgentState.FAILED)
        .order_by("at")
        .values_list("agent_id", "at")
    ):
        failed_at.setdefault(agent_id, at)
    restarts = {}
    for command in (
        AgentCommand.objects.filter(kind="restart")
        .order_by("created_at")
        .values("agent_id", "created_at", "delivered_at")
    ):
        restarts.setdefault(command["agent_id"], command)
    result = {"interval_s": interval, "failed_after_s": deadline, "check_period_s": CHECK_PERIOD}
    for kind in ("reported", "silent"):
        sims = [s for s in fleet if s.kind == kind]
        detect, act, queue, poll, missing = [], [], [], [], 0
        for sim in sims:
            failed = failed_at.get(sim.agent.pk)
            command = restarts.get(sim.agent.pk)
            if failed is None or command is None or command["delivered_at"] is None:
                missing += 1
                continue
            if kind == "silent" and sim.silenced_at_wall is not None:
                last = datetime.fromtimestamp(sim.silenced_at_wall, UTC)
                detect.append((failed - last).total_seconds() - deadline)
            act.append((command["delivered_at"] - failed).total_seconds())
            queue.append((command["created_at"] - failed).total_seconds())
            poll.append((command["delivered_at"] - command["created_at"]).total_seconds())
        result[kind] = {
            "failures": len(sims),
            "restarted": len(sims) - missing,
            "detect_p50_s": percentile(detect, 0.5),
            "detect_p99_s": percentile(detect, 0.99),
            "act_p50_s": percentile(act, 0.5),
            "act_p99_s": percentile(act, 0.99),
            "act_max_s": round(max(act), 3) if act else None,
            "queued_p99_s": percentile(queue, 0.99),
            "poll_wait_p99_s": percentile(poll, 0.99),
        }
    result["errors"] = errors[:5]
    print(json.dumps(result), flush=True)


# --- the orchestrator -------------------------------------------------------------------


def check_services() -> None:
    """Postgres and Redis, before anything starts (no load generator here)."""
    import psycopg
    import redis

    try:
        psycopg.connect(scratch.ADMIN_DSN, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        raise steps.BenchFailed(f"cannot reach Postgres at {scratch.ADMIN_DSN}: {exc}") from None
    try:
        steps.flush_redis()
    except redis.RedisError as exc:
        raise steps.BenchFailed(f"cannot reach Redis at {steps.REDIS_URL}: {exc}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", type=int, default=50, help="induced failures per kind")
    parser.add_argument("--interval", type=float, default=1.0, help="agents' heartbeat interval")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds the failures span")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.step:
        run_step(options)
        return 0
    started, started_at = time.monotonic(), datetime.now(UTC)
    databases = scratch.ScratchDatabases()
    try:
        check_services()
        with (
            tempfile.TemporaryDirectory(prefix="omoi-bench-") as tmp,
            contextlib.ExitStack() as cleanup,
        ):
            cleanup.callback(databases.drop_all)
            cleanup.callback(steps.flush_redis)
            name = databases.create("remediation")
            env = steps.clean_environment(
                DATABASE_URL=databases.url(name),
                REDIS_URL=steps.REDIS_URL,
                SECRET_KEY=secrets.token_urlsafe(50),
                ALLOWED_HOSTS="127.0.0.1",
                OMOI_DATA_DIR=tmp,
                OMOI_HEARTBEAT_INTERVAL=str(options.interval),
                OMOI_HEARTBEAT_SKEW="0.5",
                # One connection per simulated-agent thread, and the jobs' own.
                DATABASE_POOL_MAX_SIZE=str(AGENT_THREADS + 4),
                # The bench times the loop, not the safety guards: 100 failures a
                # minute are a storm and past the action budget by design, and the
                # guards would (rightly) refuse most of them.
                OMOI_WATCHDOG_BUDGET_PER_MINUTE="0",
                OMOI_WATCHDOG_POLICY_PER_MINUTE="0",
                OMOI_WATCHDOG_STORM_MIN_AGENTS="1000000",
                OMOI_WATCHDOG_BREAKER_FAILURES="0",
                OMOI_LIVENESS_STALE_SECONDS="0",
                OMOI_TRACE_STORE="off",
            )
            steps.run_step(["uv", "run", "manage.py", "migrate", "--no-input", "-v", "0"], env)
            print("inducing failures", file=sys.stderr)
            args = [sys.executable, str(Path(__file__).resolve()), "--step"]
            args += ["--failures", str(options.failures), "--interval", str(options.interval)]
            args += ["--spread", str(options.spread)]
            measured = steps.run_step(args, env, timeout=900)
    except steps.BenchFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    report = {
        "command": COMMAND,
        "failures": options.failures * 2,
        "detect_p99_s": measured["silent"]["detect_p99_s"],
        # Agents that kept polling: FAILED to the restart handed out.
        "act_p99_s": measured["reported"]["act_p99_s"],
        # Agents that went silent: the act includes the rest of their own silence.
        "silent_act_p99_s": measured["silent"]["act_p99_s"],
    }
    report["targets"] = {
        name: {
            "target": f"<= {TARGET_SECONDS}",
            "value": report[name],
            "pass": report[name] <= TARGET_SECONDS,
        }
        for name in ("detect_p99_s", "act_p99_s")
        if report[name] is not None
    }
    report["ceilings"] = {
        "detect": f"check_heartbeats runs every {CHECK_PERIOD:g} s: up to one period",
        "act": "a command waits for the agent's next heartbeat: up to one interval "
        f"({options.interval:g} s)",
    }
    report["setup"] = (
        "one process: the periodic jobs on their schedule and the event handlers in-process; "
        "simulated agents call record_heartbeat (no HTTP) from "
        f"{AGENT_THREADS} threads; Postgres and Redis as in production"
    )
    report["run"] = {
        **verdict.git_commit(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
    }
    report["details"] = measured
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "details"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
