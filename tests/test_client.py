"""The agents' client against the served app, over real HTTP."""

import asyncio
import json
import time

import pytest
import time_machine
from django.db import OperationalError, connection
from django.utils import timezone

from monitoring import catalog, samples
from monitoring.models import AgentCommand, CommandStatus, IngestBatch, MetricSample
from monitoring.services import queue_command, register_agent
from omoi_client import AsyncOmoiClient, BatchRejected, ConnectionFailed, RetryPolicy
from omoi_console import asgi
from omoi_console.top.embedded import EmbeddedApp
from tests.client_fakes import FakeTime, Recording, eventually, sent_samples
from tests.conftest import captured_log

pytestmark = pytest.mark.django_db(transaction=True)

METRIC = "task_latency_seconds"


@pytest.fixture(autouse=True)
def no_samples():
    """The samples table is not Django's to flush between tests: emptied here."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM monitor_samples")


@pytest.fixture
def agent(seeded):
    return register_agent("worker-01", "worker")


def client_for(server, token, **options) -> AsyncOmoiClient:
    return AsyncOmoiClient(server.base_url, token, **options)


def record_values(client, values, start: float | None = None) -> None:
    """One sample per value, a millisecond apart, so each is told apart in storage."""
    start = start if start is not None else time.time() - 60
    for value in values:
        client.record(METRIC, value, {"task_kind": "build"}, ts=start + value / 1000)


def stored_values() -> list[float]:
    return sorted(MetricSample.objects.values_list("value", flat=True))


def test_it_sends_samples_in_batches_of_the_configured_size(server, agent):
    _, token = agent
    transport = Recording()
    # The clock never moves: only the batch size can send.
    fake = FakeTime(auto=False)

    async def scenario():
        client = client_for(
            server, token, batch_size=4, transport=transport, clock=fake.clock, sleep=fake.sleep
        )
        record_values(client, range(10))
        await eventually(lambda: client.counters.sent == 8)
        sizes = [len(sent_samples(request)) for request in transport.ingests()]
        await client.aclose()
        return sizes, client.counters

    sizes, counters = asyncio.run(scenario())

    assert sizes == [4, 4]  # the last two waited for the close
    assert counters.sent == 10 and counters.dropped == counters.rejected == 0
    assert stored_values() == [float(v) for v in range(10)]


def test_it_sends_what_has_waited_a_flush_interval(server, agent):
    _, token = agent
    transport = Recording()
    fake = FakeTime(auto=False)

    async def scenario():
        client = client_for(
            server,
            token,
            batch_size=100,
            flush_interval=5,
            transport=transport,
            clock=fake.clock,
            sleep=fake.sleep,
        )
        record_values(client, [1, 2])
        await asyncio.sleep(0.1)
        fake.advance(4)
        await asyncio.sleep(0.1)
        before = len(transport.ingests())
        fake.advance(1)
        await eventually(lambda: client.counters.sent == 2)
        await client.aclose()
        return before, transport.ingests()

    before, ingests = asyncio.run(scenario())

    assert before == 0
    assert [len(sent_samples(request)) for request in ingests] == [2]
    assert stored_values() == [1.0, 2.0]


def test_it_compresses_batches_above_the_threshold(server, agent):
    _, token = agent
    transport = Recording()

    async def scenario():
        client = client_for(
            server, token, gzip_threshold=500, background=False, transport=transport
        )
        record_values(client, [1])
        await client.flush()
        record_values(client, range(2, 30))
        await client.flush()
        await client.aclose()

    asyncio.run(scenario())

    encodings = [request.headers.get("content-encoding") for request in transport.ingests()]
    assert encodings == [None, "gzip"]
    assert stored_values() == [float(v) for v in [1, *range(2, 30)]]


def test_it_stores_a_batch_once_when_its_answer_was_lost(server, agent):
    _, token = agent
    transport = Recording(lose_answers=1)
    fake = FakeTime()

    async def scenario():
        client = client_for(server, token, background=False, transport=transport, sleep=fake.sleep)
        record_values(client, range(5))
        sent = await client.flush()
        await client.aclose()
        return sent, client.counters

    sent, counters = asyncio.run(scenario())

    assert transport.statuses() == [200, 200]  # both reached the console
    assert stored_values() == [0.0, 1.0, 2.0, 3.0, 4.0]  # and it stored the batch once
    assert IngestBatch.objects.count() == 1
    first, again = transport.ingests()
    assert first.headers["idempotency-key"] == again.headers["idempotency-key"]
    assert sent_samples(first) == sent_samples(again)
    assert sent == counters.sent == 5 and counters.retried == 1


def test_it_drops_a_refused_batch_and_raises_its_problems(server, agent):
    _, token = agent
    transport = Recording()
    lines = []

    async def scenario():
        client = client_for(server, token, batch_size=3, background=False, transport=transport)
        start = time.time() - 60
        client.record(METRIC, 1.0, {"task_kind": "build"}, ts=start)
        client.record("no_such_metric", 2.0, ts=start)
        client.record(METRIC, 3.0, {"task_kind": "build"}, ts=start + 1)
        record_values(client, [4, 5])  # the next batch
        with pytest.raises(BatchRejected) as refused:
            await client.flush()
        left = client.buffered
        await client.flush()
        await client.aclose()
        return refused.value, left, client.counters

    with captured_log(lines):
        refused, left, counters = asyncio.run(scenario())

    assert refused.status == 422
    assert [(p.index, p.field) for p in refused.problems] == [(1, "name")]
    assert "no_such_metric" in refused.problems[0].detail
    assert [s["value"] for s in refused.samples] == [1.0, 2.0, 3.0]
    assert len(transport.ingests()) == 2  # the refused batch was not sent again
    assert left == 2
    assert counters.rejected == 3 and counters.sent == 2
    assert stored_values() == [4.0, 5.0]
    logged = [line for line in lines if line["event"] == "client.batch_rejected"]
    assert [(line["samples"], line["status"]) for line in logged] == [(3, 422)]
    assert logged[0]["problems"][0]["index"] == 1
    assert token not in json.dumps(lines)


def test_it_waits_as_long_as_a_429_says_and_then_sends(server, agent, settings):
    _, token = agent
    settings.RATE_LIMIT_PER_TOKEN = "2/minute"
    asgi.ingest_limits.configure()
    transport = Recording()

    with time_machine.travel(timezone.now(), tick=True) as traveller:
        fake = FakeTime(traveller=traveller)

        async def scenario():
            client = client_for(
                server,
                token,
                batch_size=1,
                background=False,
                transport=transport,
                clock=fake.clock,
                sleep=fake.sleep,
            )
            record_values(client, range(4), start=time.time() - 10)
            await client.flush()
            await client.aclose()
            return client.counters

        counters = asyncio.run(scenario())

    refusals = [(status, hint) for _, status, hint in transport.exchanges if status == 429]
    assert refusals, transport.statuses()
    assert fake.slept == [float(hint) for _, hint in refusals]
    assert counters.retried == len(refusals) and counters.sent == 4
    assert stored_values() == [0.0, 1.0, 2.0, 3.0]


def test_it_waits_as_long_as_a_503_says_and_then_sends(server, agent, monkeypatch):
    _, token = agent
    transport = Recording()
    fake = FakeTime()
    real_ingest = samples.ingest
    calls = []

    def database_away_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("the server closed the connection unexpectedly")
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(samples, "ingest", database_away_once)
    lines = []

    async def scenario():
        client = client_for(
            server,
            token,
            background=False,
            transport=transport,
            clock=fake.clock,
            sleep=fake.sleep,
        )
        record_values(client, range(3))
        await client.flush()
        await client.aclose()
        return client.counters

    with captured_log(lines):
        counters = asyncio.run(scenario())

    assert [(status, hint) for _, status, hint in transport.exchanges] == [
        (503, "5"),
        (200, None),
    ]
    assert fake.slept == [5.0]
    assert counters.retried == 1 and counters.sent == 3
    assert stored_values() == [0.0, 1.0, 2.0]
    retrying = [line for line in lines if line["event"] == "client.retrying"]
    assert [(line["reason"], line["wait_seconds"]) for line in retrying] == [("status 503", 5.0)]
    assert token not in json.dumps(lines)


def test_it_loses_no_sample_while_the_console_restarts(server, agent):
    """Stop the served app mid-stream, keep recording, start it again on the same port."""
    _, token = agent
    transport = Recording()
    again = EmbeddedApp(port=server.port, with_ticker=False)

    async def on_server(coroutine):
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, server.loop))

    async def scenario():
        # Real time, briefly: what is tested is that nothing is lost, not when it leaves.
        client = client_for(
            server,
            token,
            batch_size=10,
            flush_interval=0.05,
            retry=RetryPolicy(attempts=3, base=0.02, cap=0.1, budget=1),
            transport=transport,
        )
        start = time.time() - 60
        record_values(client, range(30), start)
        await eventually(lambda: client.counters.sent == 30)

        await on_server(server.stop())
        record_values(client, range(30, 60), start)
        await eventually(lambda: transport.statuses().count(None) >= 3)
        refused_while_down = client.buffered

        await on_server(again.start())
        record_values(client, range(60, 90), start)
        await client.aclose()
        return refused_while_down, client.counters

    try:
        refused_while_down, counters = asyncio.run(scenario())
    finally:
        asyncio.run_coroutine_threadsafe(again.stop(), server.loop).result(30)

    assert refused_while_down > 0  # the console was really away
    assert counters.sent == 90 and counters.dropped == 0 and counters.retried > 0
    assert stored_values() == [float(v) for v in range(90)]  # every one, exactly once


def test_it_drops_the_oldest_samples_once_the_buffer_is_full(server, agent):
    _, token = agent
    port = server.port
    asyncio.run_coroutine_threadsafe(server.stop(), server.loop).result(30)
    fake = FakeTime()
    again = EmbeddedApp(port=port, with_ticker=False)

    async def scenario():
        client = client_for(
            server,
            token,
            batch_size=4,
            buffer_limit=8,
            background=False,
            retry=RetryPolicy(attempts=2),
            clock=fake.clock,
            sleep=fake.sleep,
        )
        record_values(client, range(6))
        with pytest.raises(ConnectionFailed):
            await client.flush()  # cuts the batch 0-3, which stays whole
        record_values(client, range(6, 12))
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(again.start(), server.loop))
        await client.flush()
        await client.aclose()
        return client.counters

    try:
        counters = asyncio.run(scenario())
    finally:
        asyncio.run_coroutine_threadsafe(again.stop(), server.loop).result(30)

    assert counters.dropped == 4 and counters.sent == 8
    assert stored_values() == [0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]


def test_it_hands_over_pending_commands_and_acknowledges_them(server, agent):
    registered, token = agent
    command = queue_command(registered, "restart", reason="stuck", issued_by="test")

    async def scenario():
        async with client_for(server, token) as client:
            first = await client.heartbeat(
                registered.id, "running", current_task="task-7", progress=0.25
            )
            second = await client.heartbeat(
                registered.id, "idle", acks=[c.id for c in first.commands]
            )
        return first, second

    first, second = asyncio.run(scenario())

    assert [(c.id, c.kind, c.reason) for c in first.commands] == [(command.pk, "restart", "stuck")]
    assert first.state == "restarting" and first.heartbeat_interval_seconds == 5.0
    assert second.commands == () and second.state == "idle"
    assert AgentCommand.objects.get(pk=command.pk).status == CommandStatus.ACKED
    registered.refresh_from_db()
    assert registered.current_task == ""


def test_it_reads_the_catalog_as_an_operator(server, make_operator):
    _, operator_token = make_operator("viewer")

    async def scenario():
        async with client_for(server, operator_token) as client:
            return await client.catalog()

    specs = asyncio.run(scenario())

    assert [spec.name for spec in specs] == [spec.name for spec in catalog.ordered()]
    latency = next(spec for spec in specs if spec.name == METRIC)
    assert latency.labels == ("agent", "task_kind") and latency.producer == "agent"
    assert latency.max_series > 0
