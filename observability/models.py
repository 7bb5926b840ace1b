from django.db import models
from django.utils import timezone


class ProfileKind(models.TextChoices):
    REQUEST = "request", "One HTTP request"
    TASK = "task", "One Celery task"
    COMMAND = "command", "A hot path run by manage.py profile"


class ProfileSnapshot(models.Model):
    """One pyinstrument profile: what ran, how long, the call tree as text and as a page."""

    kind = models.CharField(max_length=16, choices=ProfileKind.choices)
    target = models.CharField(
        max_length=300, help_text="The request (method and path), task or hot path profiled."
    )
    created_at = models.DateTimeField(default=timezone.now)
    duration_seconds = models.FloatField()
    requested_by = models.CharField(max_length=150, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)
    summary = models.TextField(help_text="pyinstrument's call tree as text.")
    html = models.TextField(help_text="pyinstrument's interactive page.")

    class Meta:
        ordering = ["-created_at"]
        # Retention walks the oldest first.
        indexes = [models.Index(fields=["created_at"], name="profile_created_idx")]
        permissions = [("profile_requests", "Can profile a request of their own")]

    def __str__(self):
        return f"{self.kind} {self.target} ({self.duration_seconds:.3f}s)"


# --- the console's own recent spans and log lines (observability.store) -------------


class SpanStatus(models.TextChoices):
    UNSET = "unset", "Unset"
    OK = "ok", "OK"
    ERROR = "error", "Error"


class SpanRecord(models.Model):
    """One finished span of this console's own work, kept for a few days.

    ``agent_id``, ``alert_id`` and ``action_id`` are copied out of the span's
    attributes when it names them, so a page can find its spans by index.
    """

    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16)
    service = models.CharField(max_length=100)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status = models.CharField(max_length=8, choices=SpanStatus.choices)
    attributes = models.JSONField(default=dict)
    agent_id = models.CharField(max_length=64, blank=True)
    alert_id = models.CharField(max_length=32, blank=True)
    action_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["started_at"]
        indexes = [
            models.Index(fields=["trace_id"], name="span_trace_idx"),
            models.Index(fields=["agent_id", "started_at"], name="span_agent_idx"),
            models.Index(fields=["alert_id"], name="span_alert_idx"),
            models.Index(fields=["action_id"], name="span_action_idx"),
            # Retention removes the oldest first.
            models.Index(fields=["started_at"], name="span_started_idx"),
        ]

    def __str__(self):
        return f"{self.name} ({self.trace_id}/{self.span_id})"


class LogRecord(models.Model):
    """One structured log line of this console, as its formatter printed it (redacted)."""

    at = models.DateTimeField()
    level = models.CharField(max_length=10)
    logger = models.CharField(max_length=100)
    event = models.CharField(max_length=200)
    trace_id = models.CharField(max_length=32, blank=True)
    span_id = models.CharField(max_length=16, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    agent_id = models.CharField(max_length=64, blank=True)
    alert_id = models.CharField(max_length=32, blank=True)
    action_id = models.CharField(max_length=32, blank=True)
    fields = models.JSONField(default=dict)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["trace_id"], name="log_trace_idx"),
            models.Index(fields=["agent_id", "at"], name="log_agent_idx"),
            models.Index(fields=["alert_id"], name="log_alert_idx"),
            models.Index(fields=["action_id"], name="log_action_idx"),
            models.Index(fields=["at"], name="log_at_idx"),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.level} {self.event}"
