"""The Python client's costs, each beside its ceiling from the same run.

* ``record``: the CPU a sample costs an agent, beside appending the same dict to a deque
  (the least any buffer can do).
* ``send``: samples per second through the client into a served console (one uvicorn
  worker, as the Procfile's web line starts it, on a scratch SQLite file or, with
  ``--postgres``, a scratch PostgreSQL database), beside the same batches posted with bare
  httpx, already encoded and keyed: what the console can take from one sender.

    uv run python bench/client.py [--samples 200000] [--batch 1000] [--postgres]

Prints one JSON object. Fails when a sample was not confirmed: a loss is no measurement.
"""

import argparse
import asyncio
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omoi_client import AsyncOmoiClient  # noqa: E402
from omoi_client.retrying import RetryPolicy  # noqa: E402

METRIC = "task_latency_seconds"


def record_costs(count: int) -> dict:
    client = AsyncOmoiClient("http://unused.test", "t", background=False, buffer_limit=count)
    now = time.time()
    started = time.process_time()
    for n in range(count):
        client.record(METRIC, n * 0.5, {"task_kind": "build"}, ts=now + n / 1000)
    client_cpu = time.process_time() - started
    kept: deque = deque()
    started = time.process_time()
    for n in range(count):
        kept.append(
            (now, {"name": METRIC, "labels": {"task_kind": "build"}, "ts": now, "value": n * 0.5})
        )
    bare_cpu = time.process_time() - started
    return {
        "record_us": round(client_cpu / count * 1e6, 2),
        "deque_append_us": round(bare_cpu / count * 1e6, 2),
        "ratio": round(client_cpu / bare_cpu, 1),
    }


def batches(count: int, size: int, start: float) -> list[list[dict]]:
    samples = [
        {"name": METRIC, "labels": {"task_kind": "build"}, "ts": start + n / 1000, "value": n}
        for n in range(count)
    ]
    return [samples[i : i + size] for i in range(0, count, size)]


async def send_with_client(url: str, token: str, count: int, size: int, start: float) -> dict:
    retry = RetryPolicy(attempts=10, base=0.1, cap=2, budget=120)
    async with AsyncOmoiClient(url, token, batch_size=size, retry=retry) as client:
        began, cpu = time.perf_counter(), time.process_time()
        for batch in batches(count, size, start):
            for sample in batch:
                client.record(sample["name"], sample["value"], sample["labels"], sample["ts"])
            await asyncio.sleep(0)  # an agent's loop does other work between samples
        await client.flush()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    if client.counters.sent != count or client.counters.dropped or client.counters.rejected:
        raise SystemExit(f"samples lost: {client.counters}")
    return {
        "samples_per_s": round(count / elapsed),
        "client_cpu_us_per_sample": round(cpu / count * 1e6, 2),
        "retried": client.counters.retried,
    }


async def send_bare(url: str, token: str, count: int, size: int, start: float) -> dict:
    bodies = []
    for batch in batches(count, size, start):
        body = json.dumps({"samples": batch}, separators=(",", ":")).encode()
        bodies.append(gzip.compress(body, compresslevel=6, mtime=0))
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        began = time.perf_counter()
        for body in bodies:
            # Keyed as the client's batches are: the console records each key.
            keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
            response = await http.post("/api/v1/metrics/ingest", content=body, headers=keyed)
            if response.status_code != 200:
                raise SystemExit(f"bare post answered {response.status_code}: {response.text}")
        elapsed = time.perf_counter() - began
    raw = len(json.dumps({"samples": batches(size, size, start)[0]}).encode())
    return {
        "samples_per_s": round(count / elapsed),
        "gzip_ratio": round(raw / len(bodies[0]), 1),
    }


def manage(env: dict, *args: str) -> str:
    return subprocess.run(  # noqa: S603 (our own manage.py)
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def serve(env: dict, port: int) -> subprocess.Popen:
    server = subprocess.Popen(  # noqa: S603 (uvicorn as the Procfile runs it)
        [
            sys.executable,
            "-m",
            "uvicorn",
            "omoi_console.asgi:application",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--lifespan",
            "on",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the console did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--postgres", action="store_true")
    options = parser.parse_args()

    result = {"record": record_costs(options.samples)}
    scratch_dir = tempfile.TemporaryDirectory()
    databases = None
    env = {**os.environ, "LOG_LEVEL": "WARNING", "OMOI_RATE_LIMIT_PER_TOKEN": "100000/second"}
    env.pop("DATABASE_URL", None)
    if options.postgres:
        sys.path.insert(0, str(ROOT / "bench"))
        import scratch

        databases = scratch.ScratchDatabases()
        env["DATABASE_URL"] = databases.url(databases.create("client"))
    else:
        env["OMOI_SQLITE_PATH"] = str(Path(scratch_dir.name) / "console.sqlite3")
    server = None
    try:
        manage(env, "migrate", "--noinput")
        out = manage(env, "agents", "register", "bench-01", "--role", "worker")
        token = out.strip().splitlines()[-1]
        port = 18000 + os.getpid() % 1000
        server = serve(env, port)
        url = f"http://127.0.0.1:{port}"
        # Bare, client, bare: the table grows as they go, so the ceiling is taken on both
        # sides of the client. Each run has its own time range (no repeated samples).
        now = time.time() - 3600
        count, size = options.samples, options.batch
        before = asyncio.run(send_bare(url, token, count, size, now))
        sent = asyncio.run(send_with_client(url, token, count, size, now + 1))
        after = asyncio.run(send_bare(url, token, count, size, now + 2))
        bare = {
            "samples_per_s": round((before["samples_per_s"] + after["samples_per_s"]) / 2),
            "before_and_after": [before["samples_per_s"], after["samples_per_s"]],
            "gzip_ratio": before["gzip_ratio"],
        }
        result["send"] = {
            "database": "postgresql" if options.postgres else "sqlite",
            "samples": options.samples,
            "batch": options.batch,
            "client": sent,
            "bare_httpx_ceiling": bare,
            "ratio": round(sent["samples_per_s"] / bare["samples_per_s"], 2),
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if databases is not None:
            databases.drop_all()
        scratch_dir.cleanup()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
