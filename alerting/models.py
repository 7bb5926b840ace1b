from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

# One severity scale for anomalies and alerts; alerting names it as its own.
from monitoring.models import Severity
from omoi_console.foundation.labels import validate_annotations, validate_labels


class RuleKind(models.TextChoices):
    HEARTBEAT = "heartbeat", "Heartbeat lost"
    THRESHOLD = "threshold", "Threshold"
    ANOMALY = "anomaly", "Anomaly"
    ABSENT = "absent", "Absent series"


class AlertRule(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=RuleKind.choices)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    summary = models.CharField(
        max_length=300,
        help_text="Template over the alert's labels, e.g. 'Agent {agent_id} is down'.",
    )
    labels = models.JSONField(default=dict, blank=True, validators=[validate_labels])
    annotations = models.JSONField(default=dict, blank=True, validators=[validate_annotations])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class AlertStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    FIRING = "firing", "Firing"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


OPEN_STATUSES = (AlertStatus.PENDING, AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED)


class Alert(models.Model):
    """One occurrence of a rule for one label set; at most one open per fingerprint."""

    rule = models.ForeignKey(AlertRule, on_delete=models.PROTECT, related_name="alerts")
    fingerprint = models.CharField(max_length=64)
    labels = models.JSONField(default=dict)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    summary = models.CharField(max_length=500)
    status = models.CharField(max_length=16, choices=AlertStatus.choices)
    started_at = models.DateTimeField(default=timezone.now)
    fired_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-started_at"]
        permissions = [("acknowledge_alert", "Can acknowledge alerts")]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=~Q(status="resolved"),
                name="alert_one_open_per_fingerprint",
            )
        ]
        indexes = [models.Index(fields=["status", "started_at"], name="alert_status_idx")]

    def __str__(self):
        return f"{self.rule_id}:{self.fingerprint[:8]} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class Receiver(models.Model):
    """Somewhere notifications go: a kind (one transport) and its configuration.

    ``config`` is validated by the kind's transport in ``clean()``; the keys the
    transport names as secrets are never shown back. ``default`` receivers get
    every alert until routing by labels fills ``delivery.receivers_for``.
    """

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=32)
    config = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    default = models.BooleanField(
        default=False, help_text="Receives every alert (until routes decide per alert)."
    )
    send_resolved = models.BooleanField(default=True, help_text="Also announce resolutions.")
    send_resolved_when_silenced = models.BooleanField(
        default=False,
        help_text="Announce the resolution of an alert that was silenced while it fired.",
    )
    fallback = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="fallback_for",
        help_text="Gets the notification when a delivery here fails for good.",
    )
    # Circuit breaker: consecutive failed attempts, and when attempts may resume.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    circuit_open_until = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def transport(self):
        from alerting.transports import transport_for

        return transport_for(self.kind)

    def secret_keys(self) -> frozenset[str]:
        from alerting.transports import REGISTRY

        transport = REGISTRY.get(self.kind)
        return transport.secret_keys if transport else frozenset()

    def public_config(self) -> dict:
        """The configuration without its secrets."""
        secret = self.secret_keys()
        return {k: v for k, v in self.config.items() if k not in secret}

    def transport_secrets(self) -> list[str]:
        """The secret values, to scrub from anything written down."""
        return [str(self.config[k]) for k in self.secret_keys() if self.config.get(k)]

    def secrets_set(self) -> list[str]:
        return sorted(k for k in self.secret_keys() if self.config.get(k))

    def merged_config(self, incoming: dict, kind: str | None = None) -> dict:
        """``incoming`` with the stored secrets kept where it leaves them out.

        Secrets are never shown, so an edit that does not mention one keeps it;
        ``null`` or ``""`` clears it. A change of kind keeps nothing.
        """
        if not isinstance(incoming, dict):
            return incoming
        if kind is not None and kind != self.kind:
            return dict(incoming)
        merged = dict(incoming)
        for key in self.secret_keys():
            if key not in incoming and key in self.config:
                merged[key] = self.config[key]
        return {k: v for k, v in merged.items() if v is not None}

    def clean(self):
        from alerting.transports import transport_for

        try:
            transport = transport_for(self.kind)
        except ValidationError as exc:
            raise ValidationError({"kind": exc.message_dict["kind"]}) from None
        try:
            self.config = transport.validate_config(self.config)
        except ValidationError as exc:
            messages = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
            raise ValidationError(
                {
                    "config": [
                        f"{key}: {message}" if key and key != "config" else message
                        for key, items in messages.items()
                        for message in items
                    ]
                }
            ) from None
        if self.fallback_id is not None:
            self.check_fallback_chain()

    def check_fallback_chain(self):
        seen = {self.pk} if self.pk else set()
        current = self.fallback
        while current is not None:
            if current.pk in seen or current.pk == self.pk:
                raise ValidationError({"fallback": "fallbacks may not form a cycle"})
            seen.add(current.pk)
            current = current.fallback


class NotificationKind(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    # Dead letter: failed for good (a permanent error or the last attempt); can be re-sent.
    DEAD = "dead", "Dead letter"


class Notification(models.Model):
    """One delivery of one alert state to one receiver; saved before it is sent.

    An audit record: a re-send is a new row pointing at the dead one.
    """

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    receiver = models.ForeignKey(Receiver, on_delete=models.PROTECT, related_name="notifications")
    # The receiver's kind and where it pointed when the notification was made.
    channel = models.CharField(max_length=32)
    target = models.CharField(max_length=500, blank=True)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    dead_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)
    resent_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="resent_as"
    )
    fallback_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="fallbacks"
    )

    class Meta:
        ordering = ["created_at", "id"]
        permissions = [("resend_notification", "Can re-send dead notifications")]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "kind", "receiver"],
                condition=Q(resent_from__isnull=True),
                name="notification_once_per_receiver",
            )
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="notification_due_idx",
            ),
            # Retention walks notifications oldest first.
            models.Index(fields=["created_at"], name="notification_created_idx"),
            models.Index(
                fields=["receiver", "next_attempt_at"],
                condition=Q(status="pending"),
                name="notification_receiver_due_idx",
            ),
        ]

    def __str__(self):
        return f"{self.kind} alert {self.alert_id} via {self.receiver_id} ({self.status})"
