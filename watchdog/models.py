from django.db import models
from django.utils import timezone

from monitoring.models import Agent, AgentCommand, AgentRole


class Trigger(models.TextChoices):
    AGENT_FAILED = "agent_failed", "Agent failed (heartbeats lost, or reported by the agent)"


class Step(models.TextChoices):
    RESTART_WORKER = "restart_worker", "Restart the worker"


class RemediationPolicy(models.Model):
    """What to do, automatically, when a trigger matches an agent."""

    name = models.SlugField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    trigger = models.CharField(max_length=32, choices=Trigger.choices)
    agent_role = models.CharField(
        max_length=16, choices=AgentRole.choices, blank=True, help_text="Empty matches every role."
    )
    step = models.CharField(max_length=32, choices=Step.choices)
    verify_seconds = models.PositiveIntegerField(
        default=60, help_text="The agent must be healthy again within this many seconds."
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=300, help_text="No second action on the same agent within this window."
    )
    max_per_hour = models.PositiveIntegerField(default=3)
    dry_run = models.BooleanField(default=False)
    priority = models.PositiveIntegerField(default=100, help_text="Lower runs first.")

    class Meta:
        ordering = ["priority", "name"]
        verbose_name_plural = "remediation policies"

    def __str__(self):
        return self.name


class ActionStatus(models.TextChoices):
    STARTED = "started", "Started, awaiting recovery"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    DRY_RUN = "dry_run", "Dry run (nothing done)"


class RemediationAction(models.Model):
    """One remediation attempt on one agent, audited start to finish."""

    policy = models.ForeignKey(RemediationPolicy, on_delete=models.PROTECT, related_name="actions")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="remediations")
    step = models.CharField(max_length=32, choices=Step.choices)
    status = models.CharField(max_length=16, choices=ActionStatus.choices)
    idempotency_key = models.CharField(max_length=200, unique=True)
    trigger_event_id = models.UUIDField(null=True, blank=True)
    reason = models.CharField(max_length=300)
    actor = models.CharField(max_length=100, default="watchdog")
    before_state = models.CharField(max_length=16, blank=True)
    after_state = models.CharField(max_length=16, blank=True)
    command = models.ForeignKey(AgentCommand, null=True, blank=True, on_delete=models.SET_NULL)
    started_at = models.DateTimeField(default=timezone.now)
    verify_by = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=300, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["status", "verify_by"], name="action_verify_idx"),
            models.Index(fields=["agent", "policy", "started_at"], name="action_agent_idx"),
            # Retention walks finished actions, the longest finished first.
            models.Index(fields=["finished_at"], name="action_finished_idx"),
        ]

    def __str__(self):
        return f"{self.step} on {self.agent_id} ({self.status})"
