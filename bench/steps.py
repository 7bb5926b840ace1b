"""Steps of a run in processes of their own, and the environments they run in."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import scratch
import wrk

ROOT = Path(__file__).resolve().parent.parent
FLEET = Path(__file__).resolve().parent / "fleet.py"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
# Environment that must come from the bench, never from the caller's shell.
OWNED_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "OMOI_MODE",
    "OMOI_DATA_DIR",
    "LOG_LEVEL",
    "DJANGO_SETTINGS_MODULE",
    "PORT",
)


class BenchFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OWNED_VARIABLES}
    return {**env, "LOG_LEVEL": "WARNING", **values}


def run_step(args: list[str], env: dict[str, str], timeout: float = 600.0) -> dict:
    """Run a step in a process group of its own; return the JSON its last line prints."""
    process = subprocess.Popen(  # noqa: S603 (our own scripts and uv)
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        what = " ".join(Path(arg).name for arg in args[:3])
        raise BenchFailed(f"{what} failed ({process.returncode}):\n{err[-3000:]}")
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def fleet_step(env: dict[str, str], *args: str, timeout: float = 600.0) -> dict:
    return run_step([sys.executable, str(FLEET), *args], env, timeout)


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def check_services() -> None:
    """Fail before anything starts when a tool or service the bench needs is missing."""
    import psycopg
    import redis

    if shutil.which(wrk.WRK) is None:
        raise BenchFailed("wrk is not installed (apt-get install wrk)")
    try:
        psycopg.connect(scratch.ADMIN_DSN, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        raise BenchFailed(f"cannot reach Postgres at {scratch.ADMIN_DSN}: {exc}") from None
    try:
        flush_redis()
    except redis.RedisError as exc:
        raise BenchFailed(f"cannot reach Redis at {REDIS_URL}: {exc}") from None
