from rest_framework import serializers

from watchdog.models import RemediationAction, RemediationPolicy
from watchdog.policies import policy_problems


class RemediationPolicySerializer(serializers.ModelSerializer):
    """A policy; refused as a whole (422, each field named) when invalid: never half-saved."""

    class Meta:
        model = RemediationPolicy
        fields = [
            "id",
            "name",
            "enabled",
            "trigger",
            "alert_rule",
            "severity",
            "matchers",
            "agent_role",
            "steps",
            "graceful_stop_seconds",
            "cooldown_seconds",
            "max_per_hour",
            "dry_run",
            "priority",
        ]

    def validate(self, attrs):
        fields = {
            name: attrs.get(name, getattr(self.instance, name, None))
            for name in ("trigger", "alert_rule", "severity", "matchers", "agent_role", "steps")
        }
        problems = policy_problems(fields)
        if problems:
            raise serializers.ValidationError(problems)
        return attrs


class RemediationActionSerializer(serializers.ModelSerializer):
    policy = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = RemediationAction
        fields = [
            "id",
            "policy",
            "agent",
            "trigger",
            "step",
            "step_index",
            "steps",
            "status",
            "skip_reason",
            "next_step_at",
            "idempotency_key",
            "alert_fingerprint",
            "episode",
            "reason",
            "actor",
            "dry_run",
            "before_state",
            "after_state",
            "command",
            "context",
            "history",
            "started_at",
            "verify_by",
            "finished_at",
            "outcome",
            "trace_id",
        ]
