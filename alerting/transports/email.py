"""Mail through Django's configured backend (SMTP in production).

A receiver lists its recipients in ``to``; without them it mails
``OMOI_ALERT_EMAIL_TO``, which is how the built-in ``email`` receiver follows
the setting.
"""

import smtplib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.core.validators import validate_email

from alerting.transports.base import Transport, TransportError, describe, register

MAX_RECIPIENTS = 50


def recipients(receiver) -> list[str]:
    return list(receiver.config.get("to") or settings.ALERT_EMAIL_RECIPIENTS)


@register
class EmailTransport(Transport):
    kind = "email"
    label = "Email"

    def config_keys(self):
        return ("to",)

    def validate_config(self, config: dict) -> dict:
        super().validate_config(config)
        to = config.get("to", [])
        if isinstance(to, str):
            to = [part.strip() for part in to.split(",") if part.strip()]
        if not isinstance(to, list) or not all(isinstance(a, str) for a in to):
            raise ValidationError({"to": "a list of email addresses"})
        if len(to) > MAX_RECIPIENTS:
            raise ValidationError({"to": f"at most {MAX_RECIPIENTS} recipients"})
        for address in to:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError({"to": f"not an email address: {address[:100]}"}) from None
        return {"to": to} if to else {}

    def addressable(self, receiver) -> bool:
        return bool(recipients(receiver))

    def target(self, receiver) -> str:
        return ",".join(recipients(receiver))[:500]

    def send(self, notification) -> None:
        to = recipients(notification.receiver)
        if not to:
            raise TransportError("no recipients", permanent=True)
        subject, body = describe(notification)
        message = EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, to)
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
