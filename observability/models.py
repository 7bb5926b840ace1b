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
