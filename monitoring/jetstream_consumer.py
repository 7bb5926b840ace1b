"""A durable pull consumer on a NATS JetStream stream of agent events, applied at least once.

The same messages as on a Redis stream (``monitoring.bus_events``), carried as a
NATS message: headers ``type`` and ``agent_id``, the JSON ``data`` as payload.
Each fetched message is applied, then acknowledged (and the acknowledgement
confirmed by the server); a message not acknowledged within ``ack_wait``
seconds, because its consumer died, is delivered again by JetStream. A message
that can never be applied, or has been delivered ``max_deliveries`` times, is
terminated (never delivered again) with a ``bus.dead_lettered`` log line.
"""

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass

import nats
import structlog
from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, connections
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as FetchTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from monitoring import bus_events

log = structlog.get_logger(__name__)

BACKOFF_SECONDS = 1.0


@dataclass(frozen=True)
class JetStreamConfig:
    url: str
    stream: str
    durable: str
    # Only messages on subjects matching this; empty takes the whole stream.
    subject: str = ""
    batch: int = 100
    fetch_timeout: float = 1.0
    ack_wait: float = 60.0
    max_deliveries: int = 5
    from_now: bool = False


class JetStreamConsumer:
    def __init__(self, config: JetStreamConfig):
        self.config = config
        self.counts = Counter()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> Counter:
        client = await nats.connect(self.config.url, max_reconnect_attempts=-1)
        try:
            subscription = await self.subscribe(client)
            log.info("bus.consumer_started", stream=self.config.stream, group=self.config.durable)
            while not self._stopping.is_set():
                await sync_to_async(close_old_connections)()
                await self.run_once(subscription)
        finally:
            await client.close()
            await sync_to_async(connections.close_all)()
        log.info("bus.consumer_stopped", **self.counts)
        return self.counts

    async def subscribe(self, client):
        config = ConsumerConfig(
            durable_name=self.config.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.config.ack_wait,
            deliver_policy=DeliverPolicy.NEW if self.config.from_now else DeliverPolicy.ALL,
            filter_subject=self.config.subject or None,
        )
        return await client.jetstream().pull_subscribe(
            self.config.subject or None,
            durable=self.config.durable,
            stream=self.config.stream,
            config=config,
        )

    async def run_once(self, subscription) -> int:
        try:
            messages = await subscription.fetch(
                self.config.batch, timeout=self.config.fetch_timeout
            )
        except FetchTimeout:
            return 0
        except NatsError as exc:
            log.warning("bus.nats_unavailable", error=type(exc).__name__)
            await self._pause()
            return 0
        for message in messages:
            if not await self.handle(message):
                break  # the database is away: the rest come back after ack_wait
        return len(messages)

    async def handle(self, message) -> bool:
        """Apply one message and settle it; False when the database is away."""
        metadata = message.metadata
        message_id = str(metadata.sequence.stream)
        if metadata.num_delivered > self.config.max_deliveries:
            await self.dead_letter(
                message, f"not applied after {self.config.max_deliveries} deliveries"
            )
            return True
        headers = message.headers or {}
        try:
            fields = {
                "type": headers.get("type"),
                "agent_id": headers.get("agent_id"),
                "data": message.data.decode("utf-8"),
            }
            parsed = bus_events.parse(
                {name: value for name, value in fields.items() if value is not None},
                id=message_id,
                at=metadata.timestamp,
                key=f"{self.config.stream}:{self.config.durable}:{message_id}",
            )
            outcome = await sync_to_async(bus_events.apply)(parsed)
        except UnicodeDecodeError:
            await self.dead_letter(message, "data is not UTF-8 text")
            return True
        except bus_events.Malformed as exc:
            await self.dead_letter(message, str(exc))
            return True
        except (OperationalError, InterfaceError) as exc:
            log.warning("bus.database_unavailable", message_id=message_id, error=type(exc).__name__)
            await message.nak(delay=BACKOFF_SECONDS)
            await self._pause()
            return False
        except Exception:
            log.exception("bus.apply_failed", message_id=message_id)
            await message.nak(delay=BACKOFF_SECONDS)
            return True
        await message.ack_sync()
        self.counts[outcome] += 1
        return True

    async def dead_letter(self, message, reason: str) -> None:
        await message.term()
        self.counts["dead-lettered"] += 1
        log.warning(
            "bus.dead_lettered",
            message_id=str(message.metadata.sequence.stream),
            subject=message.subject,
            reason=reason,
        )

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), BACKOFF_SECONDS)
