"""``HeartbeatFastPath``: the ASGI front of ``POST /api/v1/agents/{id}/heartbeat``.

It decides from the headers and the cache alone whether it may answer; if not,
the request goes to Django untouched (nothing read). It then reads the body;
if the body is not a routine report, Django gets the request with the body
replayed. Django's path fills the cache after every heartbeat it serves, so an
agent's first heartbeat after a restart of this process goes the long way and
the rest go the short one.
"""

import gc
import json
import re
from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils import timezone

from monitoring.ingest.cache import AgentSnapshot, TokenEntry, ingest_cache, token_digest
from monitoring.ingest.flush import Beat
from monitoring.ingest.runtime import current_runtime, stop_runtime
from monitoring.ingest.validation import Report, routine_report
from monitoring.models import AGENT_ID_PATTERN, AgentState
from omoi_console.foundation.request_limits import replay
from omoi_console.foundation.tokens import LAST_USED_RESOLUTION

HEARTBEAT_PATH = re.compile(rf"/api/v1/agents/({AGENT_ID_PATTERN})/heartbeat")
# States a heartbeat can leave by a plain transition or no transition at all.
# A STUCK agent's heartbeat is lean only while it repeats its stalled progress.
LEAN_STATES = frozenset(
    {
        AgentState.SPAWNING,
        AgentState.IDLE,
        AgentState.RUNNING,
        AgentState.DEGRADED,
        AgentState.STUCK,
    }
)
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
AGENT_BEARER = b"bearer omoi_ag_"
# What Django's middleware adds to every API response, so both paths look alike.
RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"vary", b"Accept, Cookie"),
    (b"allow", b"POST, OPTIONS"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


# How many heartbeats this process answered itself (observability and tests).
answered = Counter()


class HeartbeatFastPath:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        admitted = admit(scope)
        if admitted is None:
            return await self.app(scope, receive, send)
        runtime = current_runtime()
        if not runtime.accepting:
            return await self.app(scope, receive, send)
        if isinstance(admitted, Unverified):
            # A token this process has not seen (it started, or the agent moved
            # here): one query verifies it, instead of Django's whole cycle.
            if not await runtime.verify(admitted.raw, admitted.agent_id):
                return await self.app(scope, receive, send)
            admitted = admit(scope)
            if not isinstance(admitted, tuple):
                return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return None  # the client left
        digest, token, snapshot = admitted
        report = routine_report(body)
        target = None if report is None else lean_target(snapshot, report)
        if target is None:
            return await self.app(scope, replay(body, receive), send)
        now = timezone.now()
        touch = token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION
        if touch:
            ingest_cache.touch_token(digest, now)
        beat = Beat(
            agent_id=token.agent_id,
            at=now,
            state=target,
            served_from=snapshot.state,
            task_id=report.task_id,
            progress=report.progress,
            stuck_after=report.stuck_after,
            default_stuck_after=snapshot.stuck_after,
            interval=snapshot.interval,
            token_id=token.token_id,
            touch_token=touch,
            generation=ingest_cache.generation(token.agent_id),
        )
        if beat.routine:
            runtime.submit(beat)
            state = beat.state
        else:
            try:
                state = await runtime.submit_and_wait(beat)
            except Exception:
                state = None
            if state is None:
                # Not written (the database failed, or the agent may no longer
                # report): Django's path answers, with the same body.
                return await self.app(scope, replay(body, receive), send)
        # Counted before the answer leaves, so whoever reads the answer reads the count.
        answered["lean"] += 1
        await respond(send, token.agent_id, state, snapshot.interval)
        return None


def lean_target(snapshot: AgentSnapshot, report: Report) -> str | None:
    """The state ``report`` leaves the agent in, or None when Django's path must decide.

    A STUCK agent that repeats the task and progress it is stuck on stays stuck
    (a liveness write); one whose task or progress moved leaves STUCK, which is
    rare and takes the transactional path.
    """
    if snapshot.state != AgentState.STUCK:
        return report.state
    if report.state == AgentState.RUNNING and (report.task_id, report.progress) == (
        snapshot.stuck_on
    ):
        return AgentState.STUCK
    return None


@dataclass(frozen=True)
class Unverified:
    """A heartbeat the lean path could take once its agent token is verified."""

    raw: str
    agent_id: str


def admit(scope) -> tuple[str, TokenEntry, AgentSnapshot] | Unverified | None:
    """The cached token and agent a request may be answered from, or what to verify."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("query_string"):
        return None
    match = HEARTBEAT_PATH.fullmatch(scope["path"])
    if match is None:
        return None
    authorization = content_type = host = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value
        elif name == b"content-type":
            content_type = value.lower()
        elif name == b"host":
            host = value
        elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return None
    if authorization is None or content_type not in JSON_TYPES or not host_allowed(host):
        return None
    raw = agent_token(authorization)
    if raw is None:
        return None
    digest = token_digest(raw)
    token = ingest_cache.token(digest)
    if token is None:
        return Unverified(raw, match.group(1))
    if token.agent_id != match.group(1):
        return None
    snapshot = ingest_cache.agent(token.agent_id)
    if snapshot is None:
        # The agent changed since it was cached (a state change elsewhere): read it again.
        return Unverified(raw, match.group(1))
    if snapshot.state not in LEAN_STATES:
        return None
    return digest, token, snapshot


def host_allowed(host: bytes | None) -> bool:
    if not host:
        return False
    domain, _ = split_domain_port(host.decode("latin-1"))
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def agent_token(authorization: bytes) -> str | None:
    """The agent token in an ``Authorization: Bearer omoi_ag_…`` header, else None."""
    if authorization[: len(AGENT_BEARER)].lower() != AGENT_BEARER:
        return None
    try:
        return authorization[7:].strip().decode("ascii")
    except UnicodeDecodeError:
        return None


def is_known_good(authorization: bytes) -> bool:
    """True for an agent token this process has verified and not seen revoked."""
    raw = agent_token(authorization)
    return raw is not None and ingest_cache.token(token_digest(raw)) is not None


async def read_body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send, agent_id: str, state: str, interval: float) -> None:
    body = json.dumps(
        {
            "agent_id": agent_id,
            "state": state,
            "heartbeat_interval_seconds": float(interval),
            "commands": [],
        },
        separators=(",", ":"),
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*RESPONSE_HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope, receive, send):
    """Start the lean path's background work with the server; flush it on shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            current_runtime()
            # What is loaded by now (Django, the apps, their modules) lives as long
            # as the process: out of the collector's sight, a full collection
            # costs a batch of samples microseconds instead of tens of milliseconds.
            gc.collect()  # garbage is not frozen with the rest
            gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop_runtime()
            await send({"type": "lifespan.shutdown.complete"})
            return
