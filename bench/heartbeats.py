"""Heartbeat ingest and heartbeat checks, each against its own ceiling from the same run.

Production mode is served exactly as the Procfile's ``web:`` line says, on a
scratch Postgres database (created, migrated, dropped) and Redis db 4; wrk is
the load generator. The ceiling is a constant-response ASGI app
(bench/hello.py) served by the same command line with the same workers and
the same wrk settings. Also measured: latency at a paced 1,000 heartbeats/s,
the embedded default (SQLite, in-process server), the cost of an idle heartbeat
check at 1,000 and 100,000 agents, detection time in a mass outage, and good
agents' latency while a flood of forged tokens arrives.

    uv run python bench/heartbeats.py [--quick] [--only hello,heartbeats,...]

Writes bench/results/heartbeats.json and fails (exit status 1) when a request
that should have succeeded did not: a rate of refusals is no measurement.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import scratch
import steps
import verdict
import webserver
import wrk

RESULTS = Path(__file__).resolve().parent / "results" / "heartbeats.json"
HELLO_APP = "bench.hello:app"
FLOOD_GOOD_CONNECTIONS = 16
PARTS = ("hello", "heartbeats", "latency", "flood", "embedded", "idle-tick", "mass-outage")


@dataclass(frozen=True)
class Plan:
    agents: int = 2000
    seconds: float = 10.0  # each measured wrk run
    threads: int = 2
    connections: int = 64
    paced_rate: float = 1000.0
    paced_connections: int = 64
    flood_good_rate: float = 200.0
    flood_connections: int = 32
    warm_up_seconds: float = 3.0
    idle_sizes: tuple[int, int] = (1000, 100_000)
    idle_ticks: int = 20
    outage_agents: int = 2000
    outage_silent: int = 1000
    outage_interval: float = 5.0


QUICK = Plan(
    agents=300,
    seconds=3.0,
    warm_up_seconds=1.0,
    idle_ticks=5,
    outage_agents=300,
    outage_silent=150,
    outage_interval=1.0,
)


class Bench:
    def __init__(self, options, workdir: Path, cleanup: contextlib.ExitStack):
        self.plan = QUICK if options.quick else Plan()
        self.parts = options.only
        self.procfile = options.procfile
        self.workdir = workdir
        self.databases = scratch.ScratchDatabases()
        cleanup.callback(self.drop_databases)
        self.template: str | None = None
        self.report: dict = {}
        self.details: dict = {}
        self.seconds: dict[str, float] = {}

    def wants(self, *parts: str) -> bool:
        return any(part in self.parts for part in parts)

    def drop_databases(self) -> None:
        dropped = self.databases.drop_all()
        if dropped:
            print(f"dropped scratch database(s): {', '.join(dropped)}", file=sys.stderr)

    # --- environments ---------------------------------------------------------

    def production_env(self, database: str) -> dict[str, str]:
        data_dir = self.workdir / f"data-{database}"
        data_dir.mkdir(exist_ok=True)
        return steps.clean_environment(
            DATABASE_URL=self.databases.url(database),
            REDIS_URL=steps.REDIS_URL,
            SECRET_KEY=secrets.token_urlsafe(50),
            ALLOWED_HOSTS="127.0.0.1",
            OMOI_DATA_DIR=str(data_dir),
            # The web tier alone: no Celery worker or beat whose liveness /healthz could see.
            OMOI_LIVENESS_STALE_SECONDS="0",
            # The web line's own default (one worker per core, at least two),
            # spelled out so that the worker count can be read off the command.
            WEB_CONCURRENCY=os.environ.get("WEB_CONCURRENCY") or str(max(2, os.cpu_count() or 1)),
        )

    def database(self, purpose: str) -> str:
        """A fresh migrated database: migrated once, then copied per purpose."""
        if self.template is None:
            self.template = self.databases.create("template")
            started = time.monotonic()
            steps.run_step(
                ["uv", "run", "manage.py", "migrate", "--no-input", "-v", "0"],
                self.production_env(self.template),
            )
            self.details["migrate_seconds"] = round(time.monotonic() - started, 2)
        return self.databases.create(purpose, template=self.template)

    # --- servers --------------------------------------------------------------

    @contextlib.contextmanager
    def serving(self, command: str, env: dict[str, str], ready_path: str, name: str, port=None):
        port = port or steps.free_port()
        server = webserver.WebServer(command, env, port, self.workdir / f"{name}.log")
        try:
            server.start()
            # Generous: the embedded server migrates and registers its fleet first.
            server.wait_until_answering(ready_path, timeout=300.0)
            yield server
        finally:
            server.stop()

    def load(self, **overrides) -> wrk.Load:
        values = {
            "threads": self.plan.threads,
            "connections": self.plan.connections,
            "seconds": self.plan.seconds,
        }
        return wrk.Load(**{**values, **overrides})

    def measure(self, server, agents, name: str, load: wrk.Load) -> dict:
        script = wrk.write_script(self.workdir, name, agents, load)
        before, machine_before = server.cpu_seconds(), webserver.machine_cpu()
        measured = wrk.run(script, f"http://127.0.0.1:{server.port}", load)
        server_cpu = webserver.cpu_used(before, server.cpu_seconds())
        machine_busy = webserver.machine_busy_share(machine_before, webserver.machine_cpu())
        if not measured.ok:
            raise steps.BenchFailed(
                f"{name}: not every request succeeded: {', '.join(measured.refusals)}"
            )
        report = measured.report()
        report["server_cpu_s"] = round(server_cpu, 2)
        report["server_cpu_share_of_all_cores"] = round(
            server_cpu / measured.seconds / (os.cpu_count() or 1), 3
        )
        # On a shared machine, whatever else ran took its share of the cores too.
        report["machine_cpu_busy_share"] = round(machine_busy, 3)
        print(
            f"  {name}: {report['per_s']}/s, p50 {report['latency_ms']['p50']} ms, "
            f"p99 {report['latency_ms']['p99']} ms, {report['statuses']}",
            file=sys.stderr,
        )
        return report

    def warm_up(self, server, agents, name: str, env: dict[str, str]) -> dict:
        """Steady state: every agent has beaten once (at registration), the server has served.

        The first heartbeat is the one that changes an agent's state; after
        that, a few seconds of the measured load open the server's connections
        and fill whatever it caches before anything is counted.
        """
        unbeaten = steps.fleet_step(env, "unbeaten")["unbeaten"]
        if unbeaten:
            raise steps.BenchFailed(f"{name}: {unbeaten} agent(s) have never heartbeated")
        load = self.load(seconds=self.plan.warm_up_seconds)
        return self.measure(server, agents, f"{name}-warm-up", load)

    def wrk_settings(self) -> dict:
        """Threads and connections of each kind of wrk run this plan makes."""
        plan = self.plan
        return {
            "throughput": {"threads": plan.threads, "connections": plan.connections},
            "paced": {
                "threads": plan.threads,
                "connections": plan.paced_connections,
                "offered_per_s": plan.paced_rate,
            },
            "flood_good": {
                "threads": 1,
                "connections": FLOOD_GOOD_CONNECTIONS,
                "offered_per_s": plan.flood_good_rate,
            },
            "flood_forged": {"threads": 1, "connections": plan.flood_connections},
            "seconds": plan.seconds,
            "warm_up_seconds": plan.warm_up_seconds,
        }

    # --- parts ----------------------------------------------------------------

    def run(self) -> None:
        for parts, measure in (
            (("hello", "heartbeats", "latency", "flood"), self.production),
            (("embedded",), self.embedded),
            (("idle-tick",), self.idle_tick),
            (("mass-outage",), self.mass_outage),
        ):
            if self.wants(*parts):
                started = time.monotonic()
                measure()
                self.seconds[measure.__name__] = round(time.monotonic() - started, 1)

    def production(self) -> None:
        command = webserver.procfile_command(procfile=self.procfile)
        env = self.production_env(self.database("web"))
        print("registering the fleet", file=sys.stderr)
        agents_file = self.workdir / "agents.json"
        registered = steps.fleet_step(
            env, "register", "--count", str(self.plan.agents), "--out", str(agents_file)
        )
        agents = [tuple(pair) for pair in json.loads(agents_file.read_text())]
        self.details["registration"] = registered
        argv = webserver.expand(command, {**env, "PORT": "8000"})
        server_info = {
            "command": command,
            "argv_with_port_8000": argv,
            "workers": webserver.worker_count(argv, env),
        }
        self.details["server"] = server_info
        if self.wants("hello"):
            hello_command = webserver.with_app(command, HELLO_APP)
            print(f"hello: {hello_command}", file=sys.stderr)
            with self.serving(hello_command, env, "/", "hello") as server:
                server_info["hello_command"] = hello_command
                self.details["hello"] = self.measure(server, agents, "hello", self.load())
            self.report["hello_per_s"] = self.details["hello"]["per_s"]
        if not self.wants("heartbeats", "latency", "flood"):
            return
        print(f"heartbeats: {command}", file=sys.stderr)
        with self.serving(command, env, "/healthz", "web") as server:
            server_info["processes"] = server.process_names()
            self.details["warm_up"] = self.warm_up(server, agents, "heartbeats", env)
            if self.wants("heartbeats"):
                beats = self.measure(server, agents, "heartbeats", self.load())
                self.details["heartbeats"] = beats
                self.report["heartbeats_per_s"] = beats["per_s"]
            if self.wants("latency"):
                self.latency(server, agents)
            if self.wants("flood"):
                self.flood(server, agents)

    def latency(self, server, agents) -> None:
        load = self.load(rate=self.plan.paced_rate, connections=self.plan.paced_connections)
        paced = self.measure(server, agents, "latency", load)
        self.details["latency"] = paced
        self.report["p50_ms"] = paced["latency_ms"]["p50"]
        self.report["p99_ms"] = paced["latency_ms"]["p99"]
        self.report["latency_achieved_per_s"] = paced["per_s"]
        self.report["latency_pacing"] = paced["pacing"]

    def flood(self, server, agents) -> None:
        flood_load = self.load(
            threads=1,
            connections=self.plan.flood_connections,
            seconds=self.plan.seconds + 2,
            forge_tokens=True,
        )
        good_load = self.load(
            threads=1,
            connections=FLOOD_GOOD_CONNECTIONS,
            rate=self.plan.flood_good_rate,
            seconds=self.plan.seconds,
        )
        flood_script = wrk.write_script(self.workdir, "flood", agents, flood_load)
        flood_run = wrk.WrkRun(flood_script, f"http://127.0.0.1:{server.port}", flood_load)
        try:
            time.sleep(1.0)  # the flood is under way before the good agents are measured
            good = self.measure(server, agents, "flood-good", good_load)
            flooded = flood_run.finish()
        finally:
            flood_run.stop()
        forged_accepted = sum(n for code, n in flooded.statuses.items() if code.startswith("2"))
        if forged_accepted:
            raise steps.BenchFailed(f"flood: {forged_accepted} forged token(s) were accepted")
        self.details["flood"] = {"good": good, "forged": flooded.report()}
        self.report["flood_good_p99_ms"] = good["latency_ms"]["p99"]
        self.report["flood_per_s"] = round(flooded.per_second, 1)
        self.report["flood_statuses"] = flooded.statuses
        if any(code.startswith("5") for code in flooded.statuses):
            print(f"  flood: server errors among the refusals: {flooded.statuses}", file=sys.stderr)

    def embedded(self) -> None:
        data_dir = self.workdir / "embedded"
        data_dir.mkdir()
        env = steps.clean_environment(OMOI_DATA_DIR=str(data_dir))
        agents_file = self.workdir / "embedded-agents.json"
        port = steps.free_port()
        arguments = [
            "--count",
            str(self.plan.agents),
            "--port",
            str(port),
            "--out",
            str(agents_file),
        ]
        command = shlex.join([sys.executable, str(steps.FLEET), "embedded", *arguments])
        print("embedded: migrating, registering, serving", file=sys.stderr)
        with self.serving(command, env, "/healthz", "embedded", port=port) as server:
            agents = [tuple(pair) for pair in json.loads(agents_file.read_text())]
            warm_up = self.warm_up(server, agents, "embedded", env)
            beats = self.measure(server, agents, "embedded", self.load())
        port = steps.free_port()
        command = shlex.join([sys.executable, str(steps.FLEET), "hello", "--port", str(port)])
        with self.serving(command, env, "/", "embedded-hello", port=port) as server:
            hello = self.measure(server, agents, "embedded-hello", self.load())
        self.details["embedded"] = {**beats, "warm_up": warm_up}
        self.details["embedded_hello"] = hello
        self.report["embedded_heartbeats_per_s"] = beats["per_s"]
        self.report["embedded_hello_per_s"] = hello["per_s"]
        self.report["embedded_ratio"] = round(beats["per_s"] / hello["per_s"], 3)

    def idle_tick(self) -> None:
        print("idle tick", file=sys.stderr)
        env = self.production_env(self.database("idle"))
        sizes = ",".join(str(n) for n in self.plan.idle_sizes)
        count = str(self.plan.idle_ticks)
        ticks = steps.fleet_step(env, "idle-tick", "--sizes", sizes, "--ticks", count)
        small, large = (ticks[str(n)] for n in self.plan.idle_sizes)
        self.details["idle_tick"] = ticks
        self.report["idle_tick_ms_1k"] = small["median_ms"]
        self.report["idle_tick_ms_100k"] = large["median_ms"]
        self.report["idle_tick_bare_query_ms"] = large["bare_query_median_ms"]
        print(f"  {small['median_ms']} ms, {large['median_ms']} ms", file=sys.stderr)

    def mass_outage(self) -> None:
        print("mass outage", file=sys.stderr)
        env = self.production_env(self.database("outage"))
        plan = self.plan
        outage = steps.fleet_step(
            env,
            "mass-outage",
            *("--agents", str(plan.outage_agents), "--silent", str(plan.outage_silent)),
            *("--interval", str(plan.outage_interval)),
        )
        outage["setup"] = (
            "controlled: all agents' last heartbeat set at one instant in the database; "
            "the beating half's heartbeat fields are refreshed before every tick; "
            "check_heartbeats() every 1 s in one process, as one beat-driven worker runs it; "
            "no event handlers run (no Celery worker)"
        )
        self.details["mass_outage"] = outage
        if outage["detected"] < plan.outage_silent:
            print(
                f"  only {outage['detected']} of {plan.outage_silent} silent agents were "
                "declared failed before the run gave up",
                file=sys.stderr,
            )
        self.report["mass_outage_detect_p99_s"] = outage["detect_p99_s"]
        self.report["mass_outage_setup"] = outage["setup"]
        print(f"  p99 {outage['detect_p99_s']} s", file=sys.stderr)


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {sorted(unknown)}; known: {PARTS}")
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, small fleets")
    parser.add_argument("--only", type=parse_parts, default=PARTS, help=",".join(PARTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--procfile", type=Path, default=webserver.PROCFILE, help="whose web: line to serve"
    )
    options = parser.parse_args()

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    # Even when started with SIGINT ignored (as a background job is), Ctrl-C cleans up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    started_at = datetime.now(UTC)
    try:
        steps.check_services()
        with (
            tempfile.TemporaryDirectory(prefix="omoi-bench-") as tmp,
            contextlib.ExitStack() as cleanup,
        ):
            cleanup.callback(steps.flush_redis)
            bench = Bench(options, Path(tmp), cleanup)
            bench.run()
    except (steps.BenchFailed, wrk.WrkFailed) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; processes stopped and scratch databases dropped", file=sys.stderr)
        return 130
    report = dict(bench.report)
    if "heartbeats_per_s" in report and report.get("hello_per_s"):
        report["ratio"] = round(report["heartbeats_per_s"] / report["hello_per_s"], 3)
    result = {
        **report,
        "targets": verdict.judge(report),
        "run": {
            **verdict.git_commit(),
            "started_at": started_at.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 1),
            "phase_seconds": bench.seconds,
            "cpu_count": os.cpu_count(),
            "server_command": bench.details.get("server", {}).get("command"),
            "workers": bench.details.get("server", {}).get("workers"),
            "wrk": bench.wrk_settings(),
            "quick": options.quick,
            "parts": list(options.only),
            "plan": dataclasses.asdict(bench.plan),
        },
        "load_generator": verdict.load_generator_headroom(report, bench.details),
        "details": bench.details,
    }
    if "ceiling_warning" in result["load_generator"]:
        print(f"warning: {result['load_generator']['ceiling_warning']}", file=sys.stderr)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
