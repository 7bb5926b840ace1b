from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from omoi_console.foundation.labels import validate_labels
from omoi_console.foundation.tokens import HashedToken

AGENT_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
agent_id_validator = RegexValidator(
    rf"^{AGENT_ID_PATTERN}\Z",
    "Use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


class AgentRole(models.TextChoices):
    WORKER = "worker", "Worker"
    MONITOR = "monitor", "Monitor"
    SCHEDULER = "scheduler", "Scheduler"


class AgentState(models.TextChoices):
    SPAWNING = "spawning", "Spawning"
    IDLE = "idle", "Idle"
    RUNNING = "running", "Running"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    RESTARTING = "restarting", "Restarting"
    QUARANTINED = "quarantined", "Quarantined"
    TERMINATED = "terminated", "Terminated"


HEALTHY_STATES = frozenset({AgentState.IDLE, AgentState.RUNNING})
# What an agent may say about itself in a heartbeat.
REPORTABLE_STATES = (AgentState.IDLE, AgentState.RUNNING, AgentState.FAILED)
TASK_ID_MAX_LENGTH = 200
MAX_ACKS_PER_HEARTBEAT = 100
UNHEALTHY_STATES = frozenset({AgentState.DEGRADED, AgentState.FAILED, AgentState.RESTARTING})


class Agent(models.Model):
    """Our mirror of one agent of the fleet.

    ``overdue_at`` is the next moment a missing heartbeat changes the agent's
    state, precomputed on every heartbeat, so "who is overdue?" is one indexed
    query. It is empty when no heartbeat is expected (failed, quarantined, terminated).
    """

    id = models.CharField(primary_key=True, max_length=64, validators=[agent_id_validator])
    role = models.CharField(max_length=16, choices=AgentRole.choices)
    state = models.CharField(max_length=16, choices=AgentState.choices, default=AgentState.SPAWNING)
    labels = models.JSONField(default=dict, blank=True, validators=[validate_labels])
    heartbeat_interval = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.5), MaxValueValidator(3600)],
        help_text="Seconds (0.5 to 3600); empty uses the site default.",
    )
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    overdue_at = models.DateTimeField(null=True, blank=True)
    missed_heartbeats = models.PositiveSmallIntegerField(default=0)
    unhealthy_since = models.DateTimeField(null=True, blank=True)
    current_task = models.CharField(max_length=TASK_ID_MAX_LENGTH, blank=True)
    task_progress = models.FloatField(null=True, blank=True)
    state_changed_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["overdue_at"],
                condition=Q(overdue_at__isnull=False),
                name="agent_overdue_idx",
            ),
            models.Index(fields=["state"], name="agent_state_idx"),
        ]

    def __str__(self):
        return self.id

    @property
    def interval_seconds(self) -> float:
        return self.heartbeat_interval or settings.HEARTBEAT_INTERVAL_SECONDS


class AgentTransition(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=16, choices=AgentState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=AgentState.choices)
    reason = models.CharField(max_length=200)
    actor = models.CharField(max_length=100)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["agent", "at"], name="transition_agent_idx")]

    def __str__(self):
        return f"{self.agent_id}: {self.from_state or '-'} -> {self.to_state}"


class AgentToken(HashedToken):
    """Ingest token of one agent: it may only speak for that agent."""

    KIND = "ag"
    OWNER = "agent"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")

    class Meta:
        # The newest revocation, polled by a serving process that has no
        # channel to hear about revocations made elsewhere.
        indexes = [models.Index(fields=["revoked_at"], name="agenttoken_revoked_idx")]


class CommandKind(models.TextChoices):
    RESTART = "restart", "Restart"


class CommandStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    DELIVERED = "delivered", "Delivered"
    ACKED = "acked", "Acknowledged by the agent"


class AgentCommand(models.Model):
    """An instruction for an agent, handed over in its next heartbeat response."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="commands")
    kind = models.CharField(max_length=32, choices=CommandKind.choices)
    status = models.CharField(
        max_length=16, choices=CommandStatus.choices, default=CommandStatus.QUEUED
    )
    reason = models.CharField(max_length=200)
    issued_by = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["agent", "status"], name="command_agent_status_idx")]

    def __str__(self):
        return f"{self.kind} for {self.agent_id} ({self.status})"


class MetricSeries(models.Model):
    """One metric with one label set: what samples, rollups and detectors hang off.

    ``fingerprint`` is a hash of the label set, so "this metric with these
    labels" is one indexed lookup; ``agent_id`` repeats the ``agent`` label (if
    any) so the query API can rank and filter agents without reading JSON.
    """

    id = models.BigAutoField(primary_key=True)
    metric = models.CharField(max_length=100)
    labels = models.JSONField(default=dict)
    fingerprint = models.CharField(max_length=32)
    agent_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "metric series"
        constraints = [
            models.UniqueConstraint(fields=["metric", "fingerprint"], name="series_once")
        ]

    def __str__(self):
        labels = ",".join(f"{name}={value}" for name, value in sorted(self.labels.items()))
        return f"{self.metric}{{{labels}}}"


class MetricSample(models.Model):
    """One sample. The table is created by the migration, not by Django: on
    PostgreSQL it is partitioned by day on ``ts`` (written with COPY, dropped a
    partition at a time), on SQLite a plain table. Rows are never addressed one
    by one; the key below only satisfies the ORM."""

    pk = models.CompositePrimaryKey("series_id", "ts")
    series = models.ForeignKey(MetricSeries, on_delete=models.DO_NOTHING, db_constraint=False)
    ts = models.DateTimeField()
    value = models.FloatField()

    class Meta:
        managed = False
        db_table = "monitor_samples"

    def __str__(self):
        return f"{self.series_id}@{self.ts.isoformat()}={self.value}"


class MetricRollup(models.Model):
    """Per series and minute: count, sum, min, max, the usual percentiles and the
    mergeable sketch they came from, so any coarser step merges sketches instead
    of rereading samples. Partitioned by day like the samples, on PostgreSQL."""

    pk = models.CompositePrimaryKey("series_id", "minute")
    series = models.ForeignKey(MetricSeries, on_delete=models.DO_NOTHING, db_constraint=False)
    minute = models.DateTimeField()
    count = models.BigIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    p50 = models.FloatField()
    p95 = models.FloatField()
    p99 = models.FloatField()
    sketch = models.BinaryField()

    class Meta:
        managed = False
        db_table = "monitor_rollups"

    def __str__(self):
        return f"{self.series_id}@{self.minute.isoformat()} n={self.count}"


class IngestBatch(models.Model):
    """A batch stored under the client's idempotency key: a resent batch is not stored twice."""

    key = models.CharField(primary_key=True, max_length=200)
    samples = models.PositiveIntegerField()
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self):
        return self.key


class RollupCursor(models.Model):
    """How far the rollup job has come: every minute before ``rolled_until`` is rolled up.

    A sample that arrives for an earlier minute marks that minute in
    ``RollupBacklog``, and the job rolls it up again.
    """

    name = models.CharField(primary_key=True, max_length=32, default="samples")
    rolled_until = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.name}: {self.rolled_until}"


class RollupBacklog(models.Model):
    minute = models.DateTimeField(primary_key=True)

    def __str__(self):
        return self.minute.isoformat()


class Severity(models.TextChoices):
    """The severities of the whole product (alert rules use the same four)."""

    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    ERROR = "error", "Error"
    CRITICAL = "critical", "Critical"


class AnomalyDirection(models.TextChoices):
    UP = "up", "Above the expected range"
    DOWN = "down", "Below the expected range"


class MonitorAnomaly(models.Model):
    """A stretch of time in which a detector found a series outside its expected range.

    Open while ``ended_at`` is empty; a detector keeps at most one open anomaly
    per series. ``metric`` and ``agent_id`` repeat the series' own, so summaries
    count by them without a join. ``explanation`` holds what the detector
    expected (``expected_low``, ``expected_high``) against what it saw
    (``observed``).
    """

    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="anomalies")
    metric = models.CharField(max_length=100)
    agent_id = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    peak_score = models.FloatField()
    direction = models.CharField(max_length=8, choices=AnomalyDirection.choices)
    detector = models.CharField(max_length=64)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    explanation = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "monitor_anomalies"
        verbose_name_plural = "anomalies"
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["series", "detector"],
                condition=Q(ended_at__isnull=True),
                name="anomaly_open_once",
            )
        ]
        indexes = [
            # The open anomalies, newest first: the console's standing list.
            models.Index(
                fields=["-started_at"],
                condition=Q(ended_at__isnull=True),
                name="anomaly_open_idx",
            ),
            # Windows: open at some moment of [since, until) is "still open, or ended
            # after since" (a bitmap OR over this index; IS NULL included) and
            # "started before until".
            models.Index(fields=["ended_at"], name="anomaly_ended_idx"),
            models.Index(fields=["started_at"], name="anomaly_started_idx"),
            models.Index(fields=["metric", "started_at"], name="anomaly_metric_idx"),
            models.Index(fields=["agent_id", "started_at"], name="anomaly_agent_idx"),
        ]

    def __str__(self):
        return f"{self.metric} {self.direction} on series {self.series_id} ({self.severity})"
