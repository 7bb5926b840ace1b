from rest_framework import serializers

from alerting.models import Alert, AlertRule, Notification


class AlertRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertRule
        fields = ["id", "name", "kind", "severity", "summary", "labels", "annotations", "enabled"]


class NotificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = [
            "id",
            "alert",
            "kind",
            "channel",
            "status",
            "attempts",
            "last_error",
            "created_at",
            "sent_at",
            "latency_ms",
            "trace_id",
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
