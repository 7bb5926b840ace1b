"""A consumer group on a Redis stream of agent events, applied at least once.

Each batch is read with ``XREADGROUP`` (blocking for a while when there is
nothing), each message applied by ``monitoring.bus_events`` in its own
transactions, and the batch's messages acknowledged with ``XACK`` only after
what they say is committed. A consumer that dies between the two leaves its
messages pending; every consumer periodically takes over messages pending
longer than ``reclaim_idle_ms`` (``XAUTOCLAIM``), its own included, and applies
them again, which changes nothing for a message already applied (see
``bus_events``). A message that can never be applied, or that has been
delivered ``max_deliveries`` times without success, goes to the dead-letter
stream ``<stream>:dead-letter`` with the reason, and is acknowledged.
"""

import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from django.db import InterfaceError, OperationalError, close_old_connections
from redis.exceptions import RedisError, ResponseError

from monitoring import bus_events

log = structlog.get_logger(__name__)

DEAD_LETTER_SUFFIX = ":dead-letter"
# The dead-letter stream keeps about this many messages, the newest.
DEAD_LETTER_MAX_LENGTH = 100_000
# How long to wait before trying again after Redis or the database failed.
BACKOFF_SECONDS = 1.0
# Stream and group names go into idempotency keys of at most 200 characters.
MAX_NAME_LENGTH = 80
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ConsumerConfig:
    stream: str
    group: str
    consumer: str
    batch: int = 100
    block_ms: int = 1000
    reclaim_idle_ms: int = 60_000
    max_deliveries: int = 5
    # Where a new group starts: "0" takes every message the stream still holds,
    # "$" only those added from now on.
    start: str = "0"

    def __post_init__(self):
        for name in (self.stream, self.group, self.consumer):
            if not 0 < len(name) <= MAX_NAME_LENGTH:
                raise ValueError(f"stream, group and consumer names are 1-{MAX_NAME_LENGTH} long")

    @property
    def dead_letter_stream(self) -> str:
        return self.stream + DEAD_LETTER_SUFFIX


class StreamConsumer:
    """One member of a consumer group; ``run`` until ``stop``."""

    def __init__(self, client, config: ConsumerConfig):
        self.client = client
        self.config = config
        self.counts = Counter()
        self._stopping = threading.Event()
        self._next_reclaim = 0.0
        self._database_away = False

    def stop(self) -> None:
        """Finish the batch in hand (applied and acknowledged), then return from ``run``."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> Counter:
        log.info("bus.consumer_started", stream=self.config.stream, group=self.config.group)
        while not self.stopping:
            try:
                self.ensure_group()
                while not self.stopping:
                    # A long-lived worker drops connections that broke or aged
                    # between batches, as Django does between requests.
                    close_old_connections()
                    self.run_once()
            except (RedisError, OSError) as exc:
                log.warning("bus.redis_unavailable", error=type(exc).__name__)
                self._stopping.wait(BACKOFF_SECONDS)
        log.info("bus.consumer_stopped", **self.counts)
        return self.counts

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(
                self.config.stream, self.config.group, id=self.config.start, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run_once(self) -> int:
        """Reclaim what is due, then read, apply and acknowledge one batch; how many it held."""
        handled = 0
        if time.monotonic() >= self._next_reclaim:
            handled += self.handle(self.reclaim())
            self._next_reclaim = time.monotonic() + self.config.reclaim_idle_ms / 2000
        handled += self.handle(self.read())
        return handled

    def read(self) -> list[tuple]:
        """New messages for this consumer: ``[(id, fields, deliveries)]``."""
        answer = self.client.xreadgroup(
            self.config.group,
            self.config.consumer,
            {self.config.stream: ">"},
            count=self.config.batch,
            block=self.config.block_ms,
        )
        entries = answer[0][1] if answer else []
        return [(entry_id, fields, 1) for entry_id, fields in entries]

    def reclaim(self) -> list[tuple]:
        """Messages pending longer than ``reclaim_idle_ms`` with any consumer, now this one's."""
        claimed = []
        cursor = "0-0"
        while len(claimed) < self.config.batch:
            cursor, entries, deleted = self.client.xautoclaim(
                self.config.stream,
                self.config.group,
                self.config.consumer,
                self.config.reclaim_idle_ms,
                start_id=cursor,
                count=self.config.batch - len(claimed),
            )
            claimed += [(entry_id, fields) for entry_id, fields in entries if fields is not None]
            if deleted:
                log.warning("bus.pending_deleted", count=len(deleted))
            if _text(cursor) == "0-0":
                break
        if claimed:
            log.info("bus.reclaimed", count=len(claimed))
            self.counts["reclaimed"] += len(claimed)
        return [(entry_id, fields, self.deliveries(entry_id)) for entry_id, fields in claimed]

    def deliveries(self, entry_id) -> int:
        pending = self.client.xpending_range(
            self.config.stream, self.config.group, min=entry_id, max=entry_id, count=1
        )
        return pending[0]["times_delivered"] if pending else 1

    def handle(self, entries: list[tuple]) -> int:
        """Apply each message; acknowledge those applied, dead-letter the hopeless."""
        applied = []
        for entry_id, fields, deliveries in entries:
            if deliveries > self.config.max_deliveries:
                self.dead_letter(entry_id, fields, f"not applied after {deliveries - 1} deliveries")
                continue
            outcome = self.process(entry_id, fields)
            if outcome is None:
                if self.stopping or self._database_away:
                    break
                continue
            if outcome != "dead-lettered":
                self.counts[outcome] += 1
                applied.append(entry_id)
        if applied:
            self.client.xack(self.config.stream, self.config.group, *applied)
        if self._database_away:
            self._database_away = False
            self._stopping.wait(BACKOFF_SECONDS)
        return len(entries)

    def process(self, entry_id, fields: dict) -> str | None:
        """Apply one message: what happened, "dead-lettered", or None (to be delivered again)."""
        message_id = _text(entry_id)
        try:
            message = bus_events.parse(
                decode_fields(fields),
                id=message_id,
                at=entry_time(message_id),
                key=f"{self.config.stream}:{self.config.group}:{message_id}",
            )
            return bus_events.apply(message)
        except bus_events.Malformed as exc:
            self.dead_letter(entry_id, fields, str(exc))
            return "dead-lettered"
        except (OperationalError, InterfaceError) as exc:
            # The message is fine; the database is not. It stays pending.
            log.warning("bus.database_unavailable", message_id=message_id, error=type(exc).__name__)
            self._database_away = True
            return None
        except Exception:
            log.exception("bus.apply_failed", message_id=message_id)
            return None

    def dead_letter(self, entry_id, fields: dict, reason: str) -> None:
        message_id = _text(entry_id)
        record = {
            **{f"original_{_text(name)}": value for name, value in fields.items()},
            "original_id": message_id,
            "group": self.config.group,
            "error": reason,
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.config.dead_letter_stream,
                record,
                maxlen=DEAD_LETTER_MAX_LENGTH,
                approximate=True,
            )
            pipe.xack(self.config.stream, self.config.group, entry_id)
            pipe.execute()
        self.counts["dead-lettered"] += 1
        log.warning("bus.dead_lettered", message_id=message_id, reason=reason)


def decode_fields(fields: dict) -> dict:
    try:
        return {_text(name): _text(value) for name, value in fields.items()}
    except UnicodeDecodeError:
        raise bus_events.Malformed("fields are not UTF-8 text") from None


def entry_time(message_id: str) -> datetime:
    """When Redis added the entry: its id's milliseconds, and its sequence number as
    microseconds, so that entries added within one millisecond keep their order."""
    milliseconds, _, sequence = message_id.partition("-")
    return EPOCH + timedelta(milliseconds=int(milliseconds), microseconds=min(int(sequence), 999))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
