from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from alerting.models import Alert, AlertRule, Notification, Receiver
from alerting.transports import kind_choices, transport_for
from monitoring.api.serializers import KnownFieldsOnly


class AlertRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertRule
        fields = ["id", "name", "kind", "severity", "summary", "labels", "annotations", "enabled"]


class ReceiverSerializer(KnownFieldsOnly, serializers.ModelSerializer):
    """A receiver. Secret settings are write-only: ``secrets_set`` names those that
    are set; leaving one out of ``config`` on an update keeps it, ``null`` clears it."""

    kind = serializers.ChoiceField(choices=kind_choices())
    config = serializers.JSONField(required=False)
    fallback = serializers.SlugRelatedField(
        slug_field="name", queryset=Receiver.objects.all(), allow_null=True, required=False
    )
    secrets_set = serializers.SerializerMethodField()

    class Meta:
        model = Receiver
        fields = [
            "id",
            "name",
            "kind",
            "config",
            "secrets_set",
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
        fields = [
            "id",
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
            "resolved_at",
            "trace_id",
        ]
