from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

# One severity scale for anomalies and alerts; alerting names it as its own.
from monitoring.models import Severity
from omoi_console.foundation.labels import (
    LABEL_NAME,
    LABEL_NAME_RULE,
    validate_annotations,
    validate_labels,
)


class RuleKind(models.TextChoices):
    HEARTBEAT = "heartbeat", "Heartbeat lost"
    THRESHOLD = "threshold", "Threshold"
    ANOMALY = "anomaly", "Anomaly"
    ABSENT = "absent", "Absent series"
    AGENT = "agent", "Agent state or health"
    REMEDIATION = "remediation", "Remediation failed"
    STORM = "storm", "Remediation storm (restarts of a role paused)"
    APPROVAL = "approval", "Remediation step awaiting approval"


def kind_choices():
    """Every kind some module evaluates (see ``alerting.rules``): nothing else can be saved."""
    from alerting.rules import KINDS

    return [(kind.name, kind.label) for kind in KINDS.values()]


class Aggregation(models.TextChoices):
    AVG = "avg", "Average"
    MAX = "max", "Maximum"
    MIN = "min", "Minimum"
    SUM = "sum", "Sum"
    COUNT = "count", "Number of samples"
    RATE = "rate", "Per-second growth of a counter"
    P50 = "p50", "Median"
    P95 = "p95", "95th percentile"
    P99 = "p99", "99th percentile"


class Operator(models.TextChoices):
    GT = ">", "greater than"
    GE = ">=", "at least"
    LT = "<", "less than"
    LE = "<=", "at most"
    EQ = "==", "equal to"
    NE = "!=", "not equal to"


class AlertRule(models.Model):
    """A condition the evaluator checks on a schedule; each label set that meets it is an alert.

    Which fields a rule uses depends on its kind (``alerting.rules``): a
    threshold rule needs a metric, an aggregation over a window and a
    condition; a heartbeat rule needs none of them. ``clean()`` refuses a
    field the kind does not use, so a rule never says more than it does.
    """

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=kind_choices)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    summary = models.CharField(
        max_length=300,
        help_text="Template over the alert's labels, e.g. 'Agent {agent_id} is down'.",
    )
    metric = models.CharField(
        max_length=100, blank=True, help_text="A metric of the catalogue, e.g. queue_depth."
    )
    matchers = models.JSONField(
        default=list,
        blank=True,
        help_text='Label matchers, all of which a series must meet: e.g. ["queue=inbox", '
        '"agent=~w-.*"]; operators =, !=, =~ and !~ (regular expressions match whole values).',
    )
    aggregation = models.CharField(
        max_length=8,
        choices=Aggregation.choices,
        blank=True,
        help_text="How the window is reduced.",
    )
    window = models.DurationField(
        null=True, blank=True, help_text="How far back the aggregation looks, e.g. 00:05:00."
    )
    group_by = models.JSONField(
        default=list,
        blank=True,
        help_text='Labels that make one alert each, e.g. ["agent"]; empty: one alert in all.',
    )
    operator = models.CharField(
        max_length=2, choices=Operator.choices, blank=True, help_text="The condition's comparison."
    )
    threshold = models.FloatField(null=True, blank=True, help_text="The condition's value.")
    params = models.JSONField(
        default=dict, blank=True, help_text="Parameters of the kind that no other field holds."
    )
    for_duration = models.DurationField(
        default=timedelta(0),
        help_text="How long the condition must hold before the alert fires (pending until then).",
    )
    keep_firing_for = models.DurationField(
        default=timedelta(0),
        help_text="How long a firing alert stays firing after the condition clears.",
    )
    labels = models.JSONField(default=dict, blank=True, validators=[validate_labels])
    annotations = models.JSONField(default=dict, blank=True, validators=[validate_annotations])
    enabled = models.BooleanField(default=True)
    # The evaluator's schedule: due rules are claimed with SKIP LOCKED.
    evaluate_every = models.DurationField(default=timedelta(seconds=15))
    next_evaluation_at = models.DateTimeField(default=timezone.now, editable=False)
    last_evaluated_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(
                fields=["next_evaluation_at"],
                condition=Q(enabled=True),
                name="alertrule_due_idx",
            )
        ]

    def __str__(self):
        return self.name

    @property
    def rule_kind(self):
        from alerting.rules import get_kind

        return get_kind(self.kind)

    def clean(self):
        super().clean()
        from alerting.rules import clean_rule

        clean_rule(self)


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
    # The value that last met the rule's condition (written when it changes, not at
    # every evaluation that finds it again).
    value = models.FloatField(null=True, blank=True)
    # The first evaluation that found the condition cleared while the alert kept firing
    # (the rule's keep_firing_for counts from then, as in Prometheus); empty while the
    # condition holds.
    cleared_at = models.DateTimeField(null=True, blank=True)
    # An acknowledgement may say why and end by itself; the alert fires again then.
    ack_comment = models.CharField(max_length=500, blank=True)
    ack_expires_at = models.DateTimeField(null=True, blank=True)
    # Raised while it fires unacknowledged (per-severity delays; see settings).
    escalation_level = models.PositiveSmallIntegerField(default=0)
    escalated_at = models.DateTimeField(null=True, blank=True)
    # When people were last asked to act on it: it fired, a hold on its notification
    # ended, or an acknowledgement was given back. Escalation counts from here.
    announced_at = models.DateTimeField(null=True, blank=True)
    # Why its notifications are held back (a silence, an inhibiting alert); empty
    # when they went out. The sweep sends them once the reason is gone.
    suppressed_by = models.CharField(max_length=200, blank=True)
    # Why it was resolved: the condition cleared, the agent recovered, by hand ...
    resolution = models.CharField(max_length=500, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["-started_at"]
        permissions = [
            ("acknowledge_alert", "Can acknowledge alerts"),
            ("resolve_alert", "Can resolve alerts by hand"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=~Q(status="resolved"),
                name="alert_one_open_per_fingerprint",
            )
        ]
        indexes = [
            models.Index(fields=["status", "started_at"], name="alert_status_idx"),
            # Flap damping counts a label set's recent resolutions.
            models.Index(fields=["fingerprint", "resolved_at"], name="alert_flap_idx"),
        ]

    def __str__(self):
        return f"{self.rule_id}:{self.fingerprint[:8]} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


def validate_matchers(value) -> None:
    from alerting.matchers import parse_all

    try:
        parse_all(value)
    except ValueError as exc:
        raise ValidationError(f"{exc}.") from None
    if not value:
        raise ValidationError("At least one matcher.")


class Silence(models.Model):
    """Alerts whose labels meet every matcher send no notification from start to end.

    The alerts themselves go on (events, remediation, the console); only their
    notifications are held back, and they go out if the alert still fires when
    the silence ends. A silence is not edited: expire it and create another.
    """

    matchers = models.JSONField(
        validators=[validate_matchers],
        help_text='Label matchers, all of which an alert must meet, e.g. ["agent_id=w-1"].',
    )
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    comment = models.CharField(max_length=500, help_text="Why: a maintenance, a known issue.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [models.Index(fields=["ends_at"], name="silence_ends_idx")]

    def __str__(self):
        return f"silence {self.pk}: {', '.join(self.matchers or [])}"

    def clean(self):
        super().clean()
        if self.ends_at and self.starts_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "A silence ends after it starts."})

    def active_at(self, moment) -> bool:
        return self.starts_at <= moment < self.ends_at


class InhibitRule(models.Model):
    """While an alert meeting ``source_matchers`` fires, alerts meeting ``target_matchers``
    with the same values of the ``equal`` labels send no notification.

    As in Alertmanager: a label missing on both sides counts as equal (empty),
    and an alert never inhibits itself.
    """

    name = models.SlugField(max_length=100, unique=True)
    source_matchers = models.JSONField(validators=[validate_matchers])
    target_matchers = models.JSONField(validators=[validate_matchers])
    equal = models.JSONField(
        default=list, blank=True, help_text='Labels that must match, e.g. ["agent_id"].'
    )
    enabled = models.BooleanField(default=True)
    comment = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        super().clean()
        if not isinstance(self.equal, list) or not all(isinstance(n, str) for n in self.equal):
            raise ValidationError({"equal": "A list of label names."})


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


def validate_route_matchers(value) -> None:
    from alerting.matchers import parse_all

    try:
        parse_all(value)
    except ValueError as exc:
        raise ValidationError(f"{exc}.") from None


# In a route's group_by: every label, so each alert is a group of its own.
GROUP_BY_ALL = "..."


def validate_group_by(value) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValidationError('A list of label names, e.g. ["alertname", "owner"].')
    if GROUP_BY_ALL in value:
        if len(value) > 1:
            raise ValidationError(f'"{GROUP_BY_ALL}" groups by every label and stands alone.')
        return
    for name in value:
        if not LABEL_NAME.fullmatch(name):
            raise ValidationError(f"{name[:40]!r}: label names are {LABEL_NAME_RULE}.")
    if len(set(value)) != len(value):
        raise ValidationError("Each label may appear once.")


def validate_escalation(value) -> None:
    if not isinstance(value, list) or not all(
        isinstance(level, list) and level and all(isinstance(name, str) for name in level)
        for level in value
    ):
        raise ValidationError(
            'A list of levels, each a list of receiver names: [["oncall-secondary"], ["lead"]].'
        )


class Route(models.Model):
    """A node of the routing tree: alerts meeting its matchers go to its receivers.

    As in Alertmanager: from the top, an alert goes down the first child (by
    ``position``) whose matchers it meets, or down every matching child while
    they say ``continue_matching``; the deepest routes it reaches deliver it. A
    route without receivers of its own uses its parent's. An alert no top-level
    route takes goes to the ``default`` receivers.
    """

    name = models.SlugField(max_length=100, unique=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    position = models.PositiveIntegerField(default=0, help_text="Order among its siblings.")
    matchers = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_route_matchers],
        help_text='Label matchers, e.g. ["owner=team-a"]; empty: every alert.',
    )
    receivers = models.ManyToManyField(Receiver, blank=True, related_name="routes")
    continue_matching = models.BooleanField(
        default=False, help_text="After this route takes an alert, try its next siblings too."
    )
    enabled = models.BooleanField(default=True)
    escalation = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_escalation],
        help_text="Who hears of an alert nobody acknowledged in time, level by level: "
        'e.g. [["oncall-secondary"], ["team-lead"]] (receiver names); empty: the parent\'s.',
    )
    # Grouping, as in Alertmanager; empty inherits the parent's (the settings at the top).
    group_by = models.JSONField(
        null=True,
        blank=True,
        validators=[validate_group_by],
        help_text='Labels whose values make a group, e.g. ["alertname", "owner"]; '
        f'["{GROUP_BY_ALL}"]: every label (no grouping); empty: the parent\'s.',
    )
    group_wait = models.DurationField(
        null=True,
        blank=True,
        help_text="How long a new group waits for more alerts before it is first "
        "notified; empty: the parent's.",
    )
    group_interval = models.DurationField(
        null=True,
        blank=True,
        help_text="How long a notified group waits before telling of alerts added to it "
        "or resolved in it; empty: the parent's.",
    )
    repeat_interval = models.DurationField(
        null=True,
        blank=True,
        help_text="How long before a group's unacknowledged firing alerts are notified "
        "again; counted in group intervals; empty: the parent's.",
    )

    class Meta:
        ordering = ["parent_id", "position", "name"]

    def __str__(self):
        return self.name

    def _unknown_escalation_receivers(self) -> set[str]:
        try:
            validate_escalation(self.escalation)
        except ValidationError:
            return set()  # the field's own validator says what is wrong
        named = {name for level in self.escalation for name in level}
        return named - set(Receiver.objects.filter(name__in=named).values_list("name", flat=True))

    def clean(self):
        super().clean()
        seen, current = {self.pk}, self.parent
        while current is not None:
            if current.pk in seen:
                raise ValidationError({"parent": "Routes may not form a cycle."})
            seen.add(current.pk)
            current = current.parent
        errors = {}
        unknown = self._unknown_escalation_receivers()
        if unknown:
            errors["escalation"] = f"No receiver named {', '.join(sorted(unknown))}."
        for name in ("group_wait", "group_interval", "repeat_interval"):
            value = getattr(self, name)
            if value is not None and value < timedelta(0):
                errors[name] = "Cannot be negative."
        if self.group_interval is not None and self.group_interval < timedelta(seconds=1):
            errors.setdefault("group_interval", "At least 1s.")
        if (
            self.repeat_interval is not None
            and self.group_interval is not None
            and self.repeat_interval < self.group_interval
        ):
            errors.setdefault("repeat_interval", "Cannot be shorter than the group interval.")
        if errors:
            raise ValidationError(errors)


class AlertChange(models.TextChoices):
    PENDING = "pending", "Pending: the condition is met, waiting for its for"
    FIRING = "firing", "Firing"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    UNACKNOWLEDGED = "unacknowledged", "Acknowledgement withdrawn or expired"
    ESCALATED = "escalated", "Escalated: nobody acknowledged it in time"
    SUPPRESSED = "suppressed", "Notifications held back (a silence or an inhibiting alert)"
    RELEASED = "released", "Notifications sent after being held back"
    RESOLVED = "resolved", "Resolved"
    DROPPED = "dropped", "Dropped: the condition cleared before its for"


class AlertEvent(models.Model):
    """One change of one alert: what, when, by whom and why. History: never edited."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="history")
    at = models.DateTimeField(default=timezone.now)
    change = models.CharField(max_length=16, choices=AlertChange.choices)
    actor = models.CharField(max_length=160, help_text="evaluator, alerting, or user:<name>")
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["alert", "at"], name="alertevent_alert_idx")]

    def __str__(self):
        return f"alert {self.alert_id} {self.change} by {self.actor}"


# A notification's fields as the API and the admin show them: an audit record.
NOTIFICATION_FIELDS = [
    "alert",
    "kind",
    "receiver",
    "channel",
    "target",
    "status",
    "attempts",
    "last_error",
    "created_at",
    "next_attempt_at",
    "sent_at",
    "dead_at",
    "latency_ms",
    "trace_id",
    "resent_from",
    "fallback_from",
]


class NotificationKind(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"
    # Still firing, told again after the route's repeat interval.
    REPEAT = "repeat", "Still firing (repeat)"
    # Nobody acknowledged it in time: told to the route's next escalation level.
    ESCALATED = "escalated", "Escalated"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    # Dead letter: failed for good (a permanent error or the last attempt); can be re-sent.
    DEAD = "dead", "Dead letter"
    # Never sent: its alert resolved first (within its group's wait), so nobody is told.
    CANCELLED = "cancelled", "Cancelled (resolved before it was sent)"


class AlertGroup(models.Model):
    """Alerts that one receiver hears about together: Alertmanager's aggregation group.

    One per route, receiver and values of the route's ``group_by`` labels. A new
    group waits ``group_wait`` before its first notification; after that, what
    changes in it waits for the next ``group_interval``; and its firing alerts are
    told again every ``repeat_interval`` (see ``alerting.grouping``).
    """

    key = models.CharField(max_length=64, unique=True)
    receiver = models.ForeignKey(Receiver, on_delete=models.CASCADE, related_name="groups")
    route = models.ForeignKey(
        Route, null=True, blank=True, on_delete=models.SET_NULL, related_name="groups"
    )
    labels = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    # When what is waiting in the group goes out; None: nothing waits.
    flush_at = models.DateTimeField(null=True, blank=True)
    flushed_at = models.DateTimeField(null=True, blank=True)
    # When its firing alerts are told again; None: nothing to repeat.
    repeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["repeat_at"], condition=Q(repeat_at__isnull=False), name="group_repeat_idx"
            ),
            # Retention walks groups oldest first.
            models.Index(fields=["created_at"], name="group_created_idx"),
        ]

    def __str__(self):
        return f"{self.receiver_id}:{self.labels}"


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
    group = models.ForeignKey(
        AlertGroup,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="notifications",
    )

    class Meta:
        ordering = ["created_at", "id"]
        permissions = [("resend_notification", "Can re-send dead notifications")]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "kind", "receiver"],
                # Repeats and escalations are many by design; the group's flush and the
                # alert's escalation level make them once each.
                condition=Q(resent_from__isnull=True) & ~Q(kind__in=["repeat", "escalated"]),
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
