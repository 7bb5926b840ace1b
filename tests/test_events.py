import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from omoi_console.foundation.events import NewEvent, broadcast, bus, tasks
from omoi_console.foundation.events.registry import subscribe, unsubscribe
from omoi_console.models import Event, EventReceipt, EventStatus

LOST = "monitor.agent.heartbeat_lost"
PAYLOAD = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}


def lost(n: int, **extra) -> NewEvent:
    return NewEvent(LOST, {**PAYLOAD, "agent_id": f"worker-{n:02d}", **extra})


@pytest.fixture
def calls():
    """A handler on heartbeat_lost that records every event id it acts on."""
    seen = []
    lock = threading.Lock()

    def handler(event):
        with lock:
            seen.append(event.id)

    subscribe(LOST, handler_id="test.recorder")(handler)
    yield seen
    unsubscribe("test.recorder")


@pytest.fixture
def batches():
    """A batch handler on heartbeat_lost that records the ids of every batch it gets."""
    seen: list[list] = []
    subscribe(LOST, handler_id="test.batches", batch=True)(
        lambda events: seen.append([e.id for e in events])
    )
    yield seen
    unsubscribe("test.batches")


@pytest.fixture
def handed_over(monkeypatch):
    """Record every batch of ids handed to dispatch, instead of dispatching it."""
    batches: list[list] = []
    lock = threading.Lock()

    def record(event_ids):
        with lock:
            batches.append(list(event_ids))

    monkeypatch.setattr(bus, "enqueue_dispatch_many", record)
    return batches


@pytest.mark.django_db(transaction=True)
def test_it_never_delivers_an_event_published_in_a_rolled_back_transaction(calls):
    with pytest.raises(RuntimeError), transaction.atomic():
        bus.publish(LOST, PAYLOAD)
        raise RuntimeError("caller fails after publishing")

    assert not Event.objects.exists()
    assert bus.sweep() == []
    assert calls == []


@pytest.mark.django_db(transaction=True)
def test_it_delivers_after_commit(calls):
    with transaction.atomic():
        event = bus.publish(LOST, PAYLOAD)
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

    subscribe(LOST, handler_id="test.flaky")(flaky)
    try:
        event = bus.publish(LOST, PAYLOAD)
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
    event = bus.publish(LOST, PAYLOAD)
    # A redelivery, e.g. the broker handing the task to a second worker.
    Event.objects.filter(pk=event.pk).update(status=EventStatus.PENDING)
    bus.dispatch(event.id)

    assert calls == [event.id]


@pytest.mark.django_db(transaction=True)
def test_it_returns_the_first_event_for_a_repeated_key(calls):
    first = bus.publish(LOST, PAYLOAD, key="lost:1")
    second = bus.publish(LOST, PAYLOAD, key="lost:1")

    assert first.pk == second.pk
    assert Event.objects.filter(name=LOST).count() == 1
    assert calls == [first.id]


@pytest.mark.django_db
def test_it_refuses_unknown_names_and_incomplete_payloads():
    with pytest.raises(ValueError, match="unknown event"):
        bus.publish("monitor.agent.exploded", {})
    with pytest.raises(ValueError, match="lacks missed"):
        bus.publish(LOST, {"agent_id": "a", "role": "worker", "last_heartbeat_at": None})
    # One bad item refuses the whole batch: nothing of it is stored.
    with pytest.raises(ValueError, match="lacks last_heartbeat_at, missed"):
        bus.publish_many([lost(1), NewEvent(LOST, {"agent_id": "a", "role": "worker"})])
    assert not Event.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_redispatches_events_whose_dispatch_never_ran(calls, monkeypatch):
    # A broker outage at commit time: the hand-over fails, the outbox row stays.
    monkeypatch.setattr(bus, "enqueue_dispatch_many", lambda event_ids: None)
    event = bus.publish(LOST, PAYLOAD)
    monkeypatch.undo()
    assert calls == []

    with time_machine.travel(timezone.now() + timedelta(seconds=11)):
        assert bus.sweep() == [event.id]
    assert calls == [event.id]


@pytest.mark.django_db(transaction=True)
def test_it_publishes_a_batch_in_one_insert_and_hands_it_over_once(handed_over):
    taken = bus.publish(LOST, PAYLOAD, key="lost:taken")
    handed_over.clear()
    items = [lost(n, missed=n) for n in range(20)]
    items += [NewEvent(LOST, PAYLOAD, key="lost:taken"), lost(98), lost(99)]
    items[-2:] = [NewEvent(LOST, PAYLOAD, key="lost:twice")] * 2

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        events = bus.publish_many(items)
        assert handed_over == []  # not before the commit

    inserts = [q for q in queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1
    assert len(events) == 23
    assert events[20].pk == taken.pk  # a taken key returns the event holding it
    assert events[21].pk == events[22].pk  # a key repeated in the batch is one event
    assert Event.objects.count() == 22
    new = [e.pk for e in events[:20]] + [events[21].pk]
    assert handed_over == [new]  # one hand-over, only the new events
    assert [e.payload["missed"] for e in events[:20]] == list(range(20))


@pytest.mark.django_db
def test_it_hands_a_large_batch_to_one_task_per_dispatch_batch(monkeypatch, settings):
    sent = []
    monkeypatch.setattr(tasks.dispatch_events, "delay", sent.append)
    monkeypatch.setattr(bus, "DISPATCH_BATCH", 40)

    bus.enqueue_dispatch_many([f"id-{n}" for n in range(100)])

    assert [len(ids) for ids in sent] == [40, 40, 20]
    assert sent[0][0] == "id-0" and sent[2][-1] == "id-99"


@pytest.mark.django_db(transaction=True)
def test_it_gives_a_batch_handler_the_whole_batch_with_receipts_in_bulk(batches):
    events = bus.publish_many([lost(n) for n in range(5)])

    assert batches == [[e.pk for e in events]]
    assert EventReceipt.objects.filter(handler="test.batches").count() == 5
    assert Event.objects.filter(name=LOST, status=EventStatus.PROCESSED).count() == 5

    # A redelivery of the batch finds the receipts and acts on nothing.
    Event.objects.filter(name=LOST).update(status=EventStatus.PENDING)
    assert bus.dispatch_many([e.pk for e in events])
    assert len(batches) == 1


@pytest.mark.django_db(transaction=True)
def test_it_holds_back_only_the_event_a_batch_handler_fails_on():
    acted = []

    def picky(events):
        if any(e.payload["missed"] == 13 for e in events):
            raise ValueError("cannot handle 13")
        acted.extend(e.id for e in events)

    subscribe(LOST, handler_id="test.picky", batch=True)(picky)
    try:
        events = bus.publish_many([lost(n, missed=n) for n in range(10, 15)])
    finally:
        unsubscribe("test.picky")

    bad = events[3]
    assert sorted(acted) == sorted(e.pk for e in events if e.pk != bad.pk)
    statuses = dict(Event.objects.filter(name=LOST).values_list("id", "status"))
    assert statuses.pop(bad.pk) == EventStatus.PENDING
    assert set(statuses.values()) == {EventStatus.PROCESSED}
    bad.refresh_from_db()
    assert bad.attempts == 1 and "cannot handle 13" in bad.last_error
    assert not EventReceipt.objects.filter(event=bad, handler="test.picky").exists()


@pytest.mark.django_db(transaction=True)
def test_it_broadcasts_a_batch_as_one_message_outside_any_transaction(monkeypatch):
    sent = []

    def send(message):
        sent.append((message, connection.in_atomic_block))

    monkeypatch.setattr(broadcast, "send_to_console", send)
    events = bus.publish_many([lost(n) for n in range(30)])

    # Alerting fires an alert per lost heartbeat: those events come in their own messages.
    ours = [(m, t) for m, t in sent if str(events[0].pk) in str(m)]
    assert len(ours) == 1
    message, in_transaction = ours[0]
    assert in_transaction is False  # nothing waits on the channel layer inside a transaction
    assert message["type"] == "events.message"
    assert [e["id"] for e in message["events"]] == [str(e.pk) for e in events]
    receipts = EventReceipt.objects.filter(handler="console.broadcast", event__name=LOST)
    assert receipts.count() == 30


@pytest.mark.django_db(transaction=True)
def test_it_sweeps_due_events_in_one_batch(handed_over):
    events = bus.publish_many([lost(n) for n in range(60)])
    handed_over.clear()
    Event.objects.update(dispatch_after=timezone.now() - timedelta(seconds=1))

    claimed = bus.sweep()

    assert len(handed_over) == 1
    assert sorted(handed_over[0]) == sorted(claimed) == sorted(e.pk for e in events)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_never_claims_one_event_twice_with_two_sweepers_at_once(handed_over):
    events = bus.publish_many([lost(n) for n in range(60)])
    handed_over.clear()
    Event.objects.update(dispatch_after=timezone.now() - timedelta(seconds=1))

    start = threading.Barrier(2)
    first_holds, second_done = threading.Event(), threading.Event()
    outcome = {}

    def first():
        # Claims half and keeps its claim transaction open until the second has tried.
        try:
            start.wait()
            with transaction.atomic():
                outcome["first"] = bus.claim_due_events(limit=30)
                first_holds.set()
                outcome["second_done_meanwhile"] = second_done.wait(10)
        finally:
            connections.close_all()

    def second():
        try:
            start.wait()
            assert first_holds.wait(10)
            outcome["second"] = bus.sweep(limit=60)
            second_done.set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # The second sweeper neither waited for the first one's locks nor took its events.
    assert outcome["second_done_meanwhile"], "the second sweeper waited for the first"
    deliveries = Counter(outcome["first"] + [i for batch in handed_over for i in batch])
    assert deliveries == Counter({e.pk: 1 for e in events})
    assert len(outcome["first"]) == 30 and sorted(outcome["second"]) == sorted(
        i for i in deliveries if i not in outcome["first"]
    )


def other_backend_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_it_acts_once_when_two_workers_dispatch_one_event_at_once(batch, monkeypatch):
    monkeypatch.setattr(bus, "enqueue_dispatch_many", lambda event_ids: None)
    event = bus.publish(LOST, PAYLOAD)
    acted = []
    lock = threading.Lock()

    def handler(arg):
        with lock:
            acted.append(threading.current_thread().name)
        # Stay inside the receipt's transaction until the other dispatcher has
        # either come in here too or is blocked behind our receipt.
        deadline = timezone.now() + timedelta(seconds=10)
        while timezone.now() < deadline and len(acted) < 2 and not other_backend_waits_on_a_lock():
            time.sleep(0.01)  # polling another thread's progress, not waiting out a clock

    subscribe(LOST, handler_id="test.once", batch=batch)(handler)
    start = threading.Barrier(2)

    def worker():
        try:
            start.wait()
            bus.dispatch(event.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, name=f"worker-{n}") for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        unsubscribe("test.once")

    assert len(acted) == 1
    assert EventReceipt.objects.filter(event=event, handler="test.once").count() == 1
    event.refresh_from_db()
    assert event.status == EventStatus.PROCESSED


@pytest.mark.django_db(transaction=True)
def test_it_commits_a_large_batch_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(bus, "DELIVERY_CHUNK", 2)
    sent = []
    monkeypatch.setattr(broadcast, "send_to_console", sent.append)
    seen = []

    def chunk_handler(events):
        earlier = [i for batch in seen for i in batch]
        statuses = set(Event.objects.filter(pk__in=earlier).values_list("status", flat=True))
        seen.append([e.pk for e in events])
        # What earlier chunks did is committed and settled already.
        assert statuses <= {EventStatus.PROCESSED}

    subscribe(LOST, handler_id="test.chunks", batch=True)(chunk_handler)
    try:
        events = bus.publish_many([lost(n) for n in range(5)])
    finally:
        unsubscribe("test.chunks")

    assert [len(batch) for batch in seen] == [2, 2, 1]
    assert [i for batch in seen for i in batch] == [e.pk for e in events]
    ours = [m for m in sent if m["type"] == "events.message" and len(m["events"]) == 5]
    assert len(ours) == 1  # the console still gets the batch as one message


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_sweeper_off_a_batch_that_is_still_being_handled(monkeypatch, settings):
    monkeypatch.setattr(bus, "DELIVERY_CHUNK", 1)
    settings.EVENT_REDISPATCH_AFTER_SECONDS = 10
    due_meanwhile = []

    with time_machine.travel(timezone.now(), tick=False) as clock:

        def slow(events):
            clock.shift(6)  # each chunk takes longer than half the redispatch delay
            ids = [e.pk for e in batch]
            due = Event.objects.filter(pk__in=ids, dispatch_after__lte=timezone.now())
            due_meanwhile.append(due.filter(status=EventStatus.PENDING).count())

        subscribe(LOST, handler_id="test.slow", batch=True)(slow)
        try:
            monkeypatch.setattr(bus, "enqueue_dispatch_many", lambda event_ids: None)
            batch = bus.publish_many([lost(n) for n in range(4)])
            bus.dispatch_many([e.pk for e in batch])
        finally:
            unsubscribe("test.slow")

    assert due_meanwhile == [0, 0, 0, 0]
    assert set(Event.objects.filter(name=LOST).values_list("status", flat=True)) == {
        EventStatus.PROCESSED
    }
