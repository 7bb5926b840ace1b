import re
from datetime import timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from alerting import durations
from alerting.models import (
    NOTIFICATION_FIELDS,
    Alert,
    AlertRule,
    InhibitRule,
    Notification,
    Operator,
    Receiver,
    Route,
    Silence,
)
from alerting.routing import GROUPING_FIELDS
from alerting.transports import kind_choices, transport_for
from monitoring.api.serializers import KnownFieldsOnly

CONDITION = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


@extend_schema_field(OpenApiTypes.STR)
class DurationText(serializers.Field):
    """A duration as text (``30s``, ``5m``, ``1h30m``) or a whole number of seconds."""

    def to_representation(self, value):
        return None if value is None else durations.text(value)

    def to_internal_value(self, data):
        try:
            return durations.parse(data)
        except (TypeError, ValueError) as exc:
            raise serializers.ValidationError(str(exc)) from None


@extend_schema_field(OpenApiTypes.STR)
class ConditionField(serializers.Field):
    """The comparison and value of a rule in one text, e.g. ``> 100`` or ``<= 0.5``."""

    def __init__(self, **kwargs):
        super().__init__(source="*", **kwargs)

    def to_representation(self, rule):
        if not rule.operator:
            return None
        return f"{rule.operator} {rule.threshold!r}"

    def to_internal_value(self, data):
        if data in (None, ""):
            return {"operator": "", "threshold": None}
        found = CONDITION.fullmatch(data) if isinstance(data, str) else None
        if found is None:
            ops = ", ".join(op.value for op in Operator)
            raise serializers.ValidationError(
                f"Cannot parse {str(data)[:40]!r}: write an operator ({ops}) and a number, "
                "e.g. '> 100'."
            )
        return {"operator": found.group(1), "threshold": float(found.group(2))}


# Model field -> the name the API and rule files give it.
FIELD_NAMES = {"for_duration": "for", "operator": "condition", "threshold": "condition"}
RULE_FIELDS = [
    "name",
    "kind",
    "severity",
    "summary",
    "metric",
    "matchers",
    "aggregation",
    "window",
    "group_by",
    "condition",
    "for",
    "keep_firing_for",
    "evaluate_every",
    "params",
    "labels",
    "annotations",
    "enabled",
]


class AlertRuleSerializer(serializers.ModelSerializer):
    """A rule as the API and rule files write it; checked by the rule's kind before it is saved."""

    window = DurationText(required=False, allow_null=True)
    condition = ConditionField(required=False, allow_null=True)
    keep_firing_for = DurationText(required=False)
    evaluate_every = DurationText(required=False)
    # "for" cannot be written as a class attribute; it is the name Prometheus users know.
    vars()["for"] = DurationText(source="for_duration", required=False)

    class Meta:
        model = AlertRule
        fields = ["id", *RULE_FIELDS, "last_evaluated_at", "last_error", "updated_at"]
        read_only_fields = ["id", "last_evaluated_at", "last_error", "updated_at"]

    def validate(self, attrs):
        rule = (
            AlertRule()
            if self.instance is None
            else AlertRule(
                **{
                    f.attname: getattr(self.instance, f.attname)
                    for f in AlertRule._meta.concrete_fields
                }
            )
        )
        for name, value in attrs.items():
            setattr(rule, name, value)
        try:
            rule.full_clean(validate_unique=False)
        except DjangoValidationError as exc:
            problems: dict[str, list[str]] = {}
            for field, messages in exc.message_dict.items():
                problems.setdefault(FIELD_NAMES.get(field, field), []).extend(messages)
            raise serializers.ValidationError(problems) from None
        return attrs


class ReceiverSerializer(KnownFieldsOnly, serializers.ModelSerializer):
    """A receiver. Secret settings are write-only: ``secrets_set`` names those that
    are set; leaving one out of ``config`` on an update keeps it, ``null`` clears it."""

    kind = serializers.ChoiceField(choices=kind_choices())
    config = serializers.JSONField(required=False)
    fallback = serializers.SlugRelatedField(
        slug_field="name", queryset=Receiver.objects.all(), allow_null=True, required=False
    )
    secrets_set = serializers.SerializerMethodField()
    target = serializers.SerializerMethodField(
        help_text="Where its notifications go, for people to read (never a secret)."
    )

    class Meta:
        model = Receiver
        fields = [
            "id",
            "name",
            "kind",
            "config",
            "secrets_set",
            "target",
            "enabled",
            "default",
            "send_resolved",
            "send_resolved_when_silenced",
            "fallback",
            "consecutive_failures",
            "circuit_open_until",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["consecutive_failures", "circuit_open_until", "created_at"]

    def get_secrets_set(self, receiver) -> list[str]:
        return receiver.secrets_set()

    def get_target(self, receiver) -> str:
        try:
            return receiver.transport.target(receiver)
        except DjangoValidationError:
            return ""

    def to_representation(self, receiver):
        data = super().to_representation(receiver)
        data["config"] = receiver.public_config()
        return data

    def validate(self, attrs):
        instance = self.instance
        kind = attrs.get("kind", instance.kind if instance else None)
        if instance is None:
            config = attrs.get("config", {})
        elif "config" in attrs:
            config = instance.merged_config(attrs["config"], kind)
        else:
            config = instance.config if kind == instance.kind else {}
        transport = transport_for(kind)
        try:
            attrs["config"] = transport.validate_config(config)
        except DjangoValidationError as exc:
            messages = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
            per_key = {k: v for k, v in messages.items() if k not in ("config", "")}
            whole = messages.get("config", []) + messages.get("", [])
            raise serializers.ValidationError({"config": per_key or whole}) from None
        fallback = attrs.get("fallback", instance.fallback if instance else None)
        if fallback is not None:
            probe = Receiver(pk=instance.pk if instance else None, fallback=fallback)
            try:
                probe.check_fallback_chain()
            except DjangoValidationError as exc:
                raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class ReceiverTestSerializer(serializers.Serializer):
    delivered = serializers.BooleanField()
    error = serializers.CharField(allow_blank=True)
    latency_ms = serializers.IntegerField()


class NotificationSerializer(serializers.ModelSerializer):
    receiver = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Notification
        fields = ["id", *NOTIFICATION_FIELDS]


class AlertSerializer(serializers.ModelSerializer):
    rule = serializers.SlugRelatedField(slug_field="name", read_only=True)
    acknowledged_by = serializers.CharField(
        source="acknowledged_by.username", read_only=True, allow_null=True
    )

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "fingerprint",
            "labels",
            "severity",
            "summary",
            "status",
            "started_at",
            "fired_at",
            "acknowledged_at",
            "acknowledged_by",
            "ack_comment",
            "ack_expires_at",
            "resolved_at",
            "resolution",
            "value",
            "trace_id",
        ]


class AcknowledgeSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=500, required=False, allow_blank=True)
    expires_in = DurationText(
        required=False, help_text="The acknowledgement ends after this long, e.g. 2h (at most 7d)."
    )

    def validate_expires_in(self, value):
        if not timedelta(minutes=1) <= value <= timedelta(days=7):
            raise serializers.ValidationError("Between 1 minute and 7 days.")
        return value


class ResolveSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=500, help_text="Why it is closed by hand.")


def full_clean_or_422(instance, field_names: dict | None = None) -> None:
    """The model's own checks, as a 422 naming each field."""
    try:
        instance.full_clean(validate_unique=False)
    except DjangoValidationError as exc:
        names = field_names or {}
        raise serializers.ValidationError(
            {names.get(field, field): messages for field, messages in exc.message_dict.items()}
        ) from None


class SilenceSerializer(serializers.ModelSerializer):
    """A silence: matchers, a start (default now), an end or a duration, and why."""

    duration = DurationText(
        write_only=True, required=False, help_text="Instead of ends_at: e.g. 2h (at most 30d)."
    )
    created_by = serializers.CharField(
        source="created_by.username", read_only=True, allow_null=True
    )
    active = serializers.SerializerMethodField()

    class Meta:
        model = Silence
        fields = [
            "id",
            "matchers",
            "starts_at",
            "ends_at",
            "duration",
            "comment",
            "created_by",
            "created_at",
            "active",
        ]
        read_only_fields = ["id", "created_by", "created_at", "active"]
        extra_kwargs = {"ends_at": {"required": False}}

    def get_active(self, silence) -> bool:
        from django.utils import timezone

        return silence.active_at(timezone.now())

    def validate(self, attrs):
        from django.utils import timezone

        duration = attrs.pop("duration", None)
        if duration is not None:
            if "ends_at" in attrs:
                raise serializers.ValidationError(
                    {"duration": "Give ends_at or duration, not both."}
                )
            if not timedelta(minutes=1) <= duration <= timedelta(days=30):
                raise serializers.ValidationError({"duration": "Between 1 minute and 30 days."})
            attrs["ends_at"] = attrs.get("starts_at") or timezone.now()
            attrs["ends_at"] = attrs["ends_at"] + duration
        elif "ends_at" not in attrs:
            raise serializers.ValidationError({"ends_at": "Give ends_at or duration."})
        full_clean_or_422(Silence(**attrs))
        return attrs


class InhibitRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = InhibitRule
        fields = ["id", "name", "source_matchers", "target_matchers", "equal", "enabled", "comment"]

    def validate(self, attrs):
        merged = {
            field: getattr(self.instance, field)
            for field in self.Meta.fields
            if self.instance is not None and field != "id"
        }
        full_clean_or_422(InhibitRule(**{**merged, **attrs}))
        return attrs


class RouteSerializer(serializers.ModelSerializer):
    """A route of the tree; parent and receivers by name."""

    parent = serializers.SlugRelatedField(
        slug_field="name", queryset=Route.objects.all(), allow_null=True, required=False
    )
    receivers = serializers.SlugRelatedField(
        slug_field="name", queryset=Receiver.objects.all(), many=True, required=False
    )
    group_wait = DurationText(required=False, allow_null=True)
    group_interval = DurationText(required=False, allow_null=True)
    repeat_interval = DurationText(required=False, allow_null=True)

    class Meta:
        model = Route
        fields = [
            "id",
            "name",
            "parent",
            "position",
            "matchers",
            "receivers",
            "continue_matching",
            "enabled",
            "escalation",
            "group_by",
            "group_wait",
            "group_interval",
            "repeat_interval",
        ]

    def validate(self, attrs):
        fields = {k: v for k, v in attrs.items() if k != "receivers"}
        probe = Route(pk=self.instance.pk if self.instance else None, **fields)
        if self.instance is not None:
            for name in (
                "name",
                "position",
                "matchers",
                "continue_matching",
                "enabled",
                "escalation",
                *GROUPING_FIELDS,
            ):
                if name not in fields:
                    setattr(probe, name, getattr(self.instance, name))
            if "parent" not in fields:
                probe.parent = self.instance.parent
        full_clean_or_422(probe)
        return attrs
