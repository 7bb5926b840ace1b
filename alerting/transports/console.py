"""In-app: pushed to every open console over the websocket group."""

from alerting.transports.base import Transport, TransportError, register
from omoi_console.foundation.events.broadcast import send_to_console


@register
class ConsoleTransport(Transport):
    kind = "console"
    # People watch the console live: each alert change shows at once.
    groups = False
    label = "Console (in-app)"

    def target(self, receiver) -> str:
        return "console"

    def send(self, notification) -> None:
        alert = notification.alert
        try:
            send_to_console(
                {
                    "type": "notification.message",
                    "notification": {
                        "id": notification.pk,
                        "kind": notification.kind,
                        "alert_id": alert.pk,
                        "summary": alert.summary,
                        "severity": alert.severity,
                    },
                }
            )
        except Exception as exc:
            raise TransportError(f"channel layer: {type(exc).__name__}") from exc
