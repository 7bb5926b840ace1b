"""Publish, dispatch and sweep: the durable outbox bus.

``publish`` and ``publish_many`` write Event rows in the caller's transaction;
after commit the new events are handed to Celery as one task (run inline when
Celery is eager). ``dispatch_many`` runs every subscribed handler on the events
of a batch with receipt rows, so a handler acts at most once per event even
when delivery repeats, and a handler that raises leaves its events pending for
the sweeper to retry with backoff.
"""

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from omoi_console.foundation.events import background
from omoi_console.foundation.events.catalog import check_payload
from omoi_console.foundation.events.registry import Subscription, subscriptions
from omoi_console.foundation.events.tracing import current_trace_ids, event_trace
from omoi_console.models import Event, EventReceipt, EventStatus

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300
SWEEP_BATCH = 1000
# Events handed to one dispatch task: a mass outage is a few tasks, not thousands.
DISPATCH_BATCH = 1000
# Events per transaction of a handler: its work becomes visible a chunk at a time.
DELIVERY_CHUNK = 50


@dataclass(frozen=True)
class NewEvent:
    """One event for ``publish_many``; ``trace`` is (trace_id, span_id), else the current span's."""

    name: str
    payload: dict
    key: str | None = None
    trace: tuple[str, str] | None = None


def publish(name: str, payload: dict, *, key: str | None = None) -> Event:
    """Record an event in the current transaction; dispatch it after commit.

    ``key`` de-duplicates: publishing the same key twice returns the first event.
    """
    return publish_many([NewEvent(name, payload, key)])[0]


def publish_many(new_events: Iterable[NewEvent]) -> list[Event]:
    """Record many events with one INSERT in the current transaction; dispatch them after commit.

    Returns one Event per item, in order. An item whose ``key`` is already taken
    (before or earlier in the same batch) gets the existing event and is not
    dispatched again. After commit the new events go to Celery as one task per
    ``DISPATCH_BATCH``.
    """
    new_events = list(new_events)
    for item in new_events:
        check_payload(item.name, item.payload)
    if not new_events:
        return []
    current = current_trace_ids()
    now = timezone.now()
    rows = [
        Event(
            name=item.name,
            payload=item.payload,
            occurred_at=now,
            trace_id=(item.trace or current)[0],
            span_id=(item.trace or current)[1],
            key=item.key,
            dispatch_after=now + redispatch_delay(),
        )
        for item in new_events
    ]
    # No savepoint: an error here fails the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
        # A taken key is skipped by the database, so concurrent publishers of one
        # key never fail: each reads back which row holds the key.
        Event.objects.bulk_create(rows, ignore_conflicts=True)
        rows, fresh = _first_of_each_key(rows)
    if fresh:
        _log_published(rows, fresh)
        # robust: a broker outage must not turn the caller's committed work into an
        # error; the sweeper dispatches whatever this failed to hand over.
        transaction.on_commit(functools.partial(enqueue_dispatch_many, fresh), robust=True)
    return rows


def _first_of_each_key(rows: list[Event]) -> tuple[list[Event], list[UUID]]:
    """Swap every row that lost its key to an earlier event for that event; list the new ids."""
    keys = {row.key for row in rows if row.key is not None}
    holders = dict(Event.objects.filter(key__in=keys).values_list("key", "id")) if keys else {}
    lost = {holders[row.key] for row in rows if row.key is not None and holders[row.key] != row.pk}
    existing = Event.objects.in_bulk(lost) if lost else {}
    kept, fresh = [], []
    for row in rows:
        holder = holders.get(row.key, row.pk) if row.key is not None else row.pk
        if holder == row.pk:
            kept.append(row)
            fresh.append(row.pk)
        else:
            kept.append(existing[holder])
    return kept, fresh


def _log_published(rows: list[Event], fresh: list[UUID]) -> None:
    if len(fresh) == 1:
        event = next(row for row in rows if row.pk == fresh[0])
        log.info("event.published", event_id=str(event.pk), event_name=event.name)
        return
    new = set(fresh)
    names = Counter(row.name for row in rows if row.pk in new)
    log.info("event.published_many", count=len(fresh), names=dict(names))


def redispatch_delay() -> timedelta:
    return timedelta(seconds=settings.EVENT_REDISPATCH_AFTER_SECONDS)


def dedup_window() -> timedelta:
    """How long an event's ``key`` must stay taken for deduplication to hold.

    A key is published again only when work is repeated, and work is repeated
    only while the event that caused it is pending: at most EVENT_MAX_ATTEMPTS
    attempts, each after a backoff of at most MAX_BACKOFF_SECONDS and a
    redispatch delay. Twice that leaves room for the sweeper's period and slow
    handlers. An event pruned sooner would let a repeated publish through as
    new, so retention never goes below this.
    """
    per_attempt = MAX_BACKOFF_SECONDS + settings.EVENT_REDISPATCH_AFTER_SECONDS
    return 2 * settings.EVENT_MAX_ATTEMPTS * timedelta(seconds=per_attempt)


def enqueue_dispatch_many(event_ids: Sequence[UUID | str]) -> None:
    """Hand events to Celery: one ``dispatch_events`` task per ``DISPATCH_BATCH`` ids.

    Eager and in the background (``background.dispatch_in_background``), events
    handed over while the background thread is busy are dispatched together.
    """
    from omoi_console.foundation.events.tasks import dispatch_events

    ids = [str(event_id) for event_id in event_ids]
    if background.wanted() and dispatch_events.app.conf.task_always_eager:
        # Joined by what other commits hand over while the thread is busy.
        background.submit_batch(dispatch_events.delay, ids, limit=DISPATCH_BATCH)
        return
    for start in range(0, len(ids), DISPATCH_BATCH):
        dispatch_events.delay(ids[start : start + DISPATCH_BATCH])


def dispatch(event_id: UUID | str) -> bool:
    """Run every handler of one pending event; return True when all of them succeeded."""
    return dispatch_many([event_id])


def dispatch_many(event_ids: Sequence[UUID | str]) -> bool:
    """Run every handler on the pending events among ``event_ids``; True when all succeeded.

    Handlers that run outside a transaction (the console broadcast) get the whole
    batch at once. The others run on it in chunks of ``DELIVERY_CHUNK`` events, each
    handler in registration order on every event of the chunk it subscribes to,
    so the first alerts of a mass outage commit (and its first remediations start)
    without waiting for the last. Each chunk is settled as soon as it is done: an
    event whose handlers all succeeded is marked processed, one with a failure
    stays pending with its error and a backoff. While a long batch runs, its
    events' ``dispatch_after`` is pushed forward, so the sweeper leaves them alone.
    """
    order = {str(event_id): n for n, event_id in enumerate(event_ids)}
    events = sorted(
        Event.objects.filter(pk__in=list(event_ids), status=EventStatus.PENDING),
        key=lambda event: order[str(event.pk)],
    )
    if not events:
        return True
    handlers = subscriptions()
    failures: dict[UUID, list[str]] = {}
    _run_handlers([s for s in handlers if not s.atomic], events, failures)
    lease = Lease()
    for start in range(0, len(events), DELIVERY_CHUNK):
        lease.renew_if_due(events[start:])
        chunk = events[start : start + DELIVERY_CHUNK]
        _run_handlers([s for s in handlers if s.atomic], chunk, failures)
        settle(chunk, failures)
    return not failures


def _run_handlers(handlers: list[Subscription], events: list[Event], failures: dict) -> None:
    for subscription in handlers:
        mine = [event for event in events if subscription.wants(event.name)]
        for event, exc in deliver(subscription, mine) if mine else ():
            failures.setdefault(event.pk, []).append(f"{subscription.handler_id}: {exc!r}")


def settle(events: list[Event], failures: dict[UUID, list[str]]) -> None:
    """Mark the events processed, or record why they failed."""
    done = [event.pk for event in events if event.pk not in failures]
    if done:
        Event.objects.filter(pk__in=done, status=EventStatus.PENDING).update(
            status=EventStatus.PROCESSED, processed_at=timezone.now(), last_error=""
        )
    for event in events:
        if event.pk in failures:
            record_failure(event, "; ".join(failures[event.pk]))


class Lease:
    """Keeps the sweeper off a batch that is still being worked on.

    Renewed once half the redispatch delay has passed, so a batch done within
    it costs no statement; a dispatcher that dies stops renewing, and its
    events fall due again one delay later.
    """

    def __init__(self):
        self.renewed_at = timezone.now()

    def renew_if_due(self, events: list[Event]) -> None:
        now = timezone.now()
        if now - self.renewed_at < redispatch_delay() / 2:
            return
        Event.objects.filter(
            pk__in=[event.pk for event in events], status=EventStatus.PENDING
        ).update(dispatch_after=now + redispatch_delay())
        self.renewed_at = now


def deliver(subscription: Subscription, events: list[Event]) -> list[tuple[Event, Exception]]:
    """Run one handler on a batch; return the events it failed on.

    A failed batch is retried one event at a time, so one bad event holds back
    only itself. The same retry settles a race with a concurrent dispatcher,
    whose receipt makes our insert fail (IntegrityError): on retry it is seen.
    """
    try:
        _deliver_batch(subscription, events)
        return []
    except Exception as exc:
        if len(events) == 1 and not isinstance(exc, IntegrityError):
            _log_handler_failure(subscription, events[0])
            return [(events[0], exc)]
    failed = []
    for event in events:
        try:
            _deliver_batch(subscription, [event])
        except Exception as exc:
            _log_handler_failure(subscription, event)
            failed.append((event, exc))
    return failed


def _deliver_batch(subscription: Subscription, events: list[Event]) -> None:
    if not subscription.atomic:
        # At least once: the receipts follow the work, so a crash in between repeats it.
        fresh = _unreceipted(subscription, events)
        if fresh:
            _call(subscription, fresh)
            _write_receipts(subscription, fresh, ignore_conflicts=True)
        return
    with transaction.atomic():
        fresh = _unreceipted(subscription, events)
        if fresh:
            # Receipts first: a concurrent dispatcher of the same events waits on
            # them, then fails instead of acting a second time.
            _write_receipts(subscription, fresh)
            _call(subscription, fresh)


def _unreceipted(subscription: Subscription, events: list[Event]) -> list[Event]:
    done = set(
        EventReceipt.objects.filter(
            handler=subscription.handler_id, event_id__in=[event.pk for event in events]
        ).values_list("event_id", flat=True)
    )
    return [event for event in events if event.pk not in done]


def _write_receipts(
    subscription: Subscription, events: list[Event], *, ignore_conflicts: bool = False
) -> None:
    EventReceipt.objects.bulk_create(
        [EventReceipt(event_id=event.pk, handler=subscription.handler_id) for event in events],
        ignore_conflicts=ignore_conflicts,
    )


def _call(subscription: Subscription, events: list[Event]) -> None:
    if subscription.batch:
        subscription.func(events)
        return
    for event in events:
        with event_trace(event):
            subscription.func(event)


def _log_handler_failure(subscription: Subscription, event: Event) -> None:
    log.exception(
        "event.handler_failed",
        event_id=str(event.pk),
        event_name=event.name,
        handler=subscription.handler_id,
    )


def record_failure(event: Event, error: str) -> None:
    attempts = event.attempts + 1
    gave_up = attempts >= settings.EVENT_MAX_ATTEMPTS
    backoff = min(2**attempts, MAX_BACKOFF_SECONDS)
    # Only while pending: a concurrent dispatcher may have finished the event meanwhile.
    Event.objects.filter(pk=event.pk, status=EventStatus.PENDING).update(
        attempts=attempts,
        last_error=error[:4000],
        status=EventStatus.DEAD if gave_up else EventStatus.PENDING,
        dispatch_after=timezone.now() + timedelta(seconds=backoff),
    )
    if gave_up:
        log.error("event.dead", event_id=str(event.pk), event_name=event.name, attempts=attempts)


def claim_due_events(limit: int = SWEEP_BATCH) -> list[UUID]:
    """Claim pending events whose dispatch time has passed.

    The claim moves ``dispatch_after`` a full redispatch delay ahead under
    ``FOR UPDATE SKIP LOCKED``: a concurrent sweeper neither waits for this
    claim nor takes its events, it claims others.
    """
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(status=EventStatus.PENDING, dispatch_after__lte=now)
            .order_by("dispatch_after")
            .values_list("id", flat=True)[:limit]
        )
        if ids:
            Event.objects.filter(pk__in=ids).update(dispatch_after=now + redispatch_delay())
    return ids


def sweep(limit: int = SWEEP_BATCH) -> list[UUID]:
    """Re-dispatch what was not processed in time, in batches; return the claimed ids."""
    ids = claim_due_events(limit)
    if ids:
        log.info("event.redispatched", count=len(ids), first_event_id=str(ids[0]))
        enqueue_dispatch_many(ids)
    return ids
