"""Forward alerts to an Alertmanager: ``POST <url>/api/v2/alerts``.

A firing alert is sent with ``endsAt`` a few resend intervals ahead and resent
while it stays open (``resend_active_alerts``, every
``RESEND_SECONDS``). If the console stops, Alertmanager sees
the alerts expire and resolves them by itself, as it does for Prometheus.
"""

from datetime import timedelta

import structlog
from django.utils import timezone

from alerting.transports.base import TransportError, register
from alerting.transports.http import (
    HttpTransport,
    Outgoing,
    clean_fields,
    json_body,
    validate_secret,
    validate_timeout,
    validate_url,
)
from alerting.transports.payloads import postable_alert

log = structlog.get_logger(__name__)

ALERTS_PATH = "/api/v2/alerts"
# Open alerts are re-posted this often (the "resend to alertmanager" periodic job),
# each valid for this many resends: a few missed runs do not resolve them.
RESEND_SECONDS = 60
ENDS_AT_RESENDS = 4
# Alerts per POST when resending.
RESEND_BATCH = 500


def firing_ends_at():
    """How long Alertmanager keeps a firing alert without hearing from us again."""
    return timezone.now() + timedelta(seconds=RESEND_SECONDS * ENDS_AT_RESENDS)


@register
class AlertmanagerTransport(HttpTransport):
    kind = "alertmanager"
    # Alertmanager groups what it receives by itself.
    groups = False
    label = "Alertmanager"
    secret_keys = frozenset({"bearer_token"})

    def config_keys(self):
        return ("url", "bearer_token", "timeout")

    def validate_config(self, config: dict) -> dict:
        super().validate_config(config)
        cleaned = clean_fields(
            config,
            {
                "url": validate_url,
                "bearer_token": lambda v: validate_secret(v, "bearer_token"),
                "timeout": validate_timeout,
            },
        )
        cleaned["url"] = cleaned["url"].rstrip("/")
        return cleaned

    def alerts_url(self, receiver) -> str:
        return receiver.config["url"].rstrip("/") + ALERTS_PATH

    def headers(self, receiver) -> dict:
        token = receiver.config.get("bearer_token")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def outgoing(self, notification) -> Outgoing:
        alert = notification.alert
        if notification.kind == "resolved":
            ends_at = alert.resolved_at or timezone.now()
        else:
            ends_at = firing_ends_at()
        return Outgoing(
            url=self.alerts_url(notification.receiver),
            body=json_body([postable_alert(alert, ends_at=ends_at)]),
            headers=self.headers(notification.receiver),
        )

    def resend(self, receiver, alerts) -> None:
        ends_at = firing_ends_at()
        for start in range(0, len(alerts), RESEND_BATCH):
            batch = alerts[start : start + RESEND_BATCH]
            self.post(
                receiver,
                Outgoing(
                    url=self.alerts_url(receiver),
                    body=json_body([postable_alert(a, ends_at=ends_at) for a in batch]),
                    headers=self.headers(receiver),
                ),
            )


def resend_active_alerts() -> int:
    """Re-post every open alert already forwarded to each enabled Alertmanager receiver.

    Returns how many alerts were re-posted. A receiver that fails is logged and
    tried again at the next run; its circuit breaker's state is respected.
    """
    from alerting.models import (
        OPEN_STATUSES,
        Alert,
        NotificationKind,
        NotificationStatus,
        Receiver,
    )

    transport = AlertmanagerTransport.instance()
    now = timezone.now()
    total = 0
    for receiver in Receiver.objects.filter(kind=AlertmanagerTransport.kind, enabled=True):
        if receiver.circuit_open_until and receiver.circuit_open_until > now:
            continue
        alerts = list(
            Alert.objects.filter(
                status__in=OPEN_STATUSES,
                notifications__receiver=receiver,
                notifications__kind=NotificationKind.FIRING,
                notifications__status=NotificationStatus.SENT,
            )
            .select_related("rule")
            .order_by("pk")
            .distinct()
        )
        if not alerts:
            continue
        try:
            transport.resend(receiver, alerts)
        except TransportError as exc:
            log.warning("alertmanager.resend_failed", receiver=receiver.name, error=str(exc))
            continue
        total += len(alerts)
    return total
