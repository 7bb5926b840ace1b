"""Delivery: one Notification row per channel, saved with the alert change and sent after commit.

A notification is claimed for one attempt at a time (SKIP LOCKED), retried with
backoff on a transient error and given up on a permanent one or after the last
attempt.
"""

import functools
from datetime import timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from alerting.models import Alert, Channel, Notification, NotificationStatus
from alerting.transports import TRANSPORTS, TransportError
from omoi_console.foundation.events.tracing import current_trace_ids

log = structlog.get_logger(__name__)

DELIVERY_LEASE = timedelta(seconds=60)
MAX_BACKOFF_SECONDS = 600


def channel_targets() -> dict[str, str]:
    """Where each channel delivers. Routing trees replace this single receiver."""
    targets = {Channel.CONSOLE: "console"}
    if settings.ALERT_EMAIL_RECIPIENTS:
        targets[Channel.EMAIL] = ",".join(settings.ALERT_EMAIL_RECIPIENTS)
    return targets


def notify(alert: Alert, kind: str) -> list[Notification]:
    """Save one Notification per channel now; send them after the transaction commits."""
    trace_id, _ = current_trace_ids()
    created = []
    for channel, target in channel_targets().items():
        notification, new = Notification.objects.get_or_create(
            alert=alert,
            kind=kind,
            channel=channel,
            defaults={"target": target, "trace_id": trace_id},
        )
        if new:
            created.append(notification)
            transaction.on_commit(functools.partial(enqueue_delivery, notification.pk), robust=True)
    return created


def enqueue_delivery(notification_id: int) -> None:
    from alerting.tasks import deliver_notification

    deliver_notification.delay(notification_id)


def claim_notification(notification_id: int) -> Notification | None:
    """Take a due notification for one attempt; None when someone else has it or it is done."""
    now = timezone.now()
    with transaction.atomic():
        notification = (
            # of=self: locking the joined alert and rule too would make the
            # alert's other notifications skip one another until the next retry.
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("alert", "alert__rule")
            .filter(
                pk=notification_id,
                status=NotificationStatus.PENDING,
                next_attempt_at__lte=now,
            )
            .first()
        )
        if notification is None:
            return None
        notification.attempts += 1
        notification.next_attempt_at = now + DELIVERY_LEASE
        notification.save(update_fields=["attempts", "next_attempt_at"])
    return notification


def deliver_notification(notification_id: int) -> str | None:
    """One delivery attempt; returns the resulting status, or None if not due."""
    notification = claim_notification(notification_id)
    if notification is None:
        return None
    transport = TRANSPORTS[notification.channel]
    try:
        transport.send(notification)
    except TransportError as exc:
        return record_delivery_failure(notification, str(exc), permanent=exc.permanent)
    now = timezone.now()
    notification.status = NotificationStatus.SENT
    notification.sent_at = now
    notification.latency_ms = int((now - notification.created_at).total_seconds() * 1000)
    notification.last_error = ""
    notification.save(update_fields=["status", "sent_at", "latency_ms", "last_error"])
    log.info(
        "notification.sent",
        notification_id=notification.pk,
        alert_id=notification.alert_id,
        channel=notification.channel,
        latency_ms=notification.latency_ms,
    )
    return notification.status


def record_delivery_failure(notification: Notification, error: str, *, permanent: bool) -> str:
    gave_up = permanent or notification.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS
    notification.last_error = error[:2000]
    if gave_up:
        notification.status = NotificationStatus.FAILED
    else:
        backoff = min(2**notification.attempts, MAX_BACKOFF_SECONDS)
        notification.next_attempt_at = timezone.now() + timedelta(seconds=backoff)
    notification.save(update_fields=["status", "last_error", "next_attempt_at"])
    log.warning(
        "notification.failed",
        notification_id=notification.pk,
        channel=notification.channel,
        attempts=notification.attempts,
        gave_up=gave_up,
        error=error,
    )
    return notification.status


def deliver_due_notifications(limit: int = 200) -> int:
    """Retry every pending notification whose next attempt is due."""
    due = Notification.objects.filter(
        status=NotificationStatus.PENDING, next_attempt_at__lte=timezone.now()
    ).values_list("pk", flat=True)[:limit]
    return sum(1 for pk in list(due) if deliver_notification(pk) is not None)
