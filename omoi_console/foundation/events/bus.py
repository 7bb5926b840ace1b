"""Publish, dispatch and sweep: the durable outbox bus.

``publish`` writes the Event row in the caller's transaction; after commit the
event is handed to Celery (run inline when Celery is eager). ``dispatch`` runs
every subscribed handler inside its own transaction with a receipt row, so a
handler acts at most once per event even when delivery repeats, and a handler
that raises leaves the event pending for the sweeper to retry with backoff.
"""

import functools
from datetime import timedelta
from uuid import UUID

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from omoi_console.foundation.events.catalog import check_payload
from omoi_console.foundation.events.registry import Subscription, subscribers_for
from omoi_console.foundation.events.tracing import continued_trace, current_trace_ids
from omoi_console.models import Event, EventReceipt, EventStatus

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300
SWEEP_BATCH = 200


def publish(name: str, payload: dict, *, key: str | None = None) -> Event:
    """Record an event in the current transaction; dispatch it after commit.

    ``key`` de-duplicates: publishing the same key twice returns the first event.
    """
    check_payload(name, payload)
    if key is not None:
        existing = Event.objects.filter(key=key).first()
        if existing is not None:
            return existing
    trace_id, span_id = current_trace_ids()
    now = timezone.now()
    try:
        with transaction.atomic():
            event = Event.objects.create(
                name=name,
                payload=payload,
                occurred_at=now,
                trace_id=trace_id,
                span_id=span_id,
                key=key,
                dispatch_after=now + redispatch_delay(),
            )
    except IntegrityError:
        if key is None:
            raise
        return Event.objects.get(key=key)
    log.info("event.published", event_id=str(event.id), event_name=name)
    # robust: a broker outage must not turn the caller's committed work into an
    # error; the sweeper dispatches whatever this failed to hand over.
    transaction.on_commit(functools.partial(enqueue_dispatch, event.id), robust=True)
    return event


def redispatch_delay() -> timedelta:
    return timedelta(seconds=settings.EVENT_REDISPATCH_AFTER_SECONDS)


def enqueue_dispatch(event_id: UUID) -> None:
    from omoi_console.foundation.events.tasks import dispatch_event

    dispatch_event.delay(str(event_id))


def dispatch(event_id: UUID | str) -> bool:
    """Run every handler of a pending event; return True when all of them succeeded."""
    event = Event.objects.filter(pk=event_id, status=EventStatus.PENDING).first()
    if event is None:
        return True
    failures = []
    with continued_trace(
        f"event {event.name}", event.trace_id, event.span_id, event_id=str(event.id)
    ):
        for subscription in subscribers_for(event.name):
            try:
                run_handler(subscription, event)
            except Exception as exc:
                log.exception(
                    "event.handler_failed",
                    event_id=str(event.id),
                    event_name=event.name,
                    handler=subscription.handler_id,
                )
                failures.append(f"{subscription.handler_id}: {exc!r}")
    if failures:
        record_failure(event, "; ".join(failures))
        return False
    Event.objects.filter(pk=event.pk).update(
        status=EventStatus.PROCESSED, processed_at=timezone.now(), last_error=""
    )
    return True


def run_handler(subscription: Subscription, event: Event) -> None:
    with transaction.atomic():
        _, created = EventReceipt.objects.get_or_create(
            event_id=event.pk, handler=subscription.handler_id
        )
        if created:
            subscription.func(event)


def record_failure(event: Event, error: str) -> None:
    attempts = event.attempts + 1
    gave_up = attempts >= settings.EVENT_MAX_ATTEMPTS
    backoff = min(2**attempts, MAX_BACKOFF_SECONDS)
    Event.objects.filter(pk=event.pk).update(
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
    ``FOR UPDATE SKIP LOCKED``, so concurrent sweepers never claim one event twice.
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
    """Re-dispatch what was not processed in time; return the claimed ids."""
    ids = claim_due_events(limit)
    for event_id in ids:
        log.info("event.redispatched", event_id=str(event_id))
        enqueue_dispatch(event_id)
    return ids
