import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone

from omoi_console.foundation.tokens import HashedToken


class EventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    DEAD = "dead", "Dead (gave up)"


class Event(models.Model):
    """One fact on the bus, written in the publisher's transaction (outbox).

    ``dispatch_after`` is when the sweeper may dispatch it again: set past the
    normal after-commit dispatch on insert, moved forward on every claim and
    failure, so a pending event whose worker died is picked up once it lapses.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    payload = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    occurred_at = models.DateTimeField(default=timezone.now)
    trace_id = models.CharField(max_length=32, blank=True)
    span_id = models.CharField(max_length=16, blank=True)
    key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    status = models.CharField(
        max_length=16, choices=EventStatus.choices, default=EventStatus.PENDING
    )
    dispatch_after = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["occurred_at"]
        indexes = [
            models.Index(fields=["name", "occurred_at"], name="event_name_idx"),
            # Retention walks the finished events of one status oldest first.
            models.Index(fields=["status", "occurred_at"], name="event_status_age_idx"),
            models.Index(
                fields=["dispatch_after"],
                condition=Q(status="pending"),
                name="event_pending_idx",
            ),
        ]

    def __str__(self):
        return f"{self.name} {self.id}"


class EventReceipt(models.Model):
    """Proof that one handler has acted on one event: the idempotency key."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="receipts")
    handler = models.CharField(max_length=150)
    handled_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event", "handler"], name="event_receipt_once")
        ]

    def __str__(self):
        return f"{self.handler} <- {self.event_id}"


class OperatorToken(HashedToken):
    """API token for an operator; acts with the user's roles."""

    KIND = "op"
    OWNER = "user"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
