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

from alerting import grouping
from alerting.models import (
    Alert,
    AlertGroup,
    AlertStatus,
    Notification,
    NotificationKind,
    NotificationStatus,
    Receiver,
)
from alerting.prometheus import NOTIFICATIONS
from alerting.routing import Destination, destinations, escalation_of, held, top_grouping
from alerting.transports import TransportError
from alerting.transports.http import redact
from observability import self_metrics
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


def routing_labels(alert: Alert) -> dict:
    """What routes match and groups split on: the alert's labels with its ``alertname``
    and ``severity``, as Alertmanager sees them."""
    labels = dict(alert.labels)
    if alert.rule_id is not None:
        labels.setdefault("alertname", alert.rule.name)
    if alert.severity:
        labels.setdefault("severity", alert.severity)
    return labels


def destinations_for(alert: Alert) -> list[Destination]:
    """Where an alert's notifications go, and how each destination groups them: the
    routing tree's answer for its labels (``alerting.routing``), or every enabled
    ``default`` receiver when no route takes it; only receivers that have somewhere
    to deliver, each once (the first route that reaches it groups it)."""
    routed = destinations(routing_labels(alert))
    if routed is None:
        top = top_grouping()
        routed = [Destination(r, None, top) for r in held("defaults", _default_receivers)]
    chosen: dict[int, Destination] = {}
    for destination in routed:
        receiver = destination.receiver
        if not receiver.enabled or receiver.pk in chosen:
            continue
        try:
            transport = receiver.transport
        except ValidationError:
            log.warning("receiver.unknown_kind", receiver=receiver.name, kind=receiver.kind)
            continue
        if transport.addressable(receiver):
            chosen[receiver.pk] = destination
    return list(chosen.values())


def _default_receivers() -> list[Receiver]:
    return list(Receiver.objects.filter(enabled=True, default=True))


def receivers_for(alert: Alert) -> list[Receiver]:
    return [destination.receiver for destination in destinations_for(alert)]


def wants(receiver: Receiver, alert: Alert, kind: str) -> bool:
    if kind != NotificationKind.RESOLVED:
        return True
    if not receiver.send_resolved:
        return False
    return receiver.send_resolved_when_silenced or not is_silenced(alert)


def notify(alert: Alert, kind: str) -> list[Notification]:
    """Save one Notification per receiver now, due when its group goes out
    (``alerting.grouping``); each is sent after the transaction commits, once due."""
    return notify_many([alert], kind)


def notify_many(
    alerts: list[Alert], kind: str, *, first: bool = False, traces: dict | None = None
) -> list[Notification]:
    """``notify`` for alerts that changed together (a rule's evaluation): each group's
    row is locked and planned once for all the alerts joining it, the notifications
    are inserted together, and each group's due batch is handed to the delivery task
    once, not once per alert. ``first``: none of the alerts can have a notification of
    this kind yet (they have just started firing, or just resolved), so none is
    looked for. ``traces``: the trace id of each alert's notifications, by alert id;
    else the current span's."""
    now = timezone.now()
    joining = []
    for alert in alerts:
        labels = routing_labels(alert)
        for destination in destinations_for(alert):
            if wants(destination.receiver, alert, kind):
                joining.append((alert, destination, labels))
    if not joining:
        return []
    # Atomic: a group's row is locked while its notifications join it.
    with transaction.atomic():
        if kind == NotificationKind.RESOLVED:
            # Resolved before its group went out: that receiver never hears of it.
            cancelled = grouping.cancel_unsent_many(
                [(a, d.receiver) for a, d, _ in joining if d.receiver.transport.groups]
            )
            for alert_id, receiver_id in sorted(cancelled):
                log.info("notification.cancelled", alert_id=alert_id, receiver_id=receiver_id)
            joining = [j for j in joining if (j[0].pk, j[1].receiver.pk) not in cancelled]
        planned = grouping.schedule_many(
            [j for j in joining if j[1].receiver.transport.groups], kind, now
        )
        return create_notifications(
            [
                (alert, d.receiver, *planned.get((alert.pk, d.receiver.pk), (None, None)))
                for alert, d, _ in joining
            ],
            kind,
            first=first,
            traces=traces,
        )


def create_notifications(
    wanted, kind: str, *, first: bool = False, traces: dict | None = None
) -> list[Notification]:
    """The notifications of ``kind`` for (alert, receiver, group, due) that do not have
    one yet (``first``: none can have one), inserted together and handed to the
    delivery task after commit: one hand-off per group's due batch (the task takes the
    group's due mates with it), one per notification outside a group."""
    trace_id, _ = current_trace_ids()
    now = timezone.now()
    have = set()
    if not first:
        have = set(
            Notification.objects.filter(
                alert_id__in={alert.pk for alert, *_ in wanted},
                receiver_id__in={receiver.pk for _, receiver, *_ in wanted},
                kind=kind,
                resent_from=None,
            ).values_list("alert_id", "receiver_id")
        )
    rows = []
    for alert, receiver, group, due in wanted:
        if (alert.pk, receiver.pk) in have:
            continue
        have.add((alert.pk, receiver.pk))
        rows.append(
            Notification(
                alert=alert,
                kind=kind,
                receiver=receiver,
                channel=receiver.kind,
                target=receiver.transport.target(receiver),
                trace_id=(traces or {}).get(alert.pk, trace_id),
                group=group,
                next_attempt_at=due or now,
            )
        )
    if not rows:
        return []
    try:
        with transaction.atomic():
            created = Notification.objects.bulk_create(rows)
    except IntegrityError:
        # Another writer took one of them meanwhile: one by one, each keeping its own.
        made = (
            create_notification(r.alert, kind, r.receiver, group=r.group, due=r.next_attempt_at)
            for r in rows
        )
        return [notification for notification in made if notification is not None]
    # The task for a grouped notification takes its group's due mates with it: one per
    # group and due time (and per MAX_BATCH of them). The others go in lists.
    batches: dict[tuple, list[int]] = {}
    for notification in created:
        key = (notification.group_id, notification.next_attempt_at)
        batches.setdefault(key, []).append(notification.pk)
    for (group_id, due), ids in batches.items():
        step = grouping.MAX_BATCH
        heads = ids[::step] if group_id is not None else None
        for start in range(0, len(ids), step):
            _hand_over([heads[start // step]] if heads else ids[start : start + step], due, now)
    return created


def notify_escalation(alert: Alert, level: int) -> list[Notification]:
    """Tell the receivers of escalation level ``level`` of the routes that deliver the
    alert (``Route.escalation``; ``OMOI_ALERT_ESCALATE_TO`` for alerts no route takes).
    At once: nobody acknowledged it, so no group waits."""
    routed = destinations(routing_labels(alert))
    chains = [escalation_of(None)] if routed is None else [escalation_of(d.route) for d in routed]
    names = {name for chain in chains if len(chain) >= level for name in chain[level - 1]}
    created = []
    for receiver in Receiver.objects.filter(name__in=names, enabled=True).order_by("name"):
        if receiver.transport.addressable(receiver):
            notification = create_notification(alert, NotificationKind.ESCALATED, receiver)
            if notification is not None:
                created.append(notification)
    return created


def create_notification(
    alert: Alert,
    kind: str,
    receiver: Receiver,
    *,
    fallback_from: Notification | None = None,
    group: AlertGroup | None = None,
    due=None,
) -> Notification | None:
    """The receiver's notification of this alert state, or None if it already has one."""
    trace_id, _ = current_trace_ids()
    now = timezone.now()
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
            "group": group,
            "next_attempt_at": due or now,
        },
    )
    if not new:
        return None
    _hand_over([notification.pk], notification.next_attempt_at, now)
    return notification


def _hand_over(ids: list[int], due, now) -> None:
    """The delivery of these notifications, once the transaction commits, at their due."""
    wait = (due - now).total_seconds()
    send = functools.partial(enqueue_deliveries, ids, countdown=max(0.0, wait))
    # On-commit callbacks run after the span that created the notification has
    # ended: the hand-off runs in its context, so the task's publish carries the
    # alert's trace to the worker (or, eager, runs inside it).
    transaction.on_commit(functools.partial(in_context, context.get_current(), send), robust=True)


def enqueue_deliveries(notification_ids: list[int], countdown: float = 0.0) -> None:
    """One task for the notifications (one attempt each, in order)."""
    from alerting.tasks import deliver_notifications

    if len(notification_ids) == 1:
        if countdown > 0:
            enqueue_delivery(notification_ids[0], countdown=countdown)
        else:
            enqueue_delivery(notification_ids[0])
    elif countdown > 0:
        # The periodic sweep (deliver_due_notifications) sends them too, should this be lost.
        deliver_notifications.apply_async((notification_ids,), countdown=countdown)
    else:
        deliver_notifications.delay(notification_ids)


def enqueue_delivery(notification_id: int, countdown: float = 0.0) -> None:
    from alerting.tasks import deliver_notification

    if countdown > 0:
        # The periodic sweep (deliver_due_notifications) sends it too, should this be lost.
        deliver_notification.apply_async((notification_id,), countdown=countdown)
    else:
        deliver_notification.delay(notification_id)


def claim_notification(notification_id: int) -> Notification | None:
    """Take a due notification for one attempt; None when someone else has it, it is
    done, or its receiver's circuit is open (then it waits until the circuit may close).

    A grouped notification takes with it every due notification of its group: its
    ``batch`` is what goes out in this attempt, itself first."""
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
        notification.batch = [notification, *_claim_group_mates(notification, now)]
    return notification


def _claim_group_mates(notification: Notification, now) -> list[Notification]:
    """The other due notifications of the notification's group, leased for this attempt;
    the group is marked as gone out (its next changes wait for the group interval)."""
    if notification.group_id is None:
        return []
    mates = list(
        Notification.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("alert", "alert__rule")
        .filter(
            group_id=notification.group_id,
            status=NotificationStatus.PENDING,
            next_attempt_at__lte=now,
        )
        .exclude(pk=notification.pk)
        .order_by("pk")[: grouping.MAX_BATCH - 1]
    )
    if mates:
        Notification.objects.filter(pk__in=[mate.pk for mate in mates]).update(
            attempts=F("attempts") + 1, next_attempt_at=now + DELIVERY_LEASE
        )
    for mate in mates:
        mate.attempts += 1
        mate.receiver = notification.receiver
    # of=self: the route is read, not claimed (and may be missing: an outer join).
    group = (
        AlertGroup.objects.select_for_update(of=("self",))
        .select_related("route")
        .get(pk=notification.group_id)
    )
    grouping.flushed(group, grouping.grouping_of(group), now)
    notification.group = group
    return mates


def _still_current(batch: list[Notification]) -> list[Notification]:
    """The batch without firing notifications whose alert was silenced or ended while
    they waited for their group; those are cancelled (nobody is told of them)."""
    current, stale = [], []
    for notification in batch:
        alert = notification.alert
        gone = alert.suppressed_by or alert.status == AlertStatus.RESOLVED
        if notification.kind in grouping.FIRING_KINDS and notification.group_id and gone:
            stale.append(notification.pk)
        else:
            current.append(notification)
    if stale:
        Notification.objects.filter(pk__in=stale).update(status=NotificationStatus.CANCELLED)
    return current


def members(notification: Notification, batch: list[Notification]) -> list[tuple[Alert, str]]:
    """(alert, "firing" | "resolved") for every alert this delivery tells of: the batch,
    then its group's other alerts that still fire (as Alertmanager sends a whole group)."""
    told = [
        (item.alert, "resolved" if item.kind == NotificationKind.RESOLVED else "firing")
        for item in batch
    ]
    if notification.group_id is None:
        return told
    ids = {item.alert_id for item in batch}
    return told + [(alert, "firing") for alert in grouping.still_firing(notification.group, ids)]


@tracer.start_as_current_span("notification.deliver")
def deliver_notification(notification_id: int) -> str | None:
    """One delivery attempt; returns the resulting status, or None if not due."""
    span = trace.get_current_span()
    span.set_attribute("notification.id", notification_id)
    claimed = claim_notification(notification_id)
    if claimed is None:
        return None
    span.set_attributes(
        {
            "notification.channel": claimed.channel,
            "alert.id": claimed.alert_id,
            "notification.batch": len(claimed.batch),
        }
    )
    batch = _still_current(claimed.batch)
    if not batch:
        return NotificationStatus.CANCELLED
    notification = batch[0]
    notification.group = claimed.group if claimed.group_id else None
    notification.batch = batch
    notification.members = members(notification, batch)
    receiver = notification.receiver
    if not receiver.enabled:
        return record_batch_failure(batch, TransportError("receiver is disabled", permanent=True))
    started = time.monotonic()
    try:
        receiver.transport.send(notification)
    except TransportError as exc:
        return record_batch_failure(batch, exc)
    except ValidationError:
        return record_batch_failure(
            batch, TransportError(f"unknown kind {receiver.kind!r}", permanent=True)
        )
    except Exception as exc:
        # A bug in a transport must not leave the notification leased forever.
        log.exception("notification.transport_crashed", notification_id=notification.pk)
        return record_batch_failure(batch, TransportError(type(exc).__name__))
    attempt_ms = round((time.monotonic() - started) * 1000)
    for item in batch:
        status = record_delivery_success(item, attempt_ms)
    return status


def record_batch_failure(batch: list[Notification], exc: TransportError) -> str:
    """A failed attempt at a batch: every notification in it retried together."""
    delay = backoff_seconds(batch[0].attempts)
    for index, item in enumerate(batch):
        status = record_delivery_failure(item, exc, delay=delay, count=index == 0)
    return status


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


def record_delivery_failure(
    notification: Notification,
    exc: TransportError,
    *,
    delay: float | None = None,
    count: bool = True,
) -> str:
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
        if delay is None:
            delay = backoff_seconds(notification.attempts)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        notification.next_attempt_at = now + timedelta(seconds=delay)
    notification.save(update_fields=["status", "last_error", "next_attempt_at", "dead_at"])
    self_metrics.count_notification_failure()
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
    if count and not exc.permanent:
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
    """Send every pending notification whose time has come (a group's wait over, a retry
    due), after making the repeats that are due; how many attempts were made."""
    grouping.repeat_due()
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
