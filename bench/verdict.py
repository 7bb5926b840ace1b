"""What a run's numbers mean: targets met or not, and whether the load generator had room."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    "heartbeats_per_s": (">=", 2000),
    "ratio": (">=", 0.4),
    "p99_ms": ("<", 50),
    "embedded_heartbeats_per_s": (">=", 500),
    "idle_tick_ms_100k": ("<=", "2 * idle_tick_ms_1k"),
    "mass_outage_detect_p99_s": ("<=", 2),
    "flood_good_p99_ms": ("<", 100),
}


def judge(report: dict) -> dict:
    verdicts = {}
    for name, (operator, bound) in TARGETS.items():
        value = report.get(name)
        if isinstance(bound, str):
            base = report.get("idle_tick_ms_1k")
            limit = None if base is None else 2 * base
        else:
            limit = bound
        if value is None or limit is None:
            verdicts[name] = {"target": f"{operator} {bound}", "value": None, "pass": None}
            continue
        passed = {"<": value < limit, "<=": value <= limit, ">=": value >= limit}[operator]
        verdicts[name] = {"target": f"{operator} {bound}", "value": value, "pass": passed}
    return verdicts


def load_generator_headroom(report: dict, details: dict) -> dict:
    """Evidence that wrk was not what limited the rates."""
    evidence = {}
    for name in ("hello", "heartbeats", "embedded_hello", "embedded"):
        run = details.get(name)
        if run:
            evidence[name] = {
                "per_s": run["per_s"],
                "wrk_cpu_share_of_one_core": run["wrk_cpu_share_of_one_core"],
                "wrk_threads": run["threads"],
                "server_cpu_share_of_all_cores": run["server_cpu_share_of_all_cores"],
                "machine_cpu_busy_share": run["machine_cpu_busy_share"],
            }
    hello, workers = details.get("hello"), details.get("server", {}).get("workers")
    if hello and workers:
        busy = hello["server_cpu_s"] / hello["seconds"] / min(workers, os.cpu_count() or 1)
        evidence["hello_server_cpu_per_worker"] = round(busy, 2)
        if busy < 0.6:
            # The ceiling should be bound by the server's own work. A busy machine
            # means other load took the cores; an idle one points at the transport,
            # such as Nagle's algorithm meeting delayed ACKs.
            machine = hello["machine_cpu_busy_share"]
            cause = (
                "other load on the machine took the cores"
                if machine > 0.85
                else "the machine was not busy either, so look at the transport"
            )
            evidence["ceiling_warning"] = (
                f"the hello run kept each worker only {busy:.0%} busy (machine {machine:.0%} "
                f"busy): {cause}; the ceiling is low and the ratio flatters the app"
            )
    if report.get("hello_per_s") and report.get("heartbeats_per_s"):
        evidence["hello_over_heartbeats"] = round(
            report["hello_per_s"] / report["heartbeats_per_s"], 1
        )
        evidence["reading"] = (
            "the same wrk settings and script drove the hello app this many times faster, "
            "so wrk could offer far more heartbeats than the server answered"
        )
    return evidence


def git_commit() -> dict:
    def git(*args):
        return subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607 (git from PATH, as a developer runs it)
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()

    # The results directory is what a run writes, not what it ran.
    changes = git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changes)}
