"""The alert lifecycle: fire (deduplicated by fingerprint), acknowledge and resolve.

Every change publishes its event; firing and resolving hand the alert to
``alerting.delivery`` for its notifications.
"""

import hashlib
import json
import re

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone
from opentelemetry import trace

from alerting import suppression
from alerting.delivery import notify, notify_escalation, notify_many
from alerting.models import (
    OPEN_STATUSES,
    Alert,
    AlertChange,
    AlertEvent,
    AlertRule,
    AlertStatus,
    NotificationKind,
    RuleKind,
)
from omoi_console.foundation import bulk
from omoi_console.foundation.events import NewEvent, publish, publish_many
from omoi_console.foundation.events.tracing import current_trace_ids, event_trace

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)


# Alerts that change together beyond this are logged in one line (their count, rules
# and first ids), not one line each: the alert history and the events keep every one.
LOGGED_ONE_BY_ONE = 10
LOGGED_IDS = 100

# What acknowledging and giving an alert back change.
ACK_FIELDS = ["status", "acknowledged_at", "acknowledged_by", "ack_comment", "ack_expires_at"]


def about(alert: Alert, **more) -> dict:
    """The fields every ``monitor.alert.*`` event carries, and the event's own."""
    return {
        "alert_id": alert.pk,
        "rule": alert.rule.name,
        "fingerprint": alert.fingerprint,
        "labels": alert.labels,
        **more,
    }


def _locked(alert: Alert) -> Alert:
    """The alert read again under a row lock, with its rule (each change names it)."""
    return Alert.objects.select_for_update(of=("self",)).select_related("rule").get(pk=alert.pk)


class AlertClosed(Exception):
    """The alert is resolved; it can no longer be acknowledged."""


def fingerprint(rule_name: str, labels: dict) -> str:
    canonical = json.dumps({"rule": rule_name, "labels": labels}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}")


def render_summary(rule: AlertRule, labels: dict) -> str:
    """Fill ``{label}`` placeholders from the alert's labels.

    Only plain names are replaced, never ``str.format``: a summary edited in
    the admin must not reach attributes (``{x.y}``) or pad to gigabytes
    (``{x:>999999999}``). A placeholder naming a label the alert lacks stays.
    """
    return render_template(rule.summary, labels)[:500]


def render_template(text: str, labels: dict, value: float | None = None) -> str:
    """``{label}`` placeholders filled from ``labels``; ``{value}`` is the value that matched."""
    known = labels if value is None else {**labels, "value": f"{value:.6g}"}
    return PLACEHOLDER.sub(lambda match: str(known.get(match.group(1), match.group(0))), text)


def record(alert: Alert, change: str, actor: str, detail: str = "", at=None) -> None:
    """One row of the alert's history."""
    record_many([(alert, detail)], change, actor, at)


def record_many(changes, change: str, actor: str, at=None) -> None:
    """One history row per (alert, detail), all of one change, in one INSERT."""
    at = at or timezone.now()
    AlertEvent.objects.bulk_create(
        [
            AlertEvent(alert=alert, change=change, actor=actor[:160], detail=detail[:500], at=at)
            for alert, detail in changes
        ]
    )


def open_alert_for(rule: AlertRule, labels: dict) -> Alert | None:
    return Alert.objects.filter(
        fingerprint=fingerprint(rule.name, labels), status__in=OPEN_STATUSES
    ).first()


@tracer.start_as_current_span("alert.fire")
def fire_alert(rule: AlertRule, labels: dict, *, value: float | None = None) -> Alert:
    """Open (or return the already open) alert of ``rule`` for ``labels`` and notify.

    Deduplicated by fingerprint: a second firing of the same rule and labels
    while the first is open is the same alert.
    """
    labels = {**rule.labels, **labels}
    span = trace.get_current_span()
    span.set_attribute("alert.rule", rule.name)
    existing = open_alert_for(rule, labels)
    if existing is not None:
        span.set_attribute("alert.id", existing.pk)
        return existing
    now = timezone.now()
    alert, new = _create(rule, labels, value, now, AlertStatus.FIRING)
    span.set_attribute("alert.id", alert.pk)
    if not new:
        return alert  # lost a race with another firing of the same fingerprint
    record(alert, AlertChange.FIRING, "alerting", "", now)
    announce_firing(alert)
    return alert


def _create(rule: AlertRule, labels: dict, value, now, status: str) -> tuple[Alert, bool]:
    """A new open alert, or the open one that won a race for its fingerprint (False)."""
    trace_id, _ = current_trace_ids()
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule,
                fingerprint=fingerprint(rule.name, labels),
                labels=labels,
                severity=rule.severity,
                summary=render_template(rule.summary, labels, value)[:500],
                status=status,
                started_at=now,
                fired_at=now if status == AlertStatus.FIRING else None,
                value=value,
                trace_id=trace_id,
            )
    except IntegrityError:
        return open_alert_for(rule, labels), False
    return alert, True


def open_pending(rule: AlertRule, labels: dict, value: float | None, now) -> Alert:
    """A new alert whose condition has just been met; it fires after the rule's ``for``."""
    alert, new = _create(rule, labels, value, now, AlertStatus.PENDING)
    if not new:
        return alert
    record(alert, AlertChange.PENDING, "evaluator", f"value {value}", now)
    return alert


def open_many(
    found: list[tuple[AlertRule, dict, float | None]], now, *, firing=False, traces=None
) -> list:
    """New alerts, pending or (``firing``) firing at once, for (rule, labels, value) of
    any rules: one INSERT for the alerts, one for their history, and the firing ones
    announced together; one by one if one of them lost a race for its fingerprint.
    ``traces``: the (trace id, span id) each alert belongs to, in order; else the
    current span's, for all of them."""
    status = AlertStatus.FIRING if firing else AlertStatus.PENDING
    traces = traces or [current_trace_ids()] * len(found)
    rows = [
        Alert(
            rule=rule,
            fingerprint=fingerprint(rule.name, labels),
            labels=labels,
            severity=rule.severity,
            summary=render_template(rule.summary, labels, value)[:500],
            status=status,
            started_at=now,
            fired_at=now if firing else None,
            announced_at=now if firing else None,
            value=value,
            trace_id=ids[0],
        )
        for (rule, labels, value), ids in zip(found, traces, strict=True)
    ]
    if not rows:
        return []
    try:
        with transaction.atomic():
            opened = Alert.objects.bulk_create(rows)
        spans = dict(zip((alert.pk for alert in opened), traces, strict=True))
    except IntegrityError:  # one of them lost a race for its fingerprint
        if not firing:
            return [open_pending(rule, labels, value, now) for rule, labels, value in found]
        created = [_create(rule, labels, value, now, status) for rule, labels, value in found]
        opened = [alert for alert, new in created if new]
        spans = None
        if not opened:
            return []
    change = AlertChange.FIRING if firing else AlertChange.PENDING
    record_many([(alert, f"value {alert.value}") for alert in opened], change, "evaluator", now)
    if firing:
        announce_firing_many(opened, spans)
    return opened


def fire_alerts(found: list[tuple[AlertRule, dict, tuple[str, str]]]) -> list[Alert]:
    """``fire_alert`` for many (rule, labels, trace) at once, each new alert in the
    trace (trace id, span id) it comes with: deduplicated by fingerprint among
    themselves and against the open alerts (one query), the new ones written and
    announced together (``open_many``). The open alert of each label set, new or not."""
    wanted = {}
    for rule, labels, ids in found:
        labels = {**rule.labels, **labels}
        wanted.setdefault(fingerprint(rule.name, labels), (rule, labels, ids))
    already = {
        alert.fingerprint: alert
        for alert in Alert.objects.filter(
            fingerprint__in=list(wanted), status__in=OPEN_STATUSES
        ).select_related("rule")
    }
    new = [item for key, item in wanted.items() if key not in already]
    opened = open_many(
        [(rule, labels, None) for rule, labels, _ in new],
        timezone.now(),
        firing=True,
        traces=[ids for _, _, ids in new],
    )
    return [*already.values(), *opened]


def drop_pending(alert: Alert, now) -> None:
    """A pending alert whose condition cleared before ``for``: closed, nobody told."""
    drop_pending_many([alert], now)


def drop_pending_many(alerts: list[Alert], now) -> None:
    """``drop_pending`` for many alerts: one UPDATE, one INSERT of their history."""
    if not alerts:
        return
    reason = "condition cleared before it fired"
    for alert in alerts:
        alert.status, alert.resolved_at, alert.resolution = AlertStatus.RESOLVED, now, reason
    Alert.objects.filter(pk__in=[alert.pk for alert in alerts]).update(
        status=AlertStatus.RESOLVED, resolved_at=now, resolution=reason
    )
    record_many([(alert, reason) for alert in alerts], AlertChange.DROPPED, "evaluator", now)


def promote(alert: Alert, now) -> Alert:
    """A pending alert whose condition held for the rule's ``for``: it fires now."""
    promote_many([alert], now)
    return alert


def promote_many(alerts: list[Alert], now) -> None:
    """``promote`` for alerts that fire together: their rows, history, events and
    notifications written a few statements for them all."""
    if not alerts:
        return
    for alert in alerts:
        alert.status = AlertStatus.FIRING
        alert.fired_at = alert.announced_at = now
    bulk.update_rows(
        Alert,
        ["status", "fired_at", "announced_at", "value", "summary"],
        [(a.pk, a.status, now, now, a.value, a.summary) for a in alerts],
    )
    record_many([(a, f"value {a.value}") for a in alerts], AlertChange.FIRING, "evaluator", now)
    announce_firing_many(alerts)


def announce_firing(alert: Alert) -> None:
    """The event and the notifications of an alert that started firing."""
    announce_firing_many([alert])


def announce_firing_many(alerts: list[Alert], spans: dict | None = None) -> None:
    """``announce_firing`` for alerts that started firing together: one INSERT of their
    events, their suppression read once, their notifications planned together.
    ``spans``: the (trace id, span id) of each alert's event, by alert id; else the
    current span's."""
    spans = spans or {}
    publish_many(
        NewEvent(
            "monitor.alert.triggered",
            {
                "alert_id": alert.pk,
                "rule": alert.rule.name,
                "severity": alert.severity,
                "fingerprint": alert.fingerprint,
                "labels": alert.labels,
                "summary": alert.summary,
            },
            key=f"alert.triggered:{alert.pk}",
            trace=spans.get(alert.pk),
        )
        for alert in alerts
    )
    now = timezone.now()
    reasons = suppression.reasons_for(alerts, now)
    held = [alert for alert in alerts if reasons[alert.pk]]
    for alert in held:
        alert.suppressed_by = reasons[alert.pk]
    bulk.update_rows(Alert, ["suppressed_by"], [(a.pk, a.suppressed_by) for a in held])
    record_many([(a, a.suppressed_by) for a in held], AlertChange.SUPPRESSED, "alerting", now)
    # They have just started firing: none has a firing notification yet.
    notify_many(
        [alert for alert in alerts if not reasons[alert.pk]],
        NotificationKind.FIRING,
        first=True,
        traces={pk: trace_id for pk, (trace_id, _) in spans.items()},
    )
    if len(alerts) > LOGGED_ONE_BY_ONE:
        log.warning(
            "alert.fired_many",
            count=len(alerts),
            held=len(held),
            rules=sorted({alert.rule.name for alert in alerts}),
            alert_ids=[alert.pk for alert in alerts[:LOGGED_IDS]],
        )
        return
    for alert in alerts:
        log.warning(
            "alert.fired",
            alert_id=alert.pk,
            rule=alert.rule.name,
            labels=alert.labels,
            held=reasons[alert.pk],
        )


def release(alert: Alert, now) -> bool:
    """Send a held-back alert's notification if nothing holds it back any more."""
    held = suppression.reason_for(alert, now)
    if held == alert.suppressed_by:
        return False
    alert.suppressed_by = held
    alert.save(update_fields=["suppressed_by"])
    if held:
        record(alert, AlertChange.SUPPRESSED, "alerting", held, now)
        return False
    record(alert, AlertChange.RELEASED, "alerting", "", now)
    alert.announced_at = now
    alert.save(update_fields=["announced_at"])
    notify(alert, NotificationKind.FIRING)
    return True


def resolve_alert(alert: Alert, *, reason: str, actor: str = "alerting") -> Alert:
    """Close an open alert and notify that it is resolved."""
    closed = resolve_many([alert], reason=reason, actor=actor)
    return closed[0] if closed else Alert.objects.select_related("rule").get(pk=alert.pk)


def resolve_many(alerts: list[Alert], *, reason: str, actor: str = "alerting") -> list[Alert]:
    """Close the alerts still open among ``alerts`` (read again under a row lock) and
    notify that they are resolved; the ones it closed."""
    if not alerts:  # most evaluations resolve nothing: not even a savepoint then
        return []
    with transaction.atomic():
        closing = list(
            Alert.objects.select_for_update(of=("self",))
            .select_related("rule")
            .filter(pk__in=[alert.pk for alert in alerts], status__in=OPEN_STATUSES)
            .order_by("pk")
        )
        if not closing:
            return []
        now = timezone.now()
        for alert in closing:
            alert.status, alert.resolved_at, alert.resolution = (
                AlertStatus.RESOLVED,
                now,
                reason[:500],
            )
        Alert.objects.filter(pk__in=[alert.pk for alert in closing]).update(
            status=AlertStatus.RESOLVED, resolved_at=now, resolution=reason[:500]
        )
        record_many([(alert, reason) for alert in closing], AlertChange.RESOLVED, actor, now)
        publish_many(
            NewEvent(
                "monitor.alert.resolved",
                about(alert, duration_seconds=(now - alert.started_at).total_seconds()),
                key=f"alert.resolved:{alert.pk}",
            )
            for alert in closing
        )
        # Told to whoever was told it fired; an alert held back the whole time only
        # to receivers that ask for it (send_resolved_when_silenced).
        notify_many(closing, NotificationKind.RESOLVED, first=True)
    if len(closing) > LOGGED_ONE_BY_ONE:
        log.info(
            "alert.resolved_many",
            count=len(closing),
            reason=reason,
            alert_ids=[alert.pk for alert in closing[:LOGGED_IDS]],
        )
        return closing
    for alert in closing:
        log.info("alert.resolved", alert_id=alert.pk, reason=reason)
    return closing


def resolve_rule_alerts(rule: AlertRule, *, reason: str) -> int:
    """Resolve every open alert of a rule that no longer runs (disabled); how many."""
    alerts = list(Alert.objects.filter(rule=rule, status__in=OPEN_STATUSES))
    now = timezone.now()
    for alert in alerts:
        if alert.status == AlertStatus.PENDING:
            drop_pending(alert, now)  # it never fired: nobody was told of it
        else:
            resolve_alert(alert, reason=reason)
    return len(alerts)


def acknowledge_alert(alert: Alert, user, *, comment: str = "", expires_at=None) -> Alert:
    """An operator takes the alert; it keeps open until its cause recovers.

    With ``expires_at`` the acknowledgement ends by itself then, and the alert
    fires again if its cause has not recovered. Acknowledging an acknowledged
    alert again replaces the comment and expiry.
    """
    with transaction.atomic():
        alert = _locked(alert)
        if alert.status == AlertStatus.RESOLVED:
            raise AlertClosed(f"alert {alert.pk} is already resolved")
        if alert.status == AlertStatus.PENDING:
            raise AlertClosed(f"alert {alert.pk} is pending: it has not fired")
        again = alert.status == AlertStatus.ACKNOWLEDGED
        now = timezone.now()
        alert.status = AlertStatus.ACKNOWLEDGED
        if not again:
            alert.acknowledged_at = now
        alert.acknowledged_by = user
        alert.ack_comment, alert.ack_expires_at = comment[:500], expires_at
        alert.save(update_fields=ACK_FIELDS)
        until = f" until {expires_at.isoformat()}" if expires_at else ""
        record(alert, AlertChange.ACKNOWLEDGED, f"user:{user.get_username()}", comment + until, now)
        if again:
            return alert
        publish(
            "monitor.alert.acknowledged",
            about(alert, by=user.get_username()),
            # Each acknowledgement is its own event: one given back and taken again too.
            key=f"alert.acknowledged:{alert.pk}:{alert.acknowledged_at.timestamp()}",
        )
    return alert


def unacknowledge_alert(alert: Alert, actor: str, *, reason: str = "") -> Alert:
    """Withdraw an acknowledgement (by hand, or when it expires): the alert fires again."""
    with transaction.atomic():
        alert = _locked(alert)
        if alert.status != AlertStatus.ACKNOWLEDGED:
            raise AlertClosed(f"alert {alert.pk} is not acknowledged")
        alert.status = AlertStatus.FIRING
        alert.acknowledged_at = alert.acknowledged_by = alert.ack_expires_at = None
        alert.ack_comment = ""
        alert.announced_at = timezone.now()
        alert.save(update_fields=[*ACK_FIELDS, "announced_at"])
        record(alert, AlertChange.UNACKNOWLEDGED, actor, reason)
        publish(
            "monitor.alert.unacknowledged",
            about(alert, by=actor),
        )
    return alert


def escalate_alert(alert: Alert, now) -> Alert:
    """One level up: nobody acknowledged the firing alert in time.

    The receivers of that level of its routes are told (``Route.escalation``),
    the event tells whoever listens, and the history keeps when and to which level.
    """
    with transaction.atomic():
        alert = Alert.objects.select_for_update().select_related("rule").get(pk=alert.pk)
        if alert.status != AlertStatus.FIRING:
            return alert
        alert.escalation_level += 1
        alert.escalated_at = now
        alert.save(update_fields=["escalation_level", "escalated_at"])
        record(alert, AlertChange.ESCALATED, "alerting", f"level {alert.escalation_level}", now)
        publish(
            "monitor.alert.escalated",
            about(alert, level=alert.escalation_level),
            key=f"alert.escalated:{alert.pk}:{alert.escalation_level}",
        )
        notify_escalation(alert, alert.escalation_level)
    log.warning("alert.escalated", alert_id=alert.pk, escalation_level=alert.escalation_level)
    return alert


def resolve_by_hand(alert: Alert, user, *, comment: str) -> Alert:
    """An operator closes an alert whose cause cannot clear it (or is known to be gone)."""
    if not alert.is_open:
        raise AlertClosed(f"alert {alert.pk} is already resolved")
    name = user.get_username()
    return resolve_alert(alert, reason=f"resolved by {name}: {comment}", actor=f"user:{name}")


def heartbeat_rules():
    return AlertRule.objects.filter(kind=RuleKind.HEARTBEAT, enabled=True)


def agent_labels(payload: dict, owners: dict | None = None) -> dict:
    """An agent's alert labels: who it is, its role and its owner (routes send teams
    theirs); ``owners``: read already, by agent id, else read here."""
    from monitoring.models import Agent

    agent_id = payload["agent_id"]
    if owners is None:
        owners = dict(Agent.objects.filter(pk=agent_id).values_list("pk", "owner"))
    return {"agent_id": agent_id, "role": payload["role"], "owner": owners.get(agent_id) or ""}


def fire_heartbeat_alerts(payload: dict) -> list[Alert]:
    return [fire_alert(rule, agent_labels(payload)) for rule in heartbeat_rules()]


def fire_heartbeat_alerts_for(events) -> list[Alert]:
    """``fire_heartbeat_alerts`` for many lost heartbeats at once (a mass outage): the
    agents' owners read in one query, the alerts written and announced together, each
    in the trace of its own event (``fire_alerts``)."""
    from monitoring.models import Agent

    rules = list(heartbeat_rules())
    agent_ids = {event.payload["agent_id"] for event in events}
    owners = dict(Agent.objects.filter(pk__in=agent_ids).values_list("pk", "owner"))
    found = []
    for event in events:
        with event_trace(event):  # the span that acts on the event, as one at a time
            ids = current_trace_ids()
        labels = agent_labels(event.payload, owners)
        found.extend((rule, labels, ids) for rule in rules)
    return fire_alerts(found)


def fire_remediation_alerts(payload: dict) -> list[Alert]:
    """The watchdog escalated: a person must heal the agent.

    One alert per agent (and policy), whatever the reason; ``reason`` is not a
    label, so a second escalation about the same agent is the same alert.
    """
    labels = {**agent_labels(payload), "policy": payload.get("policy", "")}
    rules = AlertRule.objects.filter(kind=RuleKind.REMEDIATION, enabled=True)
    return [fire_alert(rule, labels) for rule in rules]


def fire_approval_alerts(payload: dict) -> list[Alert]:
    """A remediation step waits for an operator: one alert per action and step.

    Routed and delivered like every alert; it resolves when the step is decided
    (``resolve_approval_alerts``), whoever decided and however.
    """
    labels = {
        **agent_labels(payload),
        "policy": payload["policy"],
        "action_id": str(payload["action_id"]),
        "step": str(payload["step_index"] + 1),
        "kind": payload["kind"],
    }
    rules = AlertRule.objects.filter(kind=RuleKind.APPROVAL, enabled=True)
    return [fire_alert(rule, labels) for rule in rules]


def resolve_approval_alerts(payload: dict) -> list[Alert]:
    resolved = []
    for alert in Alert.objects.filter(
        rule__kind=RuleKind.APPROVAL,
        status__in=OPEN_STATUSES,
        labels__action_id=str(payload["action_id"]),
        labels__step=str(payload["step_index"] + 1),
    ):
        resolved.append(resolve_alert(alert, reason=f"the step was {payload['decision']}"))
    return resolved


def fire_storm_alerts(payload: dict) -> list[Alert]:
    """The watchdog paused restarts of a role: one alert per role, whatever the count.

    The counts are labels for the summary, but the fingerprint is the role's
    alone: while one is open, a second pause of the role is the same alert.
    """
    alerts = []
    for rule in AlertRule.objects.filter(kind=RuleKind.STORM, enabled=True):
        open_one = _open_storm_alert(rule, payload["role"])
        if open_one is not None:
            alerts.append(open_one)
            continue
        labels = {
            "role": payload["role"],
            "unhealthy": str(payload["unhealthy"]),
            "total": str(payload["total"]),
        }
        alerts.append(fire_alert(rule, labels))
    return alerts


def resolve_storm_alerts(payload: dict) -> list[Alert]:
    resolved = []
    for rule in AlertRule.objects.filter(kind=RuleKind.STORM):
        alert = _open_storm_alert(rule, payload["role"])
        if alert is not None:
            resolved.append(resolve_alert(alert, reason="the role recovered: restarts resumed"))
    return resolved


def _open_storm_alert(rule, role: str) -> Alert | None:
    return (
        Alert.objects.filter(rule=rule, status__in=OPEN_STATUSES, labels__role=role)
        .order_by("pk")
        .first()
    )


def resolve_heartbeat_alerts(payload: dict) -> list[Alert]:
    resolved = []
    for rule in AlertRule.objects.filter(kind=RuleKind.REMEDIATION):
        for alert in Alert.objects.filter(
            rule=rule, status__in=OPEN_STATUSES, labels__agent_id=payload["agent_id"]
        ):
            resolved.append(resolve_alert(alert, reason="agent recovered"))
    for rule in AlertRule.objects.filter(kind=RuleKind.HEARTBEAT):
        alert = open_alert_for(rule, {**rule.labels, **agent_labels(payload)})
        if alert is not None:
            resolved.append(resolve_alert(alert, reason="agent recovered"))
    return resolved
