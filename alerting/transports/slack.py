"""Slack incoming webhooks: a Block Kit message. The webhook URL is the secret."""

from alerting.transports.base import describe, register
from alerting.transports.http import (
    HttpTransport,
    Outgoing,
    clean_fields,
    json_body,
    validate_timeout,
    validate_url,
)
from alerting.transports.payloads import alert_labels, generator_url

EMOJI = {"firing": ":red_circle:", "resolved": ":large_green_circle:"}
# Block Kit limits: header text 150 characters, section text 3000, 10 fields.
HEADER_CHARS = 150
SECTION_CHARS = 3000
MAX_FIELDS = 10


def slack_message(notification) -> dict:
    alert = notification.alert
    state = "resolved" if notification.kind == "resolved" else "firing"
    subject, _ = describe(notification)
    labels = alert_labels(alert)
    fields = [
        {"type": "mrkdwn", "text": f"*{key}*\n{value}"[:2000]}
        for key, value in sorted(labels.items())[:MAX_FIELDS]
    ]
    return {
        "text": subject[:SECTION_CHARS],
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": f"[{state.upper()}] {alert.rule.name}"[:HEADER_CHARS],
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{EMOJI[state]} *{alert.summary}* ({alert.severity})"[:SECTION_CHARS],
                },
            },
            {"type": "section", "fields": fields},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"<{generator_url(alert)}|alert {alert.pk}>"}
                ],
            },
        ],
    }


@register
class SlackTransport(HttpTransport):
    kind = "slack"
    label = "Slack (incoming webhook)"
    secret_keys = frozenset({"url"})

    def config_keys(self):
        return ("url", "timeout")

    def validate_config(self, config: dict) -> dict:
        super().validate_config(config)
        return clean_fields(config, {"url": validate_url, "timeout": validate_timeout})

    def outgoing(self, notification) -> Outgoing:
        return Outgoing(
            url=notification.receiver.config["url"], body=json_body(slack_message(notification))
        )
