"""The event-bus consumer on NATS JetStream: the same messages, at least once, recorded once."""

import asyncio
import json
import os
import time
import uuid

import nats
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from nats.js.api import StreamConfig

from monitoring import bus_events
from monitoring.jetstream_consumer import JetStreamConfig, JetStreamConsumer
from monitoring.models import Agent, AgentState, MetricSample

pytestmark = [pytest.mark.nats, pytest.mark.django_db(transaction=True)]

ACK_WAIT = 1.0


def names():
    suffix = uuid.uuid4().hex[:8]
    return f"OMOI_TEST_{suffix}", f"omoi.test.{suffix}"


async def with_stream(work):
    """Run ``work(js, stream, subject)`` with a stream of its own, deleted afterwards."""
    client = await nats.connect(os.environ["NATS_URL"])
    js = client.jetstream()
    stream, subject = names()
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    try:
        return await work(js, stream, subject)
    finally:
        await js.delete_stream(stream)
        await client.close()
        # The database connection of the thread that applied the messages.
        await sync_to_async(connections.close_all)()


async def send(js, subject, kind, agent_id, data):
    headers = {"type": kind, "agent_id": agent_id}
    await js.publish(subject, json.dumps(data).encode(), headers=headers)


def consumer(stream, subject, **overrides) -> JetStreamConsumer:
    config = JetStreamConfig(
        url=os.environ["NATS_URL"],
        stream=stream,
        durable="console",
        subject=subject,
        fetch_timeout=0.2,
        ack_wait=ACK_WAIT,
        **overrides,
    )
    return JetStreamConsumer(config)


async def consume(member, subscription, expected: int) -> int:
    """Fetch until ``expected`` messages were handled (a fetch may return part of them)."""
    handled = 0
    for _ in range(20):
        handled += await member.run_once(subscription)
        if handled >= expected:
            break
    return handled


def batch(agent_id: str) -> dict:
    return {
        "samples": [
            {"name": "queue_depth", "labels": {"queue": "q"}, "ts": time.time(), "value": 2}
        ]
    }


def test_it_applies_messages_and_acknowledges_them(registered_agent):
    agent, _ = registered_agent
    before = MetricSample.objects.count()

    async def work(js, stream, subject):
        await send(js, subject, "heartbeat", agent.id, {"state": "running"})
        await send(js, subject, "metrics", agent.id, batch(agent.id))
        member = consumer(stream, subject)
        subscription = await member.subscribe(js._nc)
        handled = await consume(member, subscription, 2)
        info = await js.consumer_info(stream, "console")
        return handled, member.counts, info.num_ack_pending, info.num_pending

    handled, counts, unacknowledged, waiting = asyncio.run(with_stream(work))

    assert handled == 2
    assert counts == {"heartbeat": 1, "metrics": 1}
    assert (unacknowledged, waiting) == (0, 0)
    assert Agent.objects.get(pk=agent.id).state == AgentState.RUNNING
    assert MetricSample.objects.count() == before + 1


def test_it_redelivers_what_a_dead_consumer_left_unacknowledged_and_stores_it_once(
    registered_agent,
):
    agent, _ = registered_agent
    before = MetricSample.objects.count()

    async def work(js, stream, subject):
        await send(js, subject, "metrics", agent.id, batch(agent.id))
        dying = consumer(stream, subject)
        subscription = await dying.subscribe(js._nc)
        (message,) = await subscription.fetch(1, timeout=2)
        # It applies the message (committed) and dies before acknowledging it.
        sequence = str(message.metadata.sequence.stream)
        parsed = bus_events.parse(
            {"type": "metrics", "agent_id": agent.id, "data": message.data.decode()},
            id=sequence,
            at=message.metadata.timestamp,
            key=f"{stream}:console:{sequence}",
        )
        assert await sync_to_async(bus_events.apply)(parsed) == "metrics"
        # JetStream's own timer decides when an unacknowledged message is redelivered.
        await asyncio.sleep(ACK_WAIT + 0.5)
        survivor = consumer(stream, subject)
        await consume(survivor, await survivor.subscribe(js._nc), 1)
        info = await js.consumer_info(stream, "console")
        return survivor.counts, info.num_ack_pending

    counts, unacknowledged = asyncio.run(with_stream(work))

    assert MetricSample.objects.count() == before + 1
    assert counts == {"duplicate": 1}
    assert unacknowledged == 0


def test_it_terminates_malformed_messages_instead_of_retrying_them(registered_agent):
    agent, _ = registered_agent

    async def work(js, stream, subject):
        await send(js, subject, "gossip", agent.id, {})
        await send(js, subject, "heartbeat", "nobody", {"state": "idle"})
        await js.publish(subject, b"\xff", headers={"type": "heartbeat", "agent_id": agent.id})
        member = consumer(stream, subject)
        subscription = await member.subscribe(js._nc)
        await consume(member, subscription, 3)
        await asyncio.sleep(ACK_WAIT + 0.5)
        again = await member.run_once(subscription)
        info = await js.consumer_info(stream, "console")
        return member.counts, again, info.num_ack_pending, info.num_redelivered

    counts, again, unacknowledged, redelivered = asyncio.run(with_stream(work))

    assert counts == {"dead-lettered": 3}
    assert (again, unacknowledged, redelivered) == (0, 0, 0)
