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

from alerting import matchers as matcher_text
from alerting.models import Alert, AlertStatus, InhibitRule, Silence

# Alerts whose source side can inhibit others: firing ones, acknowledged included.
INHIBITING = (AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED)


def reason_for(alert: Alert, now: datetime) -> str:
    """Why this alert's notifications are held back now, or "" when they are not."""
    flaps = flapping(alert, now)
    if flaps:
        return f"flapping: resolved {flaps} times in the last {settings.ALERT_FLAP_WINDOW_SECONDS}s"
    silence = silenced_by(alert.labels, now)
    if silence is not None:
        return f"silence {silence.pk}"
    source = inhibited_by(alert)
    if source is not None:
        return f"inhibited by alert {source.pk}"
    return ""


def flapping(alert: Alert, now: datetime) -> int:
    """How often this alert's label set resolved recently, when that is often enough to
    call it flapping (else 0). A flapping alert notifies once it has calmed down."""
    if settings.ALERT_FLAP_COUNT <= 0:
        return 0
    since = now - timedelta(seconds=settings.ALERT_FLAP_WINDOW_SECONDS)
    resolved = (
        Alert.objects.filter(
            fingerprint=alert.fingerprint, status=AlertStatus.RESOLVED, resolved_at__gte=since
        )
        .exclude(pk=alert.pk)
        .count()
    )
    return resolved if resolved >= settings.ALERT_FLAP_COUNT else 0


def silenced_by(labels: dict, now: datetime) -> Silence | None:
    for silence in Silence.objects.filter(starts_at__lte=now, ends_at__gt=now):
        if matcher_text.matches_all(matcher_text.parse_all(silence.matchers), labels):
            return silence
    return None


def inhibited_by(alert: Alert) -> Alert | None:
    """A firing alert that inhibits this one under some inhibit rule, if any."""
    for rule in InhibitRule.objects.filter(enabled=True):
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
