"""Flapping, silences and inhibition: whether an alert's notifications are held back, and why.

An alert flaps when its label set resolved ``ALERT_FLAP_COUNT`` times within
``ALERT_FLAP_WINDOW_SECONDS``: a condition hovering at its threshold would
otherwise notify at every crossing. All three only hold back notifications:
the alert is still raised, published and remediated, and the console still
shows it. A held-back alert remembers why (``Alert.suppressed_by``), and the
sweep sends its notification once the reason is gone (calm again, the silence
ended, the inhibiting alert resolved) if it is still firing. Its resolution is
told only to receivers that ask for it (``send_resolved_when_silenced``).
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count

from alerting import matchers as matcher_text
from alerting.models import Alert, AlertStatus, InhibitRule, Silence

# Alerts whose source side can inhibit others: firing ones, acknowledged included.
INHIBITING = (AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED)


def reason_for(alert: Alert, now: datetime) -> str:
    """Why this alert's notifications are held back now, or "" when they are not."""
    return reasons_for([alert], now)[alert.pk]


def reasons_for(alerts: list[Alert], now: datetime) -> dict[int, str]:
    """``reason_for`` of many alerts (by id), reading the recent resolutions, the
    active silences and the inhibit rules once for them all."""
    if not alerts:
        return {}
    flaps = flapping(alerts, now)
    silences = [
        (silence, matcher_text.parse_all(silence.matchers))
        for silence in Silence.objects.filter(starts_at__lte=now, ends_at__gt=now)
    ]
    inhibit_rules = list(InhibitRule.objects.filter(enabled=True))
    reasons = {}
    for alert in alerts:
        reasons[alert.pk] = ""
        if flaps.get(alert.fingerprint):
            reasons[alert.pk] = (
                f"flapping: resolved {flaps[alert.fingerprint]} times in the last "
                f"{settings.ALERT_FLAP_WINDOW_SECONDS}s"
            )
            continue
        silence = next(
            (s for s, found in silences if matcher_text.matches_all(found, alert.labels)), None
        )
        if silence is not None:
            reasons[alert.pk] = f"silence {silence.pk}"
            continue
        source = inhibited_by(alert, inhibit_rules)
        if source is not None:
            reasons[alert.pk] = f"inhibited by alert {source.pk}"
    return reasons


def flapping(alerts: list[Alert], now: datetime) -> dict[str, int]:
    """How often each alert's label set resolved recently, by fingerprint, for those
    that did often enough to call it flapping. A flapping alert notifies once it has
    calmed down."""
    if settings.ALERT_FLAP_COUNT <= 0:
        return {}
    since = now - timedelta(seconds=settings.ALERT_FLAP_WINDOW_SECONDS)
    resolved = (
        Alert.objects.filter(
            fingerprint__in={alert.fingerprint for alert in alerts},
            status=AlertStatus.RESOLVED,
            resolved_at__gte=since,
        )
        .exclude(pk__in=[alert.pk for alert in alerts])
        .order_by()
        .values("fingerprint")
        .annotate(times=Count("pk"))
    )
    return {
        row["fingerprint"]: row["times"]
        for row in resolved
        if row["times"] >= settings.ALERT_FLAP_COUNT
    }


def inhibited_by(alert: Alert, rules: list[InhibitRule]) -> Alert | None:
    """A firing alert that inhibits this one under one of the (enabled) inhibit rules."""
    for rule in rules:
        targets = matcher_text.parse_all(rule.target_matchers)
        if not matcher_text.matches_all(targets, alert.labels):
            continue
        sources = matcher_text.parse_all(rule.source_matchers)
        candidates = Alert.objects.filter(status__in=INHIBITING).exclude(pk=alert.pk)
        for label in rule.equal:
            value = alert.labels.get(label, "")
            candidates = candidates.filter(matcher_text.Matcher(label, "=", str(value)).q("labels"))
        for source in candidates.order_by("id")[:1000]:
            if matcher_text.matches_all(sources, source.labels):
                return source
    return None
