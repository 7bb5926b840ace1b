from rest_framework import serializers

from watchdog.models import RemediationAction, RemediationPolicy


class RemediationPolicySerializer(serializers.ModelSerializer):
    class Meta:
        model = RemediationPolicy
        fields = [
            "id",
            "name",
            "enabled",
            "trigger",
            "agent_role",
            "step",
            "verify_seconds",
            "cooldown_seconds",
            "max_per_hour",
            "dry_run",
            "priority",
        ]


class RemediationActionSerializer(serializers.ModelSerializer):
    policy = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = RemediationAction
        fields = [
            "id",
            "policy",
            "agent",
            "step",
            "status",
            "reason",
            "actor",
            "before_state",
            "after_state",
            "command",
            "started_at",
            "verify_by",
            "finished_at",
            "outcome",
            "trace_id",
        ]
