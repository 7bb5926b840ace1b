from rest_framework import serializers

from watchdog.builtins import MANUAL_POLICY
from watchdog.chains import level_problems
from watchdog.models import EscalationChain, RemediationAction, RemediationPolicy, Trigger
from watchdog.policies import policy_problems


class EscalationChainSerializer(serializers.ModelSerializer):
    class Meta:
        model = EscalationChain
        fields = ["id", "name", "levels"]

    def validate_levels(self, levels):
        problems = level_problems(levels)
        if problems:
            raise serializers.ValidationError(problems)
        return levels


class EscalationChainDetailSerializer(EscalationChainSerializer):
    """A chain as the API shows it: its levels (the one check the admin and policy
    files use), and the policies that name it."""

    policies = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)

    class Meta(EscalationChainSerializer.Meta):
        fields = [*EscalationChainSerializer.Meta.fields, "policies"]


class RemediationPolicySerializer(serializers.ModelSerializer):
    """A policy; refused as a whole (422, each field named) when invalid: never half-saved."""

    escalation_chain = serializers.SlugRelatedField(
        slug_field="name",
        queryset=EscalationChain.objects.all(),
        allow_null=True,
        required=False,
    )

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
            "escalation_chain",
        ]

    def validate(self, attrs):
        fields = {
            name: attrs.get(name, getattr(self.instance, name, None))
            for name in ("trigger", "alert_rule", "severity", "matchers", "agent_role", "steps")
        }
        problems = policy_problems(fields)
        if self.instance is not None and self.instance.name == MANUAL_POLICY:
            problems = {"name": ["the manual policy is the product's; it is not edited"]}
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
            "escalation_level",
            "escalation_next_at",
            "approval_expires_at",
            "approval_decision",
            "approval_decided_by",
            "approval_decided_at",
            "approval_reason",
        ]


class ExplainQuerySerializer(serializers.Serializer):
    """``?alert=<id>``, or ``?agent=<id>`` with an optional ``trigger`` (default agent_failed)."""

    alert = serializers.IntegerField(required=False, min_value=1)
    agent = serializers.CharField(required=False, max_length=100)
    trigger = serializers.ChoiceField(
        choices=[Trigger.AGENT_FAILED.value, Trigger.ALERT.value], required=False
    )

    def validate(self, attrs):
        if ("alert" in attrs) == ("agent" in attrs):
            raise serializers.ValidationError({"alert": ["give either alert or agent"]})
        if attrs.get("trigger") == Trigger.ALERT and "agent" in attrs:
            raise serializers.ValidationError(
                {"trigger": ["an alert trigger is explained from its alert: give alert"]}
            )
        return attrs


class ManualActionSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=300)


class ApprovalDecisionSerializer(serializers.Serializer):
    """The body of an approve or reject: an optional reason, kept in the action's audit."""

    reason = serializers.CharField(required=False, allow_blank=True, max_length=300)
