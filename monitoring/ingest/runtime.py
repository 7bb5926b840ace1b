"""The lean path's background work in one serving process: flushing and listening.

One ``IngestRuntime`` per event loop (a server process has one; tests and the
gameday start servers on fresh loops). Its flusher hands the buffered
heartbeats to a single database thread every ``INGEST_FLUSH_SECONDS``; its
listener keeps the cache honest with the invalidation channel. Until the
listener is subscribed (or after it loses Redis) the cache is not trusted and
every heartbeat takes Django's path.
"""

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor

import structlog
from django.conf import settings
from django.db import connections

from monitoring.ingest import invalidation
from monitoring.ingest.cache import AgentSnapshot, ingest_cache, verify_agent_token
from monitoring.ingest.flush import Beat, Outcome, flush_heartbeats
from monitoring.models import AgentState, AgentToken
from omoi_console.foundation.events.background import dispatch_in_background

log = structlog.get_logger(__name__)

# Beyond this many heartbeats waiting for a write (the database is slow or
# down), new ones take Django's path, which answers for itself.
MAX_BUFFERED = 50_000
VERIFIERS = 4
# Metric batches are stored on threads of their own, a few at once: a batch
# spends most of its time waiting on COPY and the commit.
BATCH_WRITERS = 3
RESUBSCRIBE_SECONDS = 1.0


class IngestRuntime:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.buffer: list[Beat] = []
        self.waiters: list[tuple[Beat, asyncio.Future]] = []
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="omoi-ingest")
        # Token checks are one indexed query each; a few at once keep a process
        # that just started (an empty cache) from queueing its whole fleet.
        self.verifier = ThreadPoolExecutor(VERIFIERS, thread_name_prefix="omoi-ingest-verify")
        self.batches = ThreadPoolExecutor(BATCH_WRITERS, thread_name_prefix="omoi-ingest-batch")
        self.subscribed_before = False
        self.trusted = not settings.REDIS_URL
        self.stopping = False
        self.tasks = [loop.create_task(self._flush_forever())]
        if settings.REDIS_URL:
            self.tasks.append(loop.create_task(self._listen_forever()))
        else:
            self.tasks.append(loop.create_task(self._poll_revocations_forever()))

    @property
    def accepting(self) -> bool:
        return self.trusted and not self.stopping and len(self.buffer) < MAX_BUFFERED

    def submit(self, beat: Beat) -> None:
        """Buffer a routine heartbeat; it is written with the next flush."""
        self.buffer.append(beat)

    def submit_and_wait(self, beat: Beat) -> asyncio.Future:
        """Buffer a state-changing heartbeat; the future gets the agent's state once written."""
        future = self.loop.create_future()
        self.buffer.append(beat)
        self.waiters.append((beat, future))
        self.wakeup.set()  # someone is waiting: do not sit out the interval
        return future

    async def verify(self, raw: str, agent_id: str | None) -> bool:
        """Verify an agent token not yet cached; True when it is cached now."""
        try:
            return await self.loop.run_in_executor(self.verifier, _verify_in_thread, raw, agent_id)
        except Exception:
            log.warning("ingest.verify_failed", agent_id=agent_id, exc_info=True)
            return False

    async def run_batch(self, work, *args):
        """Run ``work(*args)`` (a metric batch) on a batch thread; its result."""
        return await self.loop.run_in_executor(self.batches, work, *args)

    async def flush(self) -> None:
        beats, self.buffer = self.buffer, []
        waiters, self.waiters = self.waiters, []
        if not beats:
            return
        try:
            outcome = await self.loop.run_in_executor(self.executor, _flush_in_thread, beats)
        except Exception as exc:
            log.exception("ingest.flush_failed", heartbeats=len(beats))
            # Liveness of routine beats is lost for one interval; waiting
            # requests fall back to Django's path, which answers for itself.
            for _, future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        for beat in beats:
            state = outcome.states.get(beat.agent_id)
            if state is not None and not beat.routine:
                expected = beat.generation + outcome.own_changes.get(beat.agent_id, 0)
                stuck_on = (beat.task_id, beat.progress) if state == AgentState.STUCK else None
                snapshot = AgentSnapshot(state, beat.interval, beat.default_stuck_after, stuck_on)
                ingest_cache.update_state(beat.agent_id, snapshot, expected)
        for beat, future in waiters:
            if not future.done():
                future.set_result(outcome.states.get(beat.agent_id))

    async def _flush_forever(self) -> None:
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), settings.INGEST_FLUSH_SECONDS)
            self.wakeup.clear()
            await self.flush()

    async def _listen_forever(self) -> None:
        while not self.stopping:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("ingest.invalidation_channel_lost", exc_info=True)
            self.trusted = False
            await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(invalidation.channel_name())
            if self.subscribed_before:
                # Whatever changed while nobody listened is unknown: start empty.
                # (The first subscription keeps what this process filled while
                # starting: its own registrations, just written.)
                ingest_cache.clear()
            self.subscribed_before = True
            self.trusted = True
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                await self._apply(client, json.loads(message["data"]))
        finally:
            self.trusted = False
            await client.aclose()

    async def _poll_revocations_forever(self) -> None:
        """Embedded mode's stand-in for the channel: other processes only revoke tokens."""
        seen = await self.loop.run_in_executor(self.executor, newest_revocation)
        while not self.stopping:
            await asyncio.sleep(settings.INGEST_REVOCATION_POLL_SECONDS)
            try:
                newest = await self.loop.run_in_executor(self.executor, newest_revocation)
            except Exception:
                log.warning("ingest.revocation_poll_failed", exc_info=True)
                ingest_cache.forget_all_tokens()
                continue
            if newest != seen:
                ingest_cache.forget_all_tokens()
                seen = newest

    async def _apply(self, client, message: dict) -> None:
        if message.get("origin") != invalidation.ORIGIN:
            invalidation.apply(message)
        nonce = message.get("ack")
        if nonce:
            key = invalidation.ack_key(nonce)
            await client.incr(key)
            await client.expire(key, invalidation.ACK_KEY_TTL_SECONDS)

    async def stop(self) -> None:
        """Write what is buffered and stop (lifespan shutdown, server stop)."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.flush()
        await self.loop.run_in_executor(self.executor, connections.close_all)
        self.executor.shutdown(wait=True)
        self.verifier.shutdown(wait=True)
        self.batches.shutdown(wait=True)


def _flush_in_thread(beats: list[Beat]) -> Outcome:
    try:
        # Heartbeats waiting on this batch must not wait for its events' handlers.
        with dispatch_in_background():
            return flush_heartbeats(beats)
    except Exception:
        # A broken connection must not poison the next flush.
        connections.close_all()
        raise


def _verify_in_thread(raw: str, agent_id: str | None) -> bool:
    try:
        return verify_agent_token(raw, agent_id)
    finally:
        # These threads serve rarely once the cache is warm: give the
        # connection back rather than hold one per thread.
        connections.close_all()


def newest_revocation():
    return (
        AgentToken.objects.filter(revoked_at__isnull=False)
        .order_by("-revoked_at")
        .values_list("revoked_at", flat=True)
        .first()
    )


_runtime: IngestRuntime | None = None


def current_runtime() -> IngestRuntime:
    """The runtime of the running loop, started on first use."""
    global _runtime
    loop = asyncio.get_running_loop()
    if _runtime is None or _runtime.loop is not loop:
        _runtime = IngestRuntime(loop)
    return _runtime


async def flush_now() -> None:
    """Write what the running loop's lean path has buffered (tests, shutdown)."""
    await current_runtime().flush()


async def stop_runtime() -> None:
    global _runtime
    runtime, _runtime = _runtime, None
    if runtime is not None and runtime.loop is asyncio.get_running_loop():
        await runtime.stop()
