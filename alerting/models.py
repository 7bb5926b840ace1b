from django.conf import settings
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


class Channel(models.TextChoices):
    CONSOLE = "console", "Console"
    EMAIL = "email", "Email"


class NotificationKind(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    """One delivery of one alert state over one channel; saved before it is sent."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    target = models.CharField(max_length=500, blank=True)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "kind", "channel"], name="notification_once_per_channel"
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
        ]

    def __str__(self):
        return f"{self.kind} alert {self.alert_id} via {self.channel} ({self.status})"
