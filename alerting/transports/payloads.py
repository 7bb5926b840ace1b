"""Alerts as Alertmanager sees them: the webhook payload (version 4) and postable alerts."""

import json
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
    """The group's alerts as Alertmanager's webhook sends them: the alerts told in this
    delivery and the group's others still firing; groupLabels are the route's group_by
    labels, commonLabels and commonAnnotations what every alert shares."""
    from alerting.transports.base import members

    told = members(notification)
    status = "firing" if any(state == "firing" for _, state in told) else "resolved"
    labels = [alert_labels(alert) for alert, _ in told]
    annotations = [alert_annotations(alert) for alert, _ in told]
    group = getattr(notification, "group", None)
    if group is not None:
        group_labels = dict(group.labels)
    else:
        group_labels = {"alertname": labels[0]["alertname"]}
    route = f"{{}}/{group.route.name}" if group is not None and group.route else "{}"
    pairs = sorted(group_labels.items())
    matchers = ",".join(f"{name}={json.dumps(value)}" for name, value in pairs)
    return {
        "version": "4",
        "groupKey": f"{route}:{{{matchers}}}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": notification.receiver.name,
        "groupLabels": group_labels,
        "commonLabels": common(labels),
        "commonAnnotations": common(annotations),
        "externalURL": settings.EXTERNAL_URL,
        "alerts": [webhook_alert(alert, state) for alert, state in told],
    }


def common(dicts: list[dict[str, str]]) -> dict[str, str]:
    """The pairs every one of ``dicts`` has."""
    shared = dict(dicts[0])
    for other in dicts[1:]:
        shared = {key: value for key, value in shared.items() if other.get(key) == value}
    return shared


def postable_alert(alert, *, ends_at: datetime) -> dict:
    """An alert for Alertmanager's ``POST /api/v2/alerts``."""
    return {
        "labels": alert_labels(alert),
        "annotations": alert_annotations(alert),
        "startsAt": rfc3339(alert.fired_at or alert.started_at),
        "endsAt": rfc3339(ends_at),
        "generatorURL": generator_url(alert),
    }
