import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import (
    MaxValueValidator,
    MinValueValidator,
    ProhibitNullCharactersValidator,
    RegexValidator,
)
from django.db import models
from django.db.models import Q
from django.utils import timezone

from monitoring import catalog
from monitoring.catalog import DetectOn
from monitoring.detectors import get_detector
from omoi_console.foundation.labels import storable, validate_labels
from omoi_console.foundation.tokens import HashedToken

AGENT_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
agent_id_validator = RegexValidator(
    rf"^{AGENT_ID_PATTERN}\Z",
    "Use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit.",
)
version_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z",
    "Use 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit "
    "(e.g. 1.4.2 or 2026.11-rc1).",
)
CAPABILITY = re.compile(r"[a-z0-9][a-z0-9._:-]{0,47}")
CAPABILITY_RULE = (
    "1-48 lowercase letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
)
MAX_CAPABILITIES = 32


def validate_capabilities(value) -> None:
    """A list of at most 32 distinct short names, e.g. ``["python", "gpu", "lang:go"]``."""
    if not isinstance(value, list):
        raise ValidationError("Must be a list of capability names.")
    problems = []
    if len(value) > MAX_CAPABILITIES:
        problems.append(f"At most {MAX_CAPABILITIES} capabilities.")
    for item in value[: MAX_CAPABILITIES + 1]:
        if not isinstance(item, str) or not CAPABILITY.fullmatch(item):
            shown = repr(item[:48]) if isinstance(item, str) and storable(item) else "an item"
            problems.append(f"{shown}: capabilities are {CAPABILITY_RULE}.")
    names = [item for item in value if isinstance(item, str)]
    if len(set(names)) != len(names):
        problems.append("Each capability may appear once.")
    if problems:
        raise ValidationError(problems)


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
    STUCK = "stuck", "Stuck (heartbeating, no progress)"
    QUARANTINED = "quarantined", "Quarantined"
    TERMINATED = "terminated", "Terminated"


HEALTHY_STATES = frozenset({AgentState.IDLE, AgentState.RUNNING})
# What an agent may say about itself in a heartbeat.
REPORTABLE_STATES = (AgentState.IDLE, AgentState.RUNNING, AgentState.FAILED)
TASK_ID_MAX_LENGTH = 200
MAX_ACKS_PER_HEARTBEAT = 100
# A stuck agent is alive but not working: treated like a failure.
UNHEALTHY_STATES = frozenset(
    {AgentState.DEGRADED, AgentState.FAILED, AgentState.RESTARTING, AgentState.STUCK}
)
# Bounds of a stuck threshold, whether from a heartbeat or from settings.
STUCK_AFTER_MIN_SECONDS = 10.0
STUCK_AFTER_MAX_SECONDS = 86400.0


class Agent(models.Model):
    """Our mirror of one agent of the fleet.

    ``overdue_at`` is the next moment a missing heartbeat changes the agent's
    state, precomputed on every heartbeat, so "who is overdue?" is one indexed
    query. It is empty when no heartbeat is expected (failed, quarantined, terminated).

    ``stuck_at`` is the same for progress: the moment a running agent whose task
    has not moved since ``progress_changed_at`` becomes STUCK. It is set only
    while the agent runs a task, and moves whenever the task or its progress does.

    The registry fields (name, capabilities, owner, version, role, labels) mirror
    what the fleet's registry knows; ``registry.sync_registry`` keeps them in step.
    """

    id = models.CharField(primary_key=True, max_length=64, validators=[agent_id_validator])
    name = models.CharField(
        max_length=100,
        blank=True,
        validators=[ProhibitNullCharactersValidator()],
        help_text="Display name; empty shows the id.",
    )
    role = models.CharField(max_length=16, choices=AgentRole.choices)
    capabilities = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_capabilities],
        help_text=f"What the agent can do: a list of {CAPABILITY_RULE}.",
    )
    owner = models.CharField(
        max_length=100,
        blank=True,
        validators=[ProhibitNullCharactersValidator()],
        help_text="Team or person responsible for the agent.",
    )
    version = models.CharField(max_length=64, blank=True, validators=[version_validator])
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
    progress_changed_at = models.DateTimeField(null=True, blank=True)
    task_stuck_after = models.FloatField(
        null=True,
        blank=True,
        help_text="Seconds without progress after which the current task counts as stuck, "
        "as its heartbeats set it; empty uses the role's default.",
    )
    stuck_at = models.DateTimeField(null=True, blank=True)
    restart_generation = models.PositiveIntegerField(
        default=0,
        help_text="Bumped by every restart command; the agent echoes the generation it "
        "restarted into, so a report older than the restart does not count against it.",
    )
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
            models.Index(
                fields=["stuck_at"],
                condition=Q(stuck_at__isnull=False),
                name="agent_stuck_idx",
            ),
            models.Index(fields=["state"], name="agent_state_idx"),
        ]

    def __str__(self):
        return self.id

    @property
    def interval_seconds(self) -> float:
        """The agent's own interval, else its role's."""
        return self.heartbeat_interval or role_interval(self.role)

    @property
    def stuck_after_seconds(self) -> float:
        """The current task's threshold, else the role's default."""
        return self.task_stuck_after or role_stuck_after(self.role)


def role_interval(role: str) -> float:
    return settings.HEARTBEAT_INTERVAL_BY_ROLE.get(role, settings.HEARTBEAT_INTERVAL_SECONDS)


def role_stuck_after(role: str) -> float:
    return settings.STUCK_AFTER_BY_ROLE.get(role, settings.STUCK_AFTER_SECONDS)


class AgentTransition(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=16, choices=AgentState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=AgentState.choices)
    reason = models.CharField(max_length=200)
    actor = models.CharField(max_length=100)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]
        indexes = [
            models.Index(fields=["agent", "at"], name="transition_agent_idx"),
            # Retention walks the whole fleet's transitions oldest first.
            models.Index(fields=["at"], name="transition_at_idx"),
        ]

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
    DRAIN = "drain", "Drain (finish the current task, take no new one)"
    RECYCLE_TOKEN = "recycle_token", "Recycle the ingest token"
    TAKE_TASK = "take_task", "Take over another agent's task"


class CommandStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    DELIVERED = "delivered", "Delivered"
    ACKED = "acked", "Acknowledged by the agent"
    CANCELLED = "cancelled", "Cancelled (what it served is over)"
    EXPIRED = "expired", "Expired before delivery"


class AgentCommand(models.Model):
    """An instruction for an agent, handed over in its next heartbeat response."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="commands")
    kind = models.CharField(max_length=32, choices=CommandKind.choices)
    status = models.CharField(
        max_length=16, choices=CommandStatus.choices, default=CommandStatus.QUEUED
    )
    reason = models.CharField(max_length=200)
    issued_by = models.CharField(max_length=100)
    # What the command serves, opaque to monitoring (e.g. "remediation:42"): the
    # layer above cancels everything serving it when it is over.
    serves = models.CharField(max_length=100, blank=True)
    # Left queued past this, it is never handed out (EXPIRED).
    expires_at = models.DateTimeField(null=True, blank=True)
    # A restart's generation (Agent.restart_generation after it was queued).
    generation = models.PositiveIntegerField(null=True, blank=True)
    # Kind-specific parameters sent with the command (graceful_stop_seconds ...).
    params = models.JSONField(default=dict, blank=True)
    # The trace of whatever queued it (a remediation): the heartbeats that take
    # and answer the command continue it, so a restart and the recovery it
    # brings are one trace.
    trace_id = models.CharField(max_length=32, blank=True)
    span_id = models.CharField(max_length=16, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["agent", "status"], name="command_agent_status_idx"),
            models.Index(fields=["serves"], condition=~Q(serves=""), name="command_serves_idx"),
        ]

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


def validate_metric_name(value: str) -> None:
    if catalog.get(value) is None:
        raise ValidationError(f"{value!r} is not a metric of the catalogue.")


class DetectorSetting(models.Model):
    """An operator's choice of anomaly detection for one metric, replacing the catalogue's.

    Without a row, a metric is watched as the catalogue declares. A row can turn
    detection off (``enabled`` false), pick another detector or other parameters,
    feed it another number of the minute, or set the severity of what it finds.
    Changing the detector, its parameters or ``on`` starts every series of the
    metric afresh (a new warm-up): the old state answers a different question.
    """

    metric = models.CharField(
        max_length=100,
        unique=True,
        validators=[validate_metric_name],
        help_text="A metric of the catalogue, e.g. task_latency_seconds.",
    )
    enabled = models.BooleanField(
        default=True, help_text="Off: the metric's series are not watched at all."
    )
    detector = models.CharField(
        max_length=64, help_text="A detector by name, e.g. robust_seasonal."
    )
    params = models.JSONField(
        default=dict,
        blank=True,
        help_text='Parameters of the detector, e.g. {"threshold": 3}; empty uses its defaults.',
    )
    on = models.CharField(
        max_length=16,
        choices=DetectOn.choices,
        help_text="Which number of each minute the detector is fed.",
    )
    severity = models.CharField(
        max_length=16,
        choices=Severity.choices,
        default=Severity.WARNING,
        help_text="Severity of the anomalies it opens.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "monitor_detector_settings"
        ordering = ["metric"]

    def __str__(self):
        return f"{self.metric}: {self.detector if self.enabled else 'off'}"

    def clean(self):
        super().clean()
        if not isinstance(self.params, dict):
            raise ValidationError({"params": "Must be an object of parameter names and values."})
        try:
            get_detector(self.detector, **self.params)
        except ValueError as exc:
            field = "detector" if "unknown detector" in str(exc) else "params"
            raise ValidationError({field: str(exc)}) from None


class SeriesDetector(models.Model):
    """The detector of one series between two runs: its state, and where it got to.

    ``config`` names the detector, parameters and input the state was built
    with; a different configuration starts a fresh state. ``score`` is what the
    composite health reads: the peak of the excursion while one is open, else the
    last score. ``previous`` is the last raw reading, for counters' increase.
    """

    series = models.OneToOneField(
        MetricSeries, on_delete=models.CASCADE, primary_key=True, related_name="detector"
    )
    config = models.CharField(max_length=200)
    # Text, not JSON: the worker writes and reads it whole, and text is several
    # times cheaper to move in bulk than jsonb (measured by bench/detection.py).
    state = models.TextField(help_text="The detector's state as compact JSON.")
    minute = models.DateTimeField(help_text="The last minute fed to the detector.")
    value = models.FloatField(help_text="The last value fed to the detector.")
    previous = models.FloatField(null=True, blank=True)
    score = models.FloatField(default=0.0)

    class Meta:
        db_table = "monitor_detector_states"

    def __str__(self):
        return f"series {self.series_id}: {self.config}"


class AgentHealth(models.Model):
    """One agent's composite health: a weighted score of what its signals say, in [0, 1].

    0 is healthy, 1 as unhealthy as it gets. ``components`` keeps each part
    (latency, errors, heartbeat, blocked) so an operator sees why. ``streak``
    counts consecutive evaluations at or above the threshold; ``anomalous``
    is set once the streak is long enough and cleared by the first one below.
    """

    agent = models.OneToOneField(
        Agent, on_delete=models.CASCADE, primary_key=True, related_name="health"
    )
    score = models.FloatField(default=0.0)
    components = models.JSONField(default=dict)
    streak = models.PositiveIntegerField(default=0)
    anomalous = models.BooleanField(default=False)
    anomalous_since = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField()

    class Meta:
        db_table = "monitor_agent_health"
        verbose_name_plural = "agent health"
        indexes = [
            models.Index(fields=["-score"], name="agent_health_score_idx"),
            models.Index(
                fields=["agent"], condition=Q(anomalous=True), name="agent_health_anomalous_idx"
            ),
        ]

    def __str__(self):
        return f"{self.agent_id}: {self.score:.2f}"
