"""Generic webhook: the Alertmanager webhook payload (version 4), or a templated body.

Signed with HMAC-SHA256 when the receiver has a ``secret`` (see http.sign).
"""

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
from alerting.transports.payloads import ZERO_TIME, webhook_payload
from alerting.transports.templating import BodyTemplateError, render_body, validate_template

SAMPLE_ALERT = {
    "status": "firing",
    "labels": {"alertname": "sample", "severity": "warning", "agent_id": "worker-01"},
    "annotations": {"summary": "Sample alert"},
    "startsAt": "2025-01-01T00:00:00Z",
    "endsAt": ZERO_TIME,
    "generatorURL": "http://localhost/api/v1/alerts/1",
    "fingerprint": "0123456789abcdef",
}
SAMPLE_PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="sample"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "sample",
    "groupLabels": {"alertname": "sample"},
    "commonLabels": SAMPLE_ALERT["labels"],
    "commonAnnotations": SAMPLE_ALERT["annotations"],
    "externalURL": "http://localhost",
    "alerts": [SAMPLE_ALERT],
}


@register
class WebhookTransport(HttpTransport):
    kind = "webhook"
    label = "Webhook (Alertmanager format)"
    # Many webhook services carry their credential in the URL (a path token or a query
    # parameter), so the URL is kept as Alertmanager keeps it: a secret. Its origin
    # (``target``) shows where notifications go.
    secret_keys = frozenset({"url", "secret"})

    def config_keys(self):
        return ("url", "secret", "timeout", "template")

    def validate_config(self, config: dict) -> dict:
        super().validate_config(config)
        return clean_fields(
            config,
            {
                "url": validate_url,
                "secret": validate_secret,
                "timeout": validate_timeout,
                "template": lambda value: validate_template(value, SAMPLE_PAYLOAD),
            },
        )

    def outgoing(self, notification) -> Outgoing:
        receiver = notification.receiver
        payload = webhook_payload(notification)
        template = receiver.config.get("template")
        if template:
            try:
                body = render_body(template, payload)
            except BodyTemplateError as exc:
                raise TransportError(str(exc), permanent=True) from None
        else:
            body = json_body(payload)
        return Outgoing(url=receiver.config["url"], body=body)
