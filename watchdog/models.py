from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from monitoring.models import Agent, AgentRole

DEFAULT_COOLDOWN_SECONDS = 60
DEFAULT_MAX_RESTARTS_PER_HOUR = 3
DEFAULT_GRACEFUL_STOP_SECONDS = 10
DEFAULT_VERIFY_SECONDS = 60


class Trigger(models.TextChoices):
    AGENT_FAILED = "agent_failed", "Agent failed (heartbeats lost, reported failed, or stuck)"
    ALERT = "alert", "Alert triggered (matched on rule, severity and labels)"
    # An operator asked through the API; only the built-in ``manual`` policy has it.
    MANUAL = "manual", "Manual action by an operator"


class Step(models.TextChoices):
    """The kinds of step a policy may list; each is a module of ``watchdog.steps``."""

    RESTART_WORKER = "restart_worker", "Restart the worker"
    RECYCLE_TOKEN = "recycle_token", "Recycle the agent's token"
    DRAIN = "drain", "Drain (finish the current task, take no new one)"
    MARK_UNHEALTHY = "mark_unhealthy", "Mark unhealthy (degraded)"
    QUARANTINE = "quarantine", "Quarantine"
    FAILOVER = "failover", "Fail over (hand the current task to a healthy agent of the role)"
    REQUEST_REPLACEMENT = "request_replacement", "Request a replacement agent of the role"
    ESCALATE = "escalate", "Escalate to a person"
    RELEASE = "release", "Release from quarantine (operators only)"


def default_steps() -> list:
    return [{"kind": Step.RESTART_WORKER.value, "after": 0, "verify": DEFAULT_VERIFY_SECONDS}]


class EscalationChain(models.Model):
    """Who hears of an agent the watchdog gave up on, level by level.

    ``levels`` is ``[{"receivers": [...], "after": seconds, "guardian": bool}, ...]``:
    level 1 is told ``after`` seconds after the escalation (usually 0: at once),
    each next level ``after`` seconds after the one before, unless the agent
    recovered or someone acknowledged the alert meanwhile. A ``guardian`` level
    tells the configured guardian receiver (OMOI_WATCHDOG_GUARDIAN_RECEIVER) too.
    """

    name = models.SlugField(max_length=100, unique=True)
    levels = models.JSONField(default=list)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        from watchdog.chains import level_problems

        problems = level_problems(self.levels)
        if problems:
            raise ValidationError({"levels": problems})


class RemediationPolicy(models.Model):
    """What to do, automatically, when a trigger matches an agent.

    ``steps`` is an ordered list of ``{"kind", "after", "verify"}``: act, then wait
    ``after`` seconds (at least ``verify``) for the agent to be healthy again; if
    it is not, the next step acts. After the last step, the action escalates.
    """

    name = models.SlugField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    trigger = models.CharField(max_length=32, choices=Trigger.choices)
    alert_rule = models.CharField(
        max_length=100, blank=True, help_text="Alert trigger: the rule's name; empty matches any."
    )
    severity = models.CharField(
        max_length=16, blank=True, help_text="Alert trigger: the severity; empty matches any."
    )
    matchers = models.JSONField(
        default=list,
        blank=True,
        help_text="Alert trigger: Alertmanager matchers on the alert's labels, "
        'e.g. ["queue=~in.*"].',
    )
    agent_role = models.CharField(
        max_length=16, choices=AgentRole.choices, blank=True, help_text="Empty matches every role."
    )
    steps = models.JSONField(
        default=default_steps,
        help_text='Ordered steps: [{"kind": "restart_worker", "after": 0, "verify": 60}, ...]; '
        '"approve": 600 makes a step wait up to 600 s for an operator\'s approval.',
    )
    graceful_stop_seconds = models.PositiveIntegerField(
        default=DEFAULT_GRACEFUL_STOP_SECONDS,
        help_text="Carried on restart commands: how long the agent may take to stop.",
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=DEFAULT_COOLDOWN_SECONDS,
        help_text="Per agent: no new action acts within this window of the last one "
        "(the floor under the restart backoff).",
    )
    max_per_hour = models.PositiveIntegerField(
        default=DEFAULT_MAX_RESTARTS_PER_HOUR,
        help_text="Restarts per agent per hour; past it, the action escalates instead.",
    )
    dry_run = models.BooleanField(default=False)
    priority = models.PositiveIntegerField(default=100, help_text="Lower runs first.")
    escalation_chain = models.ForeignKey(
        EscalationChain,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="policies",
        help_text="Who is told, level by level, when this policy's action escalates.",
    )

    class Meta:
        ordering = ["priority", "name"]
        verbose_name_plural = "remediation policies"

    def __str__(self):
        return self.name

    def clean(self):
        from watchdog.policies import policy_problems

        problems = policy_problems(
            {
                "trigger": self.trigger,
                "alert_rule": self.alert_rule,
                "severity": self.severity,
                "matchers": self.matchers,
                "agent_role": self.agent_role,
                "steps": self.steps,
            }
        )
        if problems:
            raise ValidationError(problems)


class ActionStatus(models.TextChoices):
    PLANNED = "planned", "Planned (the next step is due at next_step_at)"
    RUNNING = "running", "Running (a step acted; waiting before the next)"
    VERIFYING = "verifying", "Verifying (waiting for the agent to recover)"
    AWAITING_APPROVAL = (
        "awaiting_approval",
        "Awaiting approval (an operator approves or rejects the step before it acts)",
    )
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ESCALATED = "escalated", "Escalated to a person"
    SKIPPED = "skipped", "Skipped"


OPEN_ACTION_STATUSES = (
    ActionStatus.PLANNED,
    ActionStatus.RUNNING,
    ActionStatus.VERIFYING,
    ActionStatus.AWAITING_APPROVAL,
)


class ApprovalDecision(models.TextChoices):
    """How a step that asked for approval was answered."""

    APPROVED = "approved", "Approved by an operator"
    REJECTED = "rejected", "Rejected by an operator"
    EXPIRED = "expired", "Nobody decided in time (treated as rejected)"
    # The action closed for another reason while it waited: the agent recovered,
    # was terminated, or the action was otherwise finished.
    WITHDRAWN = "withdrawn", "Withdrawn (the action ended while it waited)"


class SkipReason(models.TextChoices):
    """Why an action did nothing. The cooldown and the restart backoff do not skip:
    they defer the step (``watchdog.action.deferred``) until their gate opens."""

    HOURLY_CAP = "hourly_cap", "Hourly cap of restarts reached"
    DRY_RUN = "dry_run", "Dry run"
    NOT_ACTIONABLE = "not_actionable", "Agent not actionable"
    BUSY = "busy", "Another action is remediating the agent"
    STORM_GUARD = "storm_guard", "Storm guard: restarts of the role are paused"
    BUDGET = "budget", "Fleet-wide budget of actions per minute spent"
    POLICY_RATE = "policy_rate", "The policy's actions per minute spent"
    CAPACITY_FLOOR = "capacity_floor", "Too few healthy agents of the role would remain"
    BREAKER_OPEN = "breaker_open", "The policy's circuit breaker is open"
    REJECTED = "rejected", "An operator rejected the step, or nobody approved it in time"


class RemediationAction(models.Model):
    """One remediation of one agent for one episode, audited start to finish.

    ``idempotency_key`` is (policy, agent, alert fingerprint or trigger, episode):
    every copy of the events about one failure lands on this one row.
    ``step_index`` is the step that acts next (or acted last, while waiting);
    ``next_step_at`` is when the periodic job (``advance_due``) next looks at it;
    while a step awaits approval, that is when the approval expires.
    """

    policy = models.ForeignKey(RemediationPolicy, on_delete=models.PROTECT, related_name="actions")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="remediations")
    trigger = models.CharField(max_length=32, choices=Trigger.choices, default=Trigger.AGENT_FAILED)
    step = models.CharField(max_length=32, choices=Step.choices, help_text="The current step.")
    steps = models.JSONField(default=list, help_text="The policy's steps when the action opened.")
    step_index = models.PositiveSmallIntegerField(default=0)
    next_step_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=32, choices=ActionStatus.choices)
    skip_reason = models.CharField(max_length=16, choices=SkipReason.choices, blank=True)
    idempotency_key = models.CharField(max_length=200, unique=True)
    alert_fingerprint = models.CharField(max_length=64, blank=True)
    episode = models.CharField(max_length=64, blank=True)
    trigger_event_id = models.UUIDField(null=True, blank=True)
    reason = models.CharField(max_length=300)
    actor = models.CharField(max_length=100, default="watchdog")
    dry_run = models.BooleanField(default=False)
    context = models.JSONField(
        default=dict, blank=True, help_text="What monitoring said when the action was decided."
    )
    history = models.JSONField(default=list, blank=True, help_text="Each step as it went.")
    before_state = models.CharField(max_length=16, blank=True)
    after_state = models.CharField(max_length=16, blank=True)
    command = models.ForeignKey(
        "monitoring.AgentCommand", null=True, blank=True, on_delete=models.SET_NULL
    )
    started_at = models.DateTimeField(default=timezone.now)
    verify_by = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=300, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)
    # The span that opened it: later steps are its children.
    span_id = models.CharField(max_length=16, blank=True)
    # The policy's escalation chain, walked after the action escalated.
    escalation_level = models.PositiveSmallIntegerField(default=0)
    escalation_next_at = models.DateTimeField(null=True, blank=True)
    # A step that asks for approval: set while it waits (``awaiting_approval``), the
    # decision kept afterwards. Every request and decision is also a line in ``history``.
    approval_expires_at = models.DateTimeField(null=True, blank=True)
    approval_decision = models.CharField(
        max_length=16, choices=ApprovalDecision.choices, blank=True
    )
    approval_decided_by = models.CharField(max_length=150, blank=True)
    approval_decided_at = models.DateTimeField(null=True, blank=True)
    approval_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-started_at"]
        permissions = [("act_on_agent", "Can run manual remediation actions on agents")]
        indexes = [
            models.Index(fields=["status", "verify_by"], name="action_verify_idx"),
            models.Index(fields=["agent", "policy", "started_at"], name="action_agent_idx"),
            # Retention walks finished actions, the longest finished first.
            models.Index(fields=["finished_at"], name="action_finished_idx"),
            # The periodic job's claim: open actions whose next step is due.
            models.Index(
                fields=["escalation_next_at"],
                condition=Q(escalation_next_at__isnull=False),
                name="action_escalation_due_idx",
            ),
            models.Index(
                fields=["next_step_at"],
                condition=Q(status__in=["planned", "running", "verifying", "awaiting_approval"]),
                name="action_due_idx",
            ),
        ]

    def __str__(self):
        return f"{self.step} on {self.agent_id} ({self.status})"

    @property
    def serves(self) -> str:
        """What this action's agent commands name, so they are cancelled with it."""
        return f"remediation:{self.pk}"


class RestartBackoff(models.Model):
    """Per-agent restart backoff, as Kubernetes does it: 10 s doubling to 5 min.

    ``streak`` counts the watchdog's restarts since the agent last ran cleanly
    for ``BACKOFF_RESET`` (10 min); the next restart may not act before
    ``last_restart_at`` plus the delay of the streak.
    """

    agent = models.OneToOneField(
        Agent, on_delete=models.CASCADE, primary_key=True, related_name="restart_backoff"
    )
    streak = models.PositiveIntegerField(default=0)
    last_restart_at = models.DateTimeField(null=True, blank=True)
    # The per-agent cooldown counts from the last act of any action on the agent.
    last_acted_at = models.DateTimeField(null=True, blank=True)
    last_action_id = models.BigIntegerField(null=True, blank=True)

    def __str__(self):
        return f"{self.agent_id}: {self.streak} restart(s)"


class WatchdogSwitch(models.Model):
    """The fleet-wide kill switch: one row. On, the whole watchdog is a dry run.

    It decides and audits as usual and acts on nothing, whatever each policy
    says. Changed in the admin; every change is a ``watchdog.switch.changed`` event.
    """

    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    dry_run = models.BooleanField(
        default=False, help_text="On: the watchdog decides and audits, and acts on nothing."
    )
    reason = models.CharField(max_length=300, blank=True, help_text="Why it was last changed.")
    changed_by = models.CharField(max_length=150, blank=True, editable=False)
    changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "watchdog kill switch"
        verbose_name_plural = "watchdog kill switch"

    def __str__(self):
        return "fleet-wide dry run" if self.dry_run else "watchdog acting"

    def clean(self):
        if not self.reason.strip():
            raise ValidationError({"reason": "say why the kill switch changes"})


class ActionBudget(models.Model):
    """Acts spent in the current minute, per scope: ``fleet`` or ``policy:<id>``.

    Spent with one conditional UPDATE, so workers sharing the database never
    spend more than the limit together (the row is the lock).
    """

    scope = models.CharField(max_length=120, primary_key=True)
    minute = models.DateTimeField(null=True, blank=True)
    spent = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"{self.scope}: {self.spent} at {self.minute}"


class StormState(models.Model):
    """Per role: are automatic restarts paused because too much of it failed at once?"""

    role = models.CharField(max_length=16, choices=AgentRole.choices, primary_key=True)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    resumed_at = models.DateTimeField(null=True, blank=True)
    unhealthy = models.PositiveIntegerField(default=0, help_text="When last evaluated.")
    total = models.PositiveIntegerField(default=0, help_text="When last evaluated.")

    def __str__(self):
        return f"{self.role}: {'paused' if self.paused else 'acting'}"


class PolicyBreaker(models.Model):
    """Per policy: its actions that failed in a row, and until when it is open (paused)."""

    policy = models.OneToOneField(
        RemediationPolicy, on_delete=models.CASCADE, primary_key=True, related_name="breaker"
    )
    failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    open_until = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.policy_id}: {self.failures} failure(s) in a row"
