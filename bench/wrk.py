"""Drive wrk with a generated Lua script and read back what it measured.

The script cycles over the fleet's ids and tokens (or forges tokens of the right
shape), tallies every status code per thread, and prints one JSON line from
``done()``. Pacing uses the monotonic clock through LuaJIT's FFI: each thread
owns a schedule of send slots, so a paced run offers its rate whatever the
latency, as long as a connection is free (when none is, the late request waits
for one and that wait is not counted: the run reports the rate it achieved).
"""

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

WRK = "wrk"
RESULT_MARK = "BENCH_RESULT "
HEARTBEAT_BODY = '{"state":"running","task_id":"bench","progress":0.5}'

SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local AGENTS = {AGENTS}
local FORGE_TOKENS = {FORGE}
local RATE_PER_THREAD = {RATE}
local STOP_AFTER_SLICE = {STOP}
local THREADS = {THREADS}
local CONNECTIONS_PER_THREAD = {CONNECTIONS_PER_THREAD}
local BODY = '{BODY}'

local threads = {}
function setup(thread)
  thread:set("thread_number", #threads)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  responses = 0
  local count = #AGENTS
  slice_start = math.floor(thread_number * count / THREADS)
  slice_length = math.floor((thread_number + 1) * count / THREADS) - slice_start
  sent = 0
  scheduled = 0
  started = now()
  period = RATE_PER_THREAD > 0 and 1 / RATE_PER_THREAD or 0
  math.randomseed(thread_number * 7919 + os.time())
end

local function forged_token()
  return string.format("omoi_ag_%06x%06x_%08x%08x%08x%08x",
    math.random(0, 0xffffff), math.random(0, 0xffffff),
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
end

function request()
  -- Threads start at different places so that together they cover the fleet
  -- early; a warm-up keeps each thread inside its own slice.
  local index
  if STOP_AFTER_SLICE then
    index = slice_start + sent % slice_length
  else
    index = (slice_start + sent) % #AGENTS
  end
  sent = sent + 1
  local agent = AGENTS[index + 1]
  local token = FORGE_TOKENS and forged_token() or agent[2]
  return wrk.format("POST", "/api/v1/agents/" .. agent[1] .. "/heartbeat", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, BODY)
end

if RATE_PER_THREAD > 0 then
  function delay()
    local slot = started + scheduled * period
    scheduled = scheduled + 1
    local wait = slot - now()
    if wait <= 0 then
      return 0
    end
    return wait * 1000
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  responses = responses + 1
  -- Answers on other connections may overtake one another: a connection's
  -- worth of extra answers makes it likely that every agent of the slice got through.
  if STOP_AFTER_SLICE and responses >= slice_length + CONNECTIONS_PER_THREAD then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    '{MARK}{"requests":%d,"duration_us":%d,"statuses":{%s},' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


class WrkFailed(RuntimeError):
    pass


@dataclass
class Load:
    """One wrk invocation: how many threads and connections, for how long, at what pace."""

    threads: int
    connections: int
    seconds: float
    rate: float = 0.0  # total offered requests per second; 0 is as fast as the server answers
    forge_tokens: bool = False
    warm_up: bool = False  # each thread covers its slice of the fleet once, then stops

    def describe(self) -> dict:
        described = {
            "threads": self.threads,
            "connections": self.connections,
            "seconds": self.seconds,
        }
        if self.rate:
            described["offered_per_s"] = self.rate
            described["pacing"] = (
                "open-loop schedule per wrk thread (Lua delay() against CLOCK_MONOTONIC): "
                f"each of {self.threads} thread(s) sends every {self.threads / self.rate * 1000:g} "
                f"ms over {self.connections // self.threads} connections; a send that finds no "
                "free connection waits, unrecorded"
            )
        return described


@dataclass
class Measured:
    load: Load
    requests: int
    seconds: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]
    cpu_seconds: float  # wrk's own user + system time
    refusals: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.refusals

    def report(self) -> dict:
        return {
            **self.load.describe(),
            "requests": self.requests,
            "per_s": round(self.per_second, 1),
            "statuses": self.statuses,
            "socket_errors": self.socket_errors,
            "latency_ms": self.latency_ms,
            "wrk_cpu_s": round(self.cpu_seconds, 2),
            "wrk_cpu_share_of_one_core": round(self.cpu_seconds / self.seconds, 3)
            if self.seconds
            else None,
        }


def write_script(directory: Path, name: str, agents: list[tuple[str, str]], load: Load) -> Path:
    table = ",".join(f'{{"{agent_id}","{token}"}}' for agent_id, token in agents)
    script = SCRIPT
    for key, value in {
        "AGENTS": "{" + table + "}",
        "FORGE": "true" if load.forge_tokens else "false",
        "RATE": repr(load.rate / load.threads if load.rate else 0),
        "STOP": "true" if load.warm_up else "false",
        "THREADS": str(load.threads),
        "CONNECTIONS_PER_THREAD": str(max(1, load.connections // load.threads)),
        "BODY": HEARTBEAT_BODY,
        "MARK": RESULT_MARK,
    }.items():
        script = script.replace("{" + key + "}", value)
    path = directory / f"{name}.lua"
    path.write_text(script)
    return path


class WrkRun:
    """A wrk process of its own group, so that it can be stopped with everything else."""

    def __init__(self, script: Path, url: str, load: Load):
        self.load = load
        self.started = time.monotonic()
        self.process = subprocess.Popen(  # noqa: S603 (a fixed program, our own arguments)
            [
                WRK,
                f"-t{load.threads}",
                f"-c{load.connections}",
                f"-d{max(1, round(load.seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def finish(self) -> Measured:
        # wait4 rather than wait: it hands back the child's own CPU time, which
        # shows whether the load generator had room to spare.
        output = self.process.stdout.read()
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.process.stdout.close()
        if self.process.returncode != 0:
            raise WrkFailed(f"wrk exited with {self.process.returncode}:\n{output.strip()}")
        line = next((x for x in output.splitlines() if x.startswith(RESULT_MARK)), None)
        if line is None:
            raise WrkFailed(f"wrk printed no result:\n{output.strip()}")
        raw = json.loads(line[len(RESULT_MARK) :])
        statuses = {k: raw["statuses"][k] for k in sorted(raw["statuses"])}
        errors = raw["socket_errors"]
        refusals = [f"HTTP {code}: {n}" for code, n in statuses.items() if not code.startswith("2")]
        refusals += [f"socket {kind}: {n}" for kind, n in errors.items() if n]
        return Measured(
            load=self.load,
            requests=raw["requests"],
            seconds=raw["duration_us"] / 1e6,
            statuses=statuses,
            socket_errors=errors,
            latency_ms={k: round(v / 1000, 2) for k, v in raw["latency_us"].items()},
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            refusals=refusals,
        )

    def stop(self) -> None:
        if self.process.returncode is None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def run(script: Path, url: str, load: Load) -> Measured:
    wrk = WrkRun(script, url, load)
    try:
        return wrk.finish()
    finally:
        wrk.stop()
