from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from monitoring.models import (
    MAX_ACKS_PER_HEARTBEAT,
    MAX_CAPABILITIES,
    REPORTABLE_STATES,
    STUCK_AFTER_MAX_SECONDS,
    STUCK_AFTER_MIN_SECONDS,
    TASK_ID_MAX_LENGTH,
    Agent,
    AgentCommand,
    AgentHealth,
    AgentRole,
    AgentState,
    AgentToken,
    AgentTransition,
    agent_id_validator,
    validate_capabilities,
    version_validator,
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
    stuck_after = StrictFloatField(
        min_value=STUCK_AFTER_MIN_SECONDS,
        max_value=STUCK_AFTER_MAX_SECONDS,
        required=False,
        allow_null=True,
        help_text="Seconds without progress after which the current task counts as stuck; "
        "kept for the task until it changes. Absent or null: the role's default.",
    )
    acks = serializers.ListField(
        child=StrictIntegerField(min_value=1),
        required=False,
        max_length=MAX_ACKS_PER_HEARTBEAT,
        default=list,
    )
    generation = StrictIntegerField(
        min_value=0,
        required=False,
        allow_null=True,
        default=None,
        help_text="The restart generation the agent runs under: the ``generation`` of the "
        "last restart command it obeyed (0 before any). A ``failed`` report from an older "
        "generation than the newest restart is not counted. Absent: no generations.",
    )


class CommandSerializer(serializers.ModelSerializer):
    issued_at = serializers.DateTimeField(source="created_at")
    generation = serializers.IntegerField(
        allow_null=True, help_text="A restart's generation, to echo in later heartbeats."
    )
    params = serializers.DictField(
        help_text="Per kind: restart has graceful_stop_seconds; recycle_token has token, "
        "the new ingest token (shown once; the old one stops working); take_task has "
        "task_id, progress and from_agent (the failed agent the task was taken from)."
    )

    class Meta:
        model = AgentCommand
        fields = ["id", "kind", "reason", "issued_at", "generation", "params"]


class HeartbeatResponseSerializer(serializers.Serializer):
    """What an agent gets back: its state as we see it and the commands to obey."""

    agent_id = serializers.CharField(source="agent.id")
    state = serializers.ChoiceField(source="agent.state", choices=AgentState.choices)
    heartbeat_interval_seconds = serializers.FloatField(source="agent.interval_seconds")
    commands = CommandSerializer(many=True)


class KnownFieldsOnly:
    """Refuses a key the serializer does not take, instead of silently dropping it:
    an edit of ``state`` that does nothing would read as if it had worked."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in set(data) - set(self.fields))
            if unknown:
                taken = ", ".join(self.fields)
                raise serializers.ValidationError(
                    {key: [f"Not a field this request takes; it takes {taken}."] for key in unknown}
                )
        return super().to_internal_value(data)


class CapabilitiesField(serializers.ListField):
    """``["python", "gpu"]``, under the same rule as the admin and the registry sync."""

    def __init__(self, **kwargs):
        super().__init__(
            child=StrictCharField(max_length=48), max_length=MAX_CAPABILITIES, **kwargs
        )

    def to_internal_value(self, data):
        capabilities = super().to_internal_value(data)
        try:
            validate_capabilities(capabilities)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return capabilities


class RegistryFields(serializers.Serializer):
    """The metadata an operator or the fleet's registry owns, all optional."""

    name = StrictCharField(max_length=100, required=False, allow_blank=True)
    role = serializers.ChoiceField(choices=AgentRole.choices, required=False)
    capabilities = CapabilitiesField(required=False)
    owner = StrictCharField(max_length=100, required=False, allow_blank=True)
    version = StrictCharField(
        max_length=64, required=False, allow_blank=True, validators=[version_validator]
    )
    labels = LabelsField(required=False)
    heartbeat_interval = StrictFloatField(
        min_value=0.5, max_value=3600, required=False, allow_null=True
    )


class AgentUpdateSerializer(KnownFieldsOnly, RegistryFields):
    """``PATCH /agents/{id}``: any of the registry fields; never the state."""


class AgentSerializer(serializers.ModelSerializer):
    heartbeat_interval_seconds = serializers.FloatField(source="interval_seconds", read_only=True)
    stuck_after_seconds = serializers.FloatField(
        read_only=True, help_text="The current task's stuck threshold, else the role's default."
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "role",
            "state",
            "capabilities",
            "owner",
            "version",
            "labels",
            "heartbeat_interval",
            "heartbeat_interval_seconds",
            "last_heartbeat_at",
            "overdue_at",
            "missed_heartbeats",
            "current_task",
            "task_progress",
            "progress_changed_at",
            "stuck_after_seconds",
            "stuck_at",
            "state_changed_at",
            "created_at",
        ]
        read_only_fields = fields


class RegisteredAgentSerializer(AgentSerializer):
    token = serializers.CharField(read_only=True, help_text="The ingest token; shown only now.")

    class Meta(AgentSerializer.Meta):
        fields = [*AgentSerializer.Meta.fields, "token"]


class AgentRegistrationSerializer(KnownFieldsOnly, RegistryFields):
    # Not trimmed: " w1 " is not the id "w1", and saying so beats a silent rename.
    id = StrictCharField(max_length=64, validators=[agent_id_validator], trim_whitespace=False)
    role = serializers.ChoiceField(choices=AgentRole.choices)

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


class HealthComponentsSerializer(serializers.Serializer):
    latency = serializers.FloatField(help_text="Highest anomaly score of task latency, 0 to 1.")
    errors = serializers.FloatField(
        help_text="Highest of the error rate, its anomaly score and that of task failures."
    )
    heartbeat = serializers.FloatField(
        help_text="Highest of missed heartbeats / 3, |clock skew| / the largest tolerated, "
        "and the clock skew's anomaly score."
    )
    blocked = serializers.FloatField(help_text="1 when stuck, else lock wait's anomaly score.")


class AgentHealthSerializer(serializers.ModelSerializer):
    agent_id = serializers.CharField(read_only=True)
    role = serializers.ChoiceField(source="agent.role", choices=AgentRole.choices, read_only=True)
    state = serializers.ChoiceField(
        source="agent.state", choices=AgentState.choices, read_only=True
    )
    components = HealthComponentsSerializer(read_only=True)

    class Meta:
        model = AgentHealth
        fields = [
            "agent_id",
            "role",
            "state",
            "score",
            "components",
            "streak",
            "anomalous",
            "anomalous_since",
            "evaluated_at",
        ]
        read_only_fields = fields


class HealthPolicySerializer(serializers.Serializer):
    weights = HealthComponentsSerializer()
    threshold = serializers.FloatField()
    consecutive = serializers.IntegerField()
    max_clock_skew_seconds = serializers.FloatField()


class AgentHealthDetailSerializer(AgentHealthSerializer):
    policy = HealthPolicySerializer(
        read_only=True, help_text="The weights, threshold and streak length in force."
    )

    class Meta(AgentHealthSerializer.Meta):
        fields = [*AgentHealthSerializer.Meta.fields, "policy"]
        read_only_fields = fields
