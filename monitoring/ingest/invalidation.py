"""Dropping cached ingest entries here and in every other web process.

Every process that serves heartbeats subscribes to one Redis channel (see
``runtime.listen``). A change that can make a cached entry wrong (a state
change, a queued command, an edited agent, a revoked token) is announced after
its transaction commits. A revocation also waits, up to a second, until every
subscriber has acknowledged it, so that the revoked token is refused on the
very next request whichever process takes it. Without Redis (embedded mode)
there is one serving process and the local drop is the whole story.
"""

import json
import os
import time
import uuid
from functools import partial

import structlog
from django.conf import settings
from django.db import transaction

from monitoring.ingest.cache import ingest_cache

log = structlog.get_logger(__name__)

ORIGIN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
ACK_WAIT_SECONDS = 1.0
ACK_KEY_TTL_SECONDS = 30

_client = None


def channel_name() -> str:
    return f"{settings.CHANNELS_PREFIX}:ingest-invalidate"


def ack_key(nonce: str) -> str:
    return f"{settings.CHANNELS_PREFIX}:ingest-ack:{nonce}"


def redis_client():
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return _client


def apply(message: dict) -> None:
    """Drop what ``message`` names from this process's cache."""
    ingest_cache.forget_agents(message.get("agents", ()))
    ingest_cache.forget_tokens(message.get("tokens", ()))
    ingest_cache.forget_agent_tokens(message.get("agent_tokens", ()))


def invalidate(*, agents=(), tokens=(), agent_tokens=(), wait: bool = False) -> None:
    """Drop cached entries now, here and (with Redis) in every serving process.

    ``wait`` blocks until every subscriber has applied the message (at most
    ``ACK_WAIT_SECONDS``): for revocations, which must hold on the next request.
    """
    message = {"agents": list(agents), "tokens": list(tokens), "agent_tokens": list(agent_tokens)}
    apply(message)
    if not settings.REDIS_URL:
        return
    nonce = uuid.uuid4().hex if wait else None
    payload = json.dumps({**message, "origin": ORIGIN, "ack": nonce})
    try:
        client = redis_client()
        receivers = client.publish(channel_name(), payload)
        if nonce is not None:
            wait_for_acks(client, nonce, receivers)
    except Exception:
        # The subscribers' own connections are the safety net: a process whose
        # subscription breaks stops trusting its cache until it resubscribes.
        log.exception("ingest.invalidation_failed", agents=len(message["agents"]))


def wait_for_acks(client, nonce: str, receivers: int) -> None:
    deadline = time.monotonic() + ACK_WAIT_SECONDS
    key = ack_key(nonce)
    while time.monotonic() < deadline:
        if int(client.get(key) or 0) >= receivers:
            return
        time.sleep(0.002)
    log.warning("ingest.invalidation_unacknowledged", receivers=receivers)


def invalidate_on_commit(**targets) -> None:
    transaction.on_commit(partial(invalidate, **targets), robust=True)
