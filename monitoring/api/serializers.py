from rest_framework import serializers

from monitoring.models import (
    MAX_ACKS_PER_HEARTBEAT,
    REPORTABLE_STATES,
    TASK_ID_MAX_LENGTH,
    Agent,
    AgentCommand,
    AgentRole,
    AgentState,
    AgentToken,
    AgentTransition,
    agent_id_validator,
)
from omoi_console.foundation.api.fields import (
    LabelsField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)


class HeartbeatSerializer(serializers.Serializer):
    """What an agent reports. The lean ingest path (monitoring.ingest.validation) takes
    the routine subset of these same rules and sends everything else here."""

    state = serializers.ChoiceField(choices=REPORTABLE_STATES)
    task_id = StrictCharField(
        max_length=TASK_ID_MAX_LENGTH, required=False, allow_blank=True, default=""
    )
    progress = StrictFloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True)
    acks = serializers.ListField(
        child=StrictIntegerField(min_value=1),
        required=False,
        max_length=MAX_ACKS_PER_HEARTBEAT,
        default=list,
    )


class CommandSerializer(serializers.ModelSerializer):
    issued_at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = AgentCommand
        fields = ["id", "kind", "reason", "issued_at"]


class HeartbeatResponseSerializer(serializers.Serializer):
    """What an agent gets back: its state as we see it and the commands to obey."""

    agent_id = serializers.CharField(source="agent.id")
    state = serializers.ChoiceField(source="agent.state", choices=AgentState.choices)
    heartbeat_interval_seconds = serializers.FloatField(source="agent.interval_seconds")
    commands = CommandSerializer(many=True)


class AgentSerializer(serializers.ModelSerializer):
    heartbeat_interval_seconds = serializers.FloatField(source="interval_seconds", read_only=True)

    class Meta:
        model = Agent
        fields = [
            "id",
            "role",
            "state",
            "labels",
            "heartbeat_interval",
            "heartbeat_interval_seconds",
            "last_heartbeat_at",
            "overdue_at",
            "missed_heartbeats",
            "current_task",
            "task_progress",
            "state_changed_at",
            "created_at",
        ]
        read_only_fields = [f for f in fields if f not in ("id", "role", "labels")]


class RegisteredAgentSerializer(AgentSerializer):
    token = serializers.CharField(read_only=True, help_text="The ingest token; shown only now.")

    class Meta(AgentSerializer.Meta):
        fields = [*AgentSerializer.Meta.fields, "token"]


class AgentRegistrationSerializer(serializers.Serializer):
    # Not trimmed: " w1 " is not the id "w1", and saying so beats a silent rename.
    id = StrictCharField(max_length=64, validators=[agent_id_validator], trim_whitespace=False)
    role = serializers.ChoiceField(choices=AgentRole.choices)
    labels = LabelsField(required=False)
    heartbeat_interval = StrictFloatField(
        min_value=0.5, max_value=3600, required=False, allow_null=True
    )

    def validate_id(self, value):
        if Agent.objects.filter(pk=value).exists():
            raise serializers.ValidationError("An agent with this id already exists.")
        return value


class TransitionSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentTransition
        fields = ["from_state", "to_state", "reason", "actor", "at"]


class AgentTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentToken
        fields = ["lookup", "name", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class IssuedAgentTokenSerializer(AgentTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The ingest token; shown only now.")

    class Meta(AgentTokenSerializer.Meta):
        fields = [*AgentTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class TokenRequestSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
