"""Grouping: when a receiver hears of an alert, and together with which others.

Alertmanager's rules, per route and receiver (``alerting.routing.Grouping``):

- Alerts whose ``group_by`` labels have the same values form one group.
- A new group waits ``group_wait`` for more alerts, then they go out in one
  notification. An alert that resolves within that wait is never told at all:
  its firing notification is cancelled and no resolution follows.
- Once a group was notified, what changes in it (alerts added, alerts resolved)
  waits for the next ``group_interval`` after the last notification.
- Firing alerts that nobody acknowledged are told again every
  ``repeat_interval``, counted in whole group intervals (as Alertmanager, which
  only ever sends on a group interval's tick).

A notification still belongs to one alert (the delivery log stays per alert and
receiver); the group decides when it is due, and delivery sends every due
notification of a group at once (``alerting.delivery``), together with the
group's other alerts still firing, as Alertmanager's webhook does.
"""

import functools
import hashlib
import json
import math
from datetime import datetime, timedelta

import structlog
from django.db import transaction
from django.utils import timezone

from alerting.models import (
    GROUP_BY_ALL,
    Alert,
    AlertGroup,
    AlertStatus,
    Notification,
    NotificationKind,
    NotificationStatus,
)
from alerting.routing import Destination, Grouping
from omoi_console.foundation import bulk

log = structlog.get_logger(__name__)

# Kinds that tell an alert fires; a pending one is cancelled when the alert resolves first.
FIRING_KINDS = (NotificationKind.FIRING, NotificationKind.REPEAT)
# At most this many alerts go out in one notification of a group.
MAX_BATCH = 100


def group_labels(labels: dict, group_by: tuple[str, ...]) -> dict[str, str]:
    if GROUP_BY_ALL in group_by:
        return {str(name): str(value) for name, value in labels.items()}
    return {name: str(labels[name]) for name in group_by if name in labels}


def group_key(destination: Destination, labels: dict[str, str]) -> str:
    route_id = destination.route.pk if destination.route is not None else None
    raw = json.dumps([route_id, destination.receiver.pk, sorted(labels.items())])
    return hashlib.sha256(raw.encode()).hexdigest()


def schedule_many(joining, kind: str, now: datetime) -> dict[tuple[int, int], tuple]:
    """The group each (alert, destination, labels) joins at the destination's receiver,
    and when its notification of ``kind`` is due; ``labels`` are the alert's, as routes
    see them. Each group's row is read, locked (for the rest of the caller's
    transaction) and planned once for all the alerts that join it, as if they joined
    one after another: the first plans the flush, the others join it. By (alert id,
    receiver id): (group, due)."""
    members: dict[str, tuple] = {}
    for alert, destination, labels in joining:
        grouped = group_labels(labels, destination.grouping.group_by)
        key = group_key(destination, grouped)
        members.setdefault(key, (destination, grouped, []))[2].append(alert)
    if not members:
        return {}
    AlertGroup.objects.bulk_create(
        [
            AlertGroup(
                key=key,
                receiver=destination.receiver,
                route=destination.route,
                labels=grouped,
                created_at=now,
            )
            for key, (destination, grouped, _) in members.items()
        ],
        ignore_conflicts=True,  # the groups that exist already keep their rows
    )
    # One lock order for every caller (by key): two batches never deadlock.
    groups = (
        AlertGroup.objects.select_for_update(of=("self",))
        .filter(key__in=list(members))
        .order_by("key")
    )
    planned, flushes = {}, []
    for group in groups:
        destination, _, alerts = members[group.key]
        grouping = destination.grouping
        if group.flush_at is not None:
            due = group.flush_at  # a flush is already planned: join it
        elif group.flushed_at is None or (kind in FIRING_KINDS and _idle(group, alerts[0])):
            due = now + grouping.group_wait  # a new group (or one whose alerts all ended)
        else:
            due = max(now, group.flushed_at + grouping.group_interval)
        group.flush_at = due
        flushes.append((group.pk, due))
        for alert in alerts:
            planned[(alert.pk, destination.receiver.pk)] = (group, due)
    bulk.update_rows(AlertGroup, ["flush_at"], flushes)
    return planned


def _idle(group: AlertGroup, alert: Alert) -> bool:
    """Whether no other open alert was told in the group: then it starts over, as
    Alertmanager drops a group once all its alerts resolved."""
    return (
        not Notification.objects.filter(group=group, alert__resolved_at__isnull=True)
        .exclude(alert_id=alert.pk)
        .exists()
    )


def cancel_unsent_many(pairs) -> set[tuple[int, int]]:
    """Cancel the firing notifications of (alert, receiver) pairs that still wait for
    their group: the (alert id, receiver id) pairs that had one. Not one that is being
    retried: that receiver may have it already."""
    wanted = {(alert.pk, receiver.pk) for alert, receiver in pairs}
    if not wanted:
        return set()
    waiting = list(
        Notification.objects.select_for_update(of=("self",))
        .filter(
            alert_id__in={alert for alert, _ in wanted},
            receiver_id__in={receiver for _, receiver in wanted},
            kind__in=FIRING_KINDS,
            status=NotificationStatus.PENDING,
            attempts=0,
            group__isnull=False,
        )
        .values_list("pk", "alert_id", "receiver_id")
    )
    hit = [
        (pk, (alert, receiver)) for pk, alert, receiver in waiting if (alert, receiver) in wanted
    ]
    if hit:
        Notification.objects.filter(pk__in=[pk for pk, _ in hit]).update(
            status=NotificationStatus.CANCELLED
        )
    return {pair for _, pair in hit}


def repeat_ticks(grouping_interval: timedelta, repeat_interval: timedelta) -> timedelta:
    """The repeat interval rounded up to whole group intervals."""
    if grouping_interval <= timedelta(0):
        return repeat_interval
    return grouping_interval * math.ceil(repeat_interval / grouping_interval)


def flushed(group: AlertGroup, grouping: Grouping, now: datetime) -> None:
    """Record that the group just went out: changes now wait for the next interval."""
    group.flushed_at = now
    if group.flush_at is not None and group.flush_at <= now:
        group.flush_at = None
    group.repeat_at = now + repeat_ticks(grouping.group_interval, grouping.repeat_interval)
    group.save(update_fields=["flushed_at", "flush_at", "repeat_at"])


def grouping_of(group: AlertGroup) -> Grouping:
    """The group's timers today: its route's (inherited), or the settings for default receivers."""
    from alerting.routing import inherit, top_grouping

    chain = []
    node = group.route
    while node is not None:
        chain.append(node)
        node = node.parent
    grouping = top_grouping()
    for node in reversed(chain):
        grouping = inherit(node, grouping)
    return grouping


def still_firing(group: AlertGroup, exclude: set[int]) -> list[Alert]:
    """The group's alerts that were told firing and still fire, unacknowledged: sent
    along with every notification of the group, so each carries the group's whole
    firing set (an acknowledged alert is someone's already, and is left out)."""
    told = Notification.objects.filter(
        group=group, kind__in=FIRING_KINDS, status=NotificationStatus.SENT
    ).values("alert_id")
    return list(
        Alert.objects.filter(pk__in=told, status=AlertStatus.FIRING, suppressed_by="")
        .exclude(pk__in=exclude)
        .select_related("rule")
        .order_by("fired_at", "pk")[:MAX_BATCH]
    )


def repeat_due(now: datetime | None = None) -> int:
    """Tell again the firing, unacknowledged, unsilenced alerts of every group whose
    repeat interval has passed; how many notifications that made."""
    from alerting.delivery import enqueue_delivery

    now = now or timezone.now()
    made = 0
    due_groups = AlertGroup.objects.filter(repeat_at__lte=now).values_list("pk", flat=True)
    for group_id in list(due_groups[:MAX_BATCH]):
        with transaction.atomic():
            group = (
                AlertGroup.objects.select_for_update(skip_locked=True)
                .filter(pk=group_id, repeat_at__lte=now)
                .select_related("receiver")
                .first()
            )
            if group is None:
                continue
            group.repeat_at = None
            group.save(update_fields=["repeat_at"])
            if not group.receiver.enabled:
                continue
            told = Notification.objects.filter(
                group=group, kind__in=FIRING_KINDS, status=NotificationStatus.SENT
            ).values("alert_id")
            alerts = Alert.objects.filter(
                pk__in=told, status=AlertStatus.FIRING, suppressed_by=""
            ).order_by("pk")[:MAX_BATCH]
            for alert in alerts:
                notification = Notification.objects.create(
                    alert=alert,
                    kind=NotificationKind.REPEAT,
                    receiver=group.receiver,
                    channel=group.receiver.kind,
                    target=group.receiver.transport.target(group.receiver),
                    trace_id=alert.trace_id,
                    group=group,
                    next_attempt_at=now,
                )
                transaction.on_commit(
                    functools.partial(enqueue_delivery, notification.pk), robust=True
                )
                made += 1
    if made:
        log.info("notification.repeats", notifications=made)
    return made
