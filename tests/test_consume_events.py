"""The event-bus consumer against a real Redis: at least once, and never twice in the records."""

import json
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis
from django.core.management import call_command
from django.db import OperationalError

from monitoring import bus_events, samples, stream_consumer
from monitoring.models import Agent, AgentState, AgentTransition, MetricSample, MetricSeries
from monitoring.stream_consumer import ConsumerConfig, StreamConsumer

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

GROUP = "console"


@pytest.fixture
def bus(settings):
    client = redis.Redis.from_url(settings.REDIS_URL)
    stream = f"omoi-test-events-{uuid.uuid4().hex[:8]}"
    yield client, stream
    client.delete(stream, stream + stream_consumer.DEAD_LETTER_SUFFIX)
    client.close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(stream_consumer, "BACKOFF_SECONDS", 0)


def consumer(bus, name="c1", **overrides) -> StreamConsumer:
    client, stream = bus
    config = ConsumerConfig(stream=stream, group=GROUP, consumer=name, block_ms=10, **overrides)
    member = StreamConsumer(client, config)
    member.ensure_group()
    return member


def publish(bus, kind: str, agent_id: str, data, *, at_ms: int | None = None, **extra) -> str:
    client, stream = bus
    fields = {"type": kind, "agent_id": agent_id, "data": json.dumps(data), **extra}
    entry_id = client.xadd(stream, fields, id=f"{at_ms}-0" if at_ms else "*")
    return entry_id.decode()


def pending(bus) -> int:
    client, stream = bus
    return client.xpending(stream, GROUP)["pending"]


def dead_letters(bus) -> list[dict]:
    client, stream = bus
    entries = client.xrange(stream + stream_consumer.DEAD_LETTER_SUFFIX)
    return [{k.decode(): v.decode("utf-8", "replace") for k, v in f.items()} for _, f in entries]


def now_ms() -> int:
    return int(time.time() * 1000)


def queue_batch(value: float, offset: float = 0) -> dict:
    return {
        "samples": [
            {
                "name": "queue_depth",
                "labels": {"queue": "q"},
                "ts": time.time() - offset,
                "value": value,
            }
        ]
    }


def test_it_applies_each_kind_of_message_and_acknowledges_it(bus, seeded):
    publish(bus, "registry", "w2", {"role": "worker", "labels": {"team": "infra"}})
    publish(bus, "heartbeat", "w2", {"state": "running", "task_id": "t-1", "progress": 0.5})
    publish(bus, "metrics", "w2", queue_batch(3))
    publish(
        bus,
        "task",
        "w2",
        {"task_id": "t-1", "status": "succeeded", "kind": "review", "duration_seconds": 4.5},
    )
    member = consumer(bus)

    assert member.run_once() == 4
    assert member.run_once() == 0

    agent = Agent.objects.get(pk="w2")
    assert (agent.role, agent.labels, agent.state) == ("worker", {"team": "infra"}, AgentState.IDLE)
    assert (agent.current_task, agent.task_progress) == ("", None)
    series = {s.id: s for s in MetricSeries.objects.all()}
    assert sorted(
        (series[row.series_id].metric, series[row.series_id].labels, row.value)
        for row in MetricSample.objects.all()
    ) == [
        ("queue_depth", {"agent": "w2", "queue": "q"}, 3.0),
        ("task_latency_seconds", {"agent": "w2", "task_kind": "review"}, 4.5),
    ]
    assert pending(bus) == 0
    assert member.counts == {"registered": 1, "heartbeat": 1, "metrics": 1, "task+latency": 1}


def test_it_reclaims_what_a_dead_consumer_left_unacknowledged_and_stores_it_once(
    bus, registered_agent
):
    agent, _ = registered_agent
    publish(
        bus,
        "metrics",
        agent.id,
        {
            "samples": [
                {"name": "queue_depth", "labels": {"queue": "q"}, "ts": time.time() - n, "value": n}
                for n in range(5)
            ]
        },
    )
    dying = consumer(bus, "dying")
    # It applies the message (committed) and dies before acknowledging it.
    for entry_id, fields, _ in dying.read():
        assert dying.process(entry_id, fields) == "metrics"
    assert MetricSample.objects.count() == 5
    assert pending(bus) == 1

    survivor = consumer(bus, "survivor", reclaim_idle_ms=0)
    survivor.run_once()

    assert MetricSample.objects.count() == 5
    assert survivor.counts == {"reclaimed": 1, "duplicate": 1}
    assert pending(bus) == 0


def test_it_keeps_a_redelivered_older_heartbeat_from_moving_the_state_back(bus, registered_agent):
    agent, _ = registered_agent
    start = now_ms() - 5000
    publish(bus, "heartbeat", agent.id, {"state": "running", "task_id": "t-1"}, at_ms=start)
    publish(bus, "heartbeat", agent.id, {"state": "idle"}, at_ms=start + 1000)
    first = consumer(bus, "first")
    _, (newer_id, newer, _) = first.read()
    # The newer heartbeat is applied and acknowledged; the consumer dies holding the older.
    assert first.process(newer_id, newer) == "heartbeat"
    first.client.xack(first.config.stream, GROUP, newer_id)
    transitions = AgentTransition.objects.count()

    second = consumer(bus, "second", reclaim_idle_ms=0)
    second.run_once()

    agent.refresh_from_db()
    assert agent.state == AgentState.IDLE
    assert second.counts == {"reclaimed": 1, "stale": 1}
    assert agent.current_task == ""
    assert agent.last_heartbeat_at == datetime.fromtimestamp((start + 1000) / 1000, UTC)
    assert AgentTransition.objects.count() == transitions
    assert pending(bus) == 0


def test_it_dates_a_late_heartbeat_by_the_bus_so_its_deadline_is_not_pushed_back(
    bus, registered_agent
):
    agent, _ = registered_agent
    sent = now_ms() - 60_000
    publish(bus, "heartbeat", agent.id, {"state": "running"}, at_ms=sent)

    consumer(bus).run_once()

    agent.refresh_from_db()
    assert agent.last_heartbeat_at == datetime.fromtimestamp(sent / 1000, UTC)
    assert agent.overdue_at.timestamp() == pytest.approx(sent / 1000 + 5 + 2)


MALFORMED = [
    {"type": "gossip", "agent_id": "worker-01", "data": "{}"},
    {"type": "heartbeat", "data": json.dumps({"state": "idle"})},
    {"type": "heartbeat", "agent_id": "worker-01", "data": "{not json"},
    {"type": "heartbeat", "agent_id": "worker-01", "data": "[1]"},
    {"type": "heartbeat", "agent_id": "worker-01", "data": json.dumps({"state": "dancing"})},
    {"type": "heartbeat", "agent_id": "nobody", "data": json.dumps({"state": "idle"})},
    {
        "type": "metrics",
        "agent_id": "worker-01",
        "data": json.dumps({"samples": [{"name": "nope"}]}),
    },
    {"type": "metrics", "agent_id": "worker-01", "data": json.dumps({"rows": []})},
    {"type": "task", "agent_id": "worker-01", "data": json.dumps({"status": "pondering"})},
    {"type": "registry", "agent_id": "w3", "data": json.dumps({"role": "wizard"})},
    {"type": "registry", "agent_id": "Not An Id", "data": json.dumps({"role": "worker"})},
    {"type": "registry", "agent_id": "worker-01", "data": json.dumps({"labels": "x"})},
    {"type": "heartbeat", "agent_id": b"\xff\xfe", "data": "{}"},
    {"type": "heartbeat", "agent_id": "worker-01", "data": "{}", "extra": "x"},
]


def test_it_dead_letters_messages_that_can_never_be_applied(bus, registered_agent):
    client, stream = bus
    for fields in MALFORMED:
        client.xadd(stream, fields)
    member = consumer(bus, reclaim_idle_ms=0)

    member.run_once()
    member.run_once()

    letters = dead_letters(bus)
    assert len(letters) == len(MALFORMED)
    assert all(letter["error"] and letter["group"] == GROUP for letter in letters)
    assert "type must be one of" in letters[0]["error"]
    assert letters[5]["error"] == "unknown agent"
    assert member.counts == {"dead-lettered": len(MALFORMED)}
    assert pending(bus) == 0
    assert not MetricSample.objects.exists()
    assert not Agent.objects.exclude(pk="worker-01").exists()


def test_it_dead_letters_a_message_that_keeps_failing(bus, registered_agent, monkeypatch):
    agent, _ = registered_agent
    publish(bus, "heartbeat", agent.id, {"state": "idle"})

    def broken(message):
        raise RuntimeError("a bug")

    monkeypatch.setattr(bus_events, "apply", broken)
    member = consumer(bus, reclaim_idle_ms=0, max_deliveries=2)
    member.run_once()  # delivered once: fails, stays pending
    assert pending(bus) == 1
    member.run_once()  # reclaimed, delivered twice: fails again
    assert dead_letters(bus) == []
    member.run_once()  # a third delivery would exceed the bound

    assert [letter["error"] for letter in dead_letters(bus)] == ["not applied after 2 deliveries"]
    assert pending(bus) == 0


def test_it_leaves_messages_pending_while_the_database_is_away(bus, registered_agent, monkeypatch):
    agent, _ = registered_agent
    publish(bus, "metrics", agent.id, queue_batch(1))
    publish(bus, "metrics", agent.id, queue_batch(2, offset=1))
    real_ingest = samples.ingest

    def away(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(samples, "ingest", away)
    member = consumer(bus, reclaim_idle_ms=0)
    member.run_once()
    assert pending(bus) == 2
    assert dead_letters(bus) == []

    monkeypatch.setattr(samples, "ingest", real_ingest)
    member.run_once()

    assert MetricSample.objects.count() == 2
    assert pending(bus) == 0


def test_it_upserts_a_known_agent_from_registry_events(bus, registered_agent):
    agent, _ = registered_agent
    publish(bus, "registry", agent.id, {"role": "monitor", "labels": {"zone": "a"}})
    publish(bus, "registry", agent.id, {"role": "monitor", "labels": {"zone": "a"}})
    publish(bus, "registry", agent.id, {"heartbeat_interval": 10})
    member = consumer(bus)

    member.run_once()

    agent.refresh_from_db()
    assert (agent.role, agent.labels, agent.heartbeat_interval) == ("monitor", {"zone": "a"}, 10)
    assert member.counts == {"updated": 2, "unchanged": 1}


@pytest.mark.django_db(transaction=True)
def test_it_stops_on_sigterm_once_what_it_applied_is_acknowledged(bus, registered_agent):
    client, stream = bus
    agent, _ = registered_agent
    last = publish(bus, "metrics", agent.id, queue_batch(1))
    # Transactional tests on PostgreSQL leave the (unmanaged) samples table as it was.
    before = MetricSample.objects.count()

    def terminate_once_consumed():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            groups = client.xinfo_groups(stream) if client.exists(stream) else []
            done = [g for g in groups if g["last-delivered-id"].decode() == last]
            if done and done[0]["pending"] == 0:
                break
            time.sleep(0.01)  # watching another thread's progress
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate_once_consumed)
    watcher.start()
    with pytest.raises(SystemExit) as stopped:
        call_command("consume_events", "--stream", stream, "--group", GROUP, "--block-ms", "50")
    watcher.join(5)

    assert stopped.value.code == 143
    assert MetricSample.objects.count() == before + 1
    assert pending(bus) == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
