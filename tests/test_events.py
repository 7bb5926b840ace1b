import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connections, transaction
from django.utils import timezone

from omoi_console.foundation.events import bus
from omoi_console.foundation.events.registry import subscribe, unsubscribe
from omoi_console.models import Event, EventReceipt, EventStatus

PAYLOAD = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}


@pytest.fixture
def calls():
    """A handler on heartbeat_lost that records every event id it acts on."""
    seen = []
    lock = threading.Lock()

    def handler(event):
        with lock:
            seen.append(event.id)

    subscribe("monitor.agent.heartbeat_lost", handler_id="test.recorder")(handler)
    yield seen
    unsubscribe("test.recorder")


@pytest.mark.django_db(transaction=True)
def test_it_never_delivers_an_event_published_in_a_rolled_back_transaction(calls):
    with pytest.raises(RuntimeError), transaction.atomic():
        bus.publish("monitor.agent.heartbeat_lost", PAYLOAD)
        raise RuntimeError("caller fails after publishing")

    assert not Event.objects.exists()
    assert bus.sweep() == []
    assert calls == []


@pytest.mark.django_db(transaction=True)
def test_it_delivers_after_commit(calls):
    with transaction.atomic():
        event = bus.publish("monitor.agent.heartbeat_lost", PAYLOAD)
        assert calls == []  # not before the commit

    assert calls == [event.id]
    event.refresh_from_db()
    assert event.status == EventStatus.PROCESSED


@pytest.mark.django_db(transaction=True)
def test_it_retries_a_failing_handler_without_losing_the_event():
    attempts = []

    def flaky(event):
        attempts.append(event.id)
        if len(attempts) == 1:
            raise ConnectionError("downstream is down")

    subscribe("monitor.agent.heartbeat_lost", handler_id="test.flaky")(flaky)
    try:
        event = bus.publish("monitor.agent.heartbeat_lost", PAYLOAD)
        event.refresh_from_db()
        assert event.status == EventStatus.PENDING
        assert event.attempts == 1
        assert "downstream is down" in event.last_error
        assert not EventReceipt.objects.filter(event=event, handler="test.flaky").exists()

        assert bus.sweep() == []  # backoff: not due yet
        with time_machine.travel(timezone.now() + timedelta(seconds=30)):
            assert bus.sweep() == [event.id]

        event.refresh_from_db()
        assert event.status == EventStatus.PROCESSED
        assert attempts == [event.id, event.id]
        # Other handlers of the event acted once, on the first delivery.
        assert EventReceipt.objects.filter(event=event, handler="console.broadcast").count() == 1
    finally:
        unsubscribe("test.flaky")


@pytest.mark.django_db(transaction=True)
def test_it_does_not_act_twice_when_an_event_is_dispatched_twice(calls):
    event = bus.publish("monitor.agent.heartbeat_lost", PAYLOAD)
    # A redelivery, e.g. the broker handing the task to a second worker.
    Event.objects.filter(pk=event.pk).update(status=EventStatus.PENDING)
    bus.dispatch(event.id)

    assert calls == [event.id]


@pytest.mark.django_db(transaction=True)
def test_it_returns_the_first_event_for_a_repeated_key(calls):
    first = bus.publish("monitor.agent.heartbeat_lost", PAYLOAD, key="lost:1")
    second = bus.publish("monitor.agent.heartbeat_lost", PAYLOAD, key="lost:1")

    assert first.pk == second.pk
    assert Event.objects.filter(name="monitor.agent.heartbeat_lost").count() == 1
    assert calls == [first.id]


@pytest.mark.django_db
def test_it_refuses_unknown_names_and_incomplete_payloads():
    with pytest.raises(ValueError, match="unknown event"):
        bus.publish("monitor.agent.exploded", {})
    with pytest.raises(ValueError, match="lacks missed"):
        bus.publish(
            "monitor.agent.heartbeat_lost",
            {"agent_id": "a", "role": "worker", "last_heartbeat_at": None},
        )


@pytest.mark.django_db(transaction=True)
def test_it_redispatches_events_whose_dispatch_never_ran(calls, monkeypatch):
    # A broker outage at commit time: the hand-over fails, the outbox row stays.
    monkeypatch.setattr(bus, "enqueue_dispatch_many", lambda event_ids: None)
    event = bus.publish("monitor.agent.heartbeat_lost", PAYLOAD)
    monkeypatch.undo()
    assert calls == []

    with time_machine.travel(timezone.now() + timedelta(seconds=11)):
        assert bus.sweep() == [event.id]
    assert calls == [event.id]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_never_delivers_one_event_twice_with_two_sweepers_at_once(calls, monkeypatch):
    monkeypatch.setattr(bus, "enqueue_dispatch_many", lambda event_ids: None)
    events = [bus.publish("monitor.agent.heartbeat_lost", PAYLOAD) for _ in range(60)]
    monkeypatch.undo()
    Event.objects.update(dispatch_after=timezone.now() - timedelta(seconds=1))

    start = threading.Barrier(2)
    claimed: list[list] = [[], []]

    def sweeper(index):
        try:
            start.wait()
            claimed[index] = bus.sweep(limit=60)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweeper, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(calls) == sorted(e.id for e in events)
    lost = Event.objects.filter(name="monitor.agent.heartbeat_lost")
    assert lost.filter(status=EventStatus.PROCESSED).count() == 60
