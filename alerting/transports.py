"""One class per delivery channel. ``send`` raises TransportError on failure."""

import smtplib

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone

from alerting.models import Channel, Notification
from omoi_console.foundation.events.broadcast import send_to_console


class TransportError(Exception):
    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class Transport:
    channel: str

    def send(self, notification: Notification) -> None:
        raise NotImplementedError


def describe(notification: Notification) -> tuple[str, str]:
    """Subject and body shared by the text channels."""
    alert = notification.alert
    state = notification.kind.upper()
    subject = f"[{state}] {alert.rule.name}: {alert.summary} ({alert.severity})"
    labels = "\n".join(f"  {k}={v}" for k, v in sorted(alert.labels.items()))
    when = alert.resolved_at if notification.kind == "resolved" else alert.fired_at
    body = (
        f"{alert.summary}\n\nstatus: {state.lower()}\nseverity: {alert.severity}\n"
        f"at: {(when or timezone.now()).isoformat()}\nlabels:\n{labels}\n"
        f"alert id: {alert.pk}\ntrace id: {alert.trace_id or '-'}\n"
    )
    return subject, body


class ConsoleTransport(Transport):
    """In-app: pushed to every open console over the websocket group."""

    channel = Channel.CONSOLE

    def send(self, notification: Notification) -> None:
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
            raise TransportError(f"channel layer: {exc!r}") from exc


class EmailTransport(Transport):
    """Mail through Django's configured backend (SMTP in production)."""

    channel = Channel.EMAIL

    def send(self, notification: Notification) -> None:
        recipients = [r for r in notification.target.split(",") if r]
        if not recipients:
            raise TransportError("no recipients", permanent=True)
        subject, body = describe(notification)
        message = EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
        try:
            sent = message.send(fail_silently=False)
        except OSError as exc:
            # Connection, TLS and SMTP protocol errors are all OSError subclasses;
            # str(exc) carries no credential.
            raise TransportError(f"smtp: {exc}", permanent=_refused(exc)) from exc
        if sent != 1:
            raise TransportError("backend reported nothing sent")


def _refused(exc: OSError) -> bool:
    return isinstance(exc, smtplib.SMTPRecipientsRefused | smtplib.SMTPSenderRefused)


TRANSPORTS: dict[str, Transport] = {t.channel: t for t in (ConsoleTransport(), EmailTransport())}
