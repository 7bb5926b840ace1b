import asyncio
import os
import signal
import socket
import sys

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from monitoring.jetstream_consumer import JetStreamConfig, JetStreamConsumer
from monitoring.stream_consumer import ConsumerConfig, StreamConsumer

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Command(BaseCommand):
    help = (
        "Apply agent events (heartbeats, task, registry and metrics messages) from a Redis "
        "stream, as a member of a consumer group, or from a NATS JetStream stream, as a "
        "durable pull consumer; see docs/monitoring/consume-events.md."
    )

    def add_arguments(self, parser):
        parser.add_argument("--stream", default="omoi:agent-events")
        parser.add_argument("--group", default="omoi-console")
        parser.add_argument(
            "--consumer",
            default=f"{socket.gethostname()}-{os.getpid()}",
            help="this member's name in the group (default: host and process id)",
        )
        parser.add_argument("--redis-url", default="", help="default: REDIS_URL")
        parser.add_argument(
            "--nats-url",
            default="",
            help="read a JetStream stream from this NATS server instead of Redis",
        )
        parser.add_argument(
            "--subject", default="", help="JetStream: only these subjects (default: all)"
        )
        parser.add_argument("--batch", type=int, default=100, help="messages per read")
        parser.add_argument("--block-ms", type=int, default=1000, help="longest wait for one")
        parser.add_argument(
            "--reclaim-idle-ms",
            type=int,
            default=60_000,
            help="take over messages another consumer has held unacknowledged this long",
        )
        parser.add_argument("--max-deliveries", type=int, default=5)
        parser.add_argument(
            "--from-now",
            action="store_true",
            help="a new group skips what the stream already holds (default: reads it all)",
        )

    def handle(self, *args, **options):
        if options["nats_url"]:
            counts, received = self.consume_jetstream(options)
        else:
            counts, received = self.consume_redis(options)
        summary = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        self.stdout.write(f"stopped; {summary or 'nothing applied'}")
        if received:
            sys.exit(EXIT_CODES[received[0]])

    def consume_redis(self, options):
        url = options["redis_url"] or settings.REDIS_URL
        if not url:
            raise CommandError("No Redis to read from: set REDIS_URL or pass --redis-url.")
        try:
            config = ConsumerConfig(
                stream=options["stream"],
                group=options["group"],
                consumer=options["consumer"],
                batch=max(1, options["batch"]),
                block_ms=max(1, options["block_ms"]),
                reclaim_idle_ms=max(1, options["reclaim_idle_ms"]),
                max_deliveries=max(1, options["max_deliveries"]),
                start="$" if options["from_now"] else "0",
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        # The socket waits longer than a blocking read, so a quiet stream is no error.
        client = redis.Redis.from_url(url, socket_timeout=config.block_ms / 1000 + 10)
        consumer = StreamConsumer(client, config)
        received = []

        def on_signal(signum, frame):
            received.append(signum)
            consumer.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in EXIT_CODES}
        try:
            counts = consumer.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            client.close()
        return counts, received

    def consume_jetstream(self, options):
        config = JetStreamConfig(
            url=options["nats_url"],
            stream=options["stream"],
            durable=options["group"],
            subject=options["subject"],
            batch=max(1, options["batch"]),
            fetch_timeout=max(1, options["block_ms"]) / 1000,
            ack_wait=max(1, options["reclaim_idle_ms"]) / 1000,
            max_deliveries=max(1, options["max_deliveries"]),
            from_now=options["from_now"],
        )
        received = []

        async def consume():
            consumer = JetStreamConsumer(config)
            loop = asyncio.get_running_loop()
            for sig in EXIT_CODES:
                loop.add_signal_handler(
                    sig, lambda sig=sig: (received.append(sig), consumer.stop())
                )
            try:
                return await consumer.run()
            finally:
                for sig in EXIT_CODES:
                    loop.remove_signal_handler(sig)

        try:
            counts = asyncio.run(consume())
        except Exception as exc:
            if type(exc).__module__.startswith("nats"):
                raise CommandError(f"NATS: {type(exc).__name__}: {exc}") from None
            raise
        return counts, received
