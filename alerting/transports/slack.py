"""Slack incoming webhooks: a Block Kit message. The webhook URL is the secret."""

from alerting.transports.base import describe, headline, register
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


# Block Kit allows 50 blocks a message: a header, then three blocks per alert.
MAX_ALERTS = 15


def slack_message(notification) -> dict:
    subject, _ = describe(notification)
    state, told = headline(notification)
    first = told[0][0]
    title = first.rule.name if len(told) == 1 else f"{first.rule.name} and {len(told) - 1} more"
    blocks = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"[{state}] {title}"[:HEADER_CHARS]},
        }
    ]
    for alert, status in told[:MAX_ALERTS]:
        blocks.extend(alert_blocks(alert, status))
    if len(told) > MAX_ALERTS:
        more = f"and {len(told) - MAX_ALERTS} more alerts"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
    return {"text": subject[:SECTION_CHARS], "blocks": blocks}


def alert_blocks(alert, status: str) -> list[dict]:
    labels = alert_labels(alert)
    fields = [
        {"type": "mrkdwn", "text": f"*{key}*\n{value}"[:2000]}
        for key, value in sorted(labels.items())[:MAX_FIELDS]
    ]
    return [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f"{EMOJI[status]} *{alert.summary}* ({alert.severity})"[:SECTION_CHARS],
            },
        },
        {"type": "section", "fields": fields},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"<{generator_url(alert)}|alert {alert.pk}>"}],
        },
    ]


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
