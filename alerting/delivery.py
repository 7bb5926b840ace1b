"""Delivery: one Notification row per receiver, saved with the alert change and sent after commit.

A notification is claimed for one attempt at a time (SKIP LOCKED), retried with
exponential backoff and jitter on a transient error (never sooner than a
receiver's Retry-After), and moved to the dead letter on a permanent error or
after the last attempt; a dead notification goes on to its receiver's fallback
and can be re-sent. A receiver that keeps failing opens its circuit: its
notifications wait until the circuit may close instead of hammering it.
"""

import functools
import secrets
import time
from datetime import timedelta

import structlog
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from opentelemetry import context, trace

from alerting.models import (
    Alert,
    Notification,
    NotificationKind,
    NotificationStatus,
    Receiver,
)
from alerting.prometheus import NOTIFICATIONS
from alerting.routing import route
from alerting.transports import TransportError
from alerting.transports.http import redact
from omoi_console.foundation.events.tracing import current_trace_ids, in_context

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)

# How long one attempt holds its notification; longer than any receiver's timeout.
DELIVERY_LEASE = timedelta(seconds=60)
_jitter = secrets.SystemRandom()


class NotResendable(Exception):
    """Only a dead notification, not yet re-sent, can be re-sent."""


def is_silenced(alert: Alert) -> bool:
    """Whether the alert's firing notification was held back (a silence or an inhibiting
    alert; see ``alerting.suppression``): then only receivers that ask for it hear of
    its resolution."""
    return bool(alert.suppressed_by)


def receivers_for(alert: Alert) -> list[Receiver]:
    """Where an alert's notifications go: the routing tree's answer for its labels
    (``alerting.routing``), or every enabled ``default`` receiver when no route takes
    it; only receivers that have somewhere to deliver."""
    routed = route(alert.labels)
    candidates = (
        routed if routed is not None else list(Receiver.objects.filter(enabled=True, default=True))
    )
    chosen = []
    for receiver in candidates:
        if not receiver.enabled:
            continue
        try:
            transport = receiver.transport
        except ValidationError:
            log.warning("receiver.unknown_kind", receiver=receiver.name, kind=receiver.kind)
            continue
        if transport.addressable(receiver):
            chosen.append(receiver)
    return chosen


def wants(receiver: Receiver, alert: Alert, kind: str) -> bool:
    if kind != NotificationKind.RESOLVED:
        return True
    if not receiver.send_resolved:
        return False
    return receiver.send_resolved_when_silenced or not is_silenced(alert)


def notify(alert: Alert, kind: str) -> list[Notification]:
    """Save one Notification per receiver now; send them after the transaction commits."""
    created = []
    for receiver in receivers_for(alert):
        if wants(receiver, alert, kind):
            notification = create_notification(alert, kind, receiver)
            if notification is not None:
                created.append(notification)
    return created


def create_notification(
    alert: Alert, kind: str, receiver: Receiver, *, fallback_from: Notification | None = None
) -> Notification | None:
    """The receiver's notification of this alert state, or None if it already has one."""
    trace_id, _ = current_trace_ids()
    notification, new = Notification.objects.get_or_create(
        alert=alert,
        kind=kind,
        receiver=receiver,
        resent_from=None,
        defaults={
            "channel": receiver.kind,
            "target": receiver.transport.target(receiver),
            "trace_id": trace_id,
            "fallback_from": fallback_from,
        },
    )
    if not new:
        return None
    # On-commit callbacks run after the span that created the notification has
    # ended: the hand-off runs in its context, so the task's publish carries the
    # alert's trace to the worker (or, eager, runs inside it).
    transaction.on_commit(
        functools.partial(in_context, context.get_current(), enqueue_delivery, notification.pk),
        robust=True,
    )
    return notification


def enqueue_delivery(notification_id: int) -> None:
    from alerting.tasks import deliver_notification

    deliver_notification.delay(notification_id)


def claim_notification(notification_id: int) -> Notification | None:
    """Take a due notification for one attempt; None when someone else has it, it is
    done, or its receiver's circuit is open (then it waits until the circuit may close)."""
    now = timezone.now()
    with transaction.atomic():
        notification = (
            # of=self: locking the joined alert, rule and receiver too would make the
            # alert's other notifications skip one another until the next retry.
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("alert", "alert__rule", "receiver")
            .filter(
                pk=notification_id,
                status=NotificationStatus.PENDING,
                next_attempt_at__lte=now,
            )
            .first()
        )
        if notification is None:
            return None
        open_until = notification.receiver.circuit_open_until
        if open_until is not None and open_until > now:
            notification.next_attempt_at = open_until
            notification.save(update_fields=["next_attempt_at"])
            return None
        notification.attempts += 1
        notification.next_attempt_at = now + DELIVERY_LEASE
        notification.save(update_fields=["attempts", "next_attempt_at"])
    return notification


@tracer.start_as_current_span("notification.deliver")
def deliver_notification(notification_id: int) -> str | None:
    """One delivery attempt; returns the resulting status, or None if not due."""
    span = trace.get_current_span()
    span.set_attribute("notification.id", notification_id)
    notification = claim_notification(notification_id)
    if notification is None:
        return None
    receiver = notification.receiver
    span.set_attributes(
        {"notification.channel": notification.channel, "alert.id": notification.alert_id}
    )
    if not receiver.enabled:
        return record_delivery_failure(
            notification, TransportError("receiver is disabled", permanent=True)
        )
    started = time.monotonic()
    try:
        receiver.transport.send(notification)
    except TransportError as exc:
        return record_delivery_failure(notification, exc)
    except ValidationError:
        return record_delivery_failure(
            notification, TransportError(f"unknown kind {receiver.kind!r}", permanent=True)
        )
    except Exception as exc:
        # A bug in a transport must not leave the notification leased forever.
        log.exception("notification.transport_crashed", notification_id=notification.pk)
        return record_delivery_failure(notification, TransportError(type(exc).__name__))
    return record_delivery_success(notification, round((time.monotonic() - started) * 1000))


def record_delivery_success(notification: Notification, attempt_ms: int) -> str:
    now = timezone.now()
    notification.status = NotificationStatus.SENT
    NOTIFICATIONS.labels(notification.channel, NotificationStatus.SENT).inc()
    notification.sent_at = now
    notification.latency_ms = int((now - notification.created_at).total_seconds() * 1000)
    notification.last_error = ""
    notification.save(update_fields=["status", "sent_at", "latency_ms", "last_error"])
    # One success closes the circuit; written only when there is something to reset.
    closed = (
        Receiver.objects.filter(pk=notification.receiver_id)
        .filter(Q(consecutive_failures__gt=0) | Q(circuit_open_until__isnull=False))
        .update(consecutive_failures=0, circuit_open_until=None)
    )
    log.info(
        "notification.sent",
        notification_id=notification.pk,
        alert_id=notification.alert_id,
        receiver=notification.receiver.name,
        channel=notification.channel,
        latency_ms=notification.latency_ms,
        attempt_ms=attempt_ms,
        circuit_closed=bool(closed),
    )
    return notification.status


def backoff_seconds(attempts: int) -> float:
    """Exponential from NOTIFICATION_BACKOFF_SECONDS, capped, with jitter in its upper half
    so receivers that failed together are not retried together."""
    ceiling = min(
        settings.NOTIFICATION_BACKOFF_MAX_SECONDS,
        settings.NOTIFICATION_BACKOFF_SECONDS * 2 ** max(0, attempts - 1),
    )
    return _jitter.uniform(ceiling / 2, ceiling)


def record_delivery_failure(notification: Notification, exc: TransportError) -> str:
    now = timezone.now()
    receiver = notification.receiver
    error = redact(str(exc), receiver.transport_secrets())[:2000]
    gave_up = exc.permanent or notification.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS
    notification.last_error = error
    if gave_up:
        notification.status = NotificationStatus.DEAD
        notification.dead_at = now
        NOTIFICATIONS.labels(notification.channel, NotificationStatus.DEAD).inc()
    else:
        delay = backoff_seconds(notification.attempts)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        notification.next_attempt_at = now + timedelta(seconds=delay)
    notification.save(update_fields=["status", "last_error", "next_attempt_at", "dead_at"])
    log.warning(
        "notification.failed",
        notification_id=notification.pk,
        receiver=receiver.name,
        channel=notification.channel,
        attempts=notification.attempts,
        permanent=exc.permanent,
        dead=gave_up,
        error=error,
    )
    if not exc.permanent:
        # A permanent refusal means the receiver answered: it is not down.
        count_receiver_failure(receiver.pk, now)
    if gave_up:
        hand_to_fallback(notification)
    return notification.status


def count_receiver_failure(receiver_id: int, now) -> None:
    """One more consecutive failure; at the threshold the circuit opens for a while and
    the receiver's due notifications wait for it."""
    Receiver.objects.filter(pk=receiver_id).update(
        consecutive_failures=F("consecutive_failures") + 1
    )
    failures = Receiver.objects.filter(pk=receiver_id).values_list(
        "consecutive_failures", flat=True
    )
    if not failures or failures[0] < settings.RECEIVER_BREAKER_FAILURES:
        return
    open_until = now + timedelta(seconds=settings.RECEIVER_BREAKER_OPEN_SECONDS)
    Receiver.objects.filter(pk=receiver_id).update(circuit_open_until=open_until)
    # Only rows not leased by an attempt in flight (their next attempt is in the past).
    deferred = Notification.objects.filter(
        receiver_id=receiver_id, status=NotificationStatus.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=open_until)
    log.warning(
        "receiver.circuit_opened",
        receiver_id=receiver_id,
        failures=failures[0],
        open_until=open_until.isoformat(),
        deferred=deferred,
    )


def hand_to_fallback(notification: Notification) -> Notification | None:
    fallback = notification.receiver.fallback
    if fallback is None or not fallback.enabled:
        return None
    created = create_notification(
        notification.alert, notification.kind, fallback, fallback_from=notification
    )
    if created is not None:
        log.info(
            "notification.fallback",
            notification_id=notification.pk,
            receiver=notification.receiver.name,
            fallback=fallback.name,
            fallback_notification_id=created.pk,
        )
    return created


def resend_notification(notification_id: int) -> Notification:
    """A new attempt at a dead notification: a new row pointing at it, sent after commit."""
    with transaction.atomic():
        dead = (
            Notification.objects.select_for_update()
            .select_related("receiver")
            .get(pk=notification_id)
        )
        if dead.status != NotificationStatus.DEAD:
            raise NotResendable(f"notification {dead.pk} is {dead.status}, not dead")
        if Notification.objects.filter(resent_from=dead).exists():
            raise NotResendable(f"notification {dead.pk} was already re-sent")
        receiver = dead.receiver
        trace_id, _ = current_trace_ids()
        try:
            with transaction.atomic():
                again = Notification.objects.create(
                    alert_id=dead.alert_id,
                    kind=dead.kind,
                    receiver=receiver,
                    channel=receiver.kind,
                    target=receiver.transport.target(receiver),
                    trace_id=trace_id,
                    resent_from=dead,
                )
        except IntegrityError:
            raise NotResendable(f"notification {dead.pk} was already re-sent") from None
        transaction.on_commit(
            functools.partial(in_context, context.get_current(), enqueue_delivery, again.pk),
            robust=True,
        )
    log.info("notification.resent", notification_id=dead.pk, new_notification_id=again.pk)
    return again


def deliver_due_notifications(limit: int = 200) -> int:
    """Retry every pending notification whose next attempt is due."""
    due = (
        Notification.objects.filter(
            status=NotificationStatus.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for pk in list(due) if deliver_notification(pk) is not None)


def send_test(receiver: Receiver) -> tuple[bool, str, int]:
    """Send a made-up alert to ``receiver`` now, recording nothing.

    Returns (delivered, error, milliseconds). For trying a receiver's settings:
    it waits on the network, so it is never called inside a transaction.
    """
    from alerting.models import AlertRule, AlertStatus

    now = timezone.now()
    rule = AlertRule(name="test-notification", summary="Test notification", annotations={})
    alert = Alert(
        pk=0,
        rule=rule,
        fingerprint="0" * 64,
        labels={"alertname": "test-notification"},
        severity="info",
        summary=f"Test notification from Omoi Console to {receiver.name}",
        status=AlertStatus.FIRING,
        started_at=now,
        fired_at=now,
    )
    notification = Notification(
        alert=alert,
        kind=NotificationKind.FIRING,
        receiver=receiver,
        channel=receiver.kind,
        created_at=now,
    )
    started = time.monotonic()
    try:
        receiver.transport.send(notification)
    except TransportError as exc:
        error = redact(str(exc), receiver.transport_secrets())
        return False, error, round((time.monotonic() - started) * 1000)
    return True, "", round((time.monotonic() - started) * 1000)
