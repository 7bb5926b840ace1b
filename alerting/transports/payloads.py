"""Alerts as Alertmanager sees them: the webhook payload (version 4) and postable alerts."""

from datetime import UTC, datetime

from django.conf import settings

# Alertmanager's webhook marks a firing alert's unknown end with Go's zero time.
ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(when: datetime | None) -> str:
    if when is None:
        return ZERO_TIME
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alert_labels(alert) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in alert.labels.items()}
    labels.setdefault("alertname", alert.rule.name)
    labels.setdefault("severity", alert.severity)
    return labels


def alert_annotations(alert) -> dict[str, str]:
    annotations = {str(k): str(v) for k, v in (alert.rule.annotations or {}).items()}
    annotations["summary"] = alert.summary
    return annotations


def generator_url(alert) -> str:
    return f"{settings.EXTERNAL_URL}/api/v1/alerts/{alert.pk}"


def webhook_alert(alert, status: str) -> dict:
    return {
        "status": status,
        "labels": alert_labels(alert),
        "annotations": alert_annotations(alert),
        "startsAt": rfc3339(alert.fired_at or alert.started_at),
        "endsAt": rfc3339(alert.resolved_at if status == "resolved" else None),
        "generatorURL": generator_url(alert),
        "fingerprint": alert.fingerprint[:16],
    }


def webhook_payload(notification) -> dict:
    """One alert per payload: the route tree that will group alerts comes later."""
    alert = notification.alert
    status = "resolved" if notification.kind == "resolved" else "firing"
    labels = alert_labels(alert)
    group_labels = {"alertname": labels["alertname"]}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{labels["alertname"]}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": notification.receiver.name,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": alert_annotations(alert),
        "externalURL": settings.EXTERNAL_URL,
        "alerts": [webhook_alert(alert, status)],
    }


def postable_alert(alert, *, ends_at: datetime) -> dict:
    """An alert for Alertmanager's ``POST /api/v2/alerts``."""
    return {
        "labels": alert_labels(alert),
        "annotations": alert_annotations(alert),
        "startsAt": rfc3339(alert.fired_at or alert.started_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": generator_url(alert),
    }
