from django import forms
from django.contrib import admin

from monitoring import catalog, registry
from monitoring.detectors import DETECTORS
from monitoring.models import (
    Agent,
    AgentCommand,
    AgentHealth,
    AgentToken,
    AgentTransition,
    DetectorSetting,
    MetricSeries,
    MonitorAnomaly,
    SeriesDetector,
)
from omoi_console.foundation.record_admin import RecordAdmin
from omoi_console.foundation.token_admin import HashedTokenAdmin


class TransitionInline(admin.TabularInline):
    model = AgentTransition
    extra = 0
    can_delete = False
    readonly_fields = ["from_state", "to_state", "reason", "actor", "at"]
    ordering = ["-at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "role", "state", "owner", "version", "last_heartbeat_at"]
    list_filter = ["state", "role"]
    search_fields = ["id", "name", "owner"]
    readonly_fields = [
        "state",
        "last_heartbeat_at",
        "overdue_at",
        "missed_heartbeats",
        "unhealthy_since",
        "current_task",
        "task_progress",
        "progress_changed_at",
        "task_stuck_after",
        "stuck_at",
        "restart_generation",
        "state_changed_at",
        "created_at",
    ]
    inlines = [TransitionInline]

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        # Through the registry's one way in, so a new role or interval moves the
        # agent's deadlines; the form has validated every value already.
        edited = {name: form.cleaned_data[name] for name in form.changed_data}
        registry.update_agent(obj, edited, actor=f"user:{request.user.get_username()}")

    def get_readonly_fields(self, request, obj=None):
        # Editing a primary key in the admin would save a copy under the new id.
        return [*self.readonly_fields, "id"] if obj is not None else self.readonly_fields

    def has_add_permission(self, request):
        # Agents are registered through the API or `manage.py agents`, which also
        # issue the first token and record the first transition.
        return False

    def has_delete_permission(self, request, obj=None):
        # An agent carries its audit (transitions, commands, remediations): it is
        # retired (terminated), never deleted here.
        return False


@admin.register(AgentToken)
class AgentTokenAdmin(HashedTokenAdmin):
    list_display = ["lookup", "agent", "name", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["agent__id", "lookup", "name"]


@admin.register(AgentCommand)
class AgentCommandAdmin(RecordAdmin):
    """Commands are an audit of what agents were told: read-only here.

    Operators issue commands through the API, which records them as the actor.
    """

    list_display = [
        "id",
        "agent",
        "kind",
        "status",
        "issued_by",
        "serves",
        "created_at",
        "delivered_at",
        "acked_at",
    ]
    list_filter = ["kind", "status"]
    search_fields = ["agent__id", "serves"]
    readonly_fields = [f.name for f in AgentCommand._meta.fields]


@admin.register(MetricSeries)
class MetricSeriesAdmin(admin.ModelAdmin):
    """Series are created by ingest: here to look them up, not to edit."""

    list_display = ["id", "metric", "agent_id", "labels", "created_at"]
    list_filter = ["metric"]
    search_fields = ["agent_id", "metric"]
    readonly_fields = ["metric", "labels", "fingerprint", "agent_id", "created_at"]
    show_full_result_count = False  # a count over many series is not worth a page load

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(MonitorAnomaly)
class MonitorAnomalyAdmin(RecordAdmin):
    """Anomalies are written by the detectors only: the admin lists and shows them."""

    list_display = [
        "id",
        "metric",
        "agent_id",
        "severity",
        "direction",
        "detector",
        "peak_score",
        "started_at",
        "ended_at",
    ]
    list_filter = ["severity", "direction", "detector", "metric"]
    search_fields = ["agent_id", "metric"]
    date_hierarchy = "started_at"
    list_select_related = ["series"]


class DetectorSettingForm(forms.ModelForm):
    """Metric and detector are picked from what exists, so a typo cannot be saved."""

    class Meta:
        model = DetectorSetting
        fields = ["metric", "enabled", "detector", "params", "on", "severity"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["metric"].widget = forms.Select(
            choices=[(spec.name, spec.name) for spec in catalog.ordered()]
        )
        self.fields["detector"].widget = forms.Select(
            choices=[(name, name) for name in sorted(DETECTORS)]
        )


@admin.register(DetectorSetting)
class DetectorSettingAdmin(admin.ModelAdmin):
    """An operator's detection for a metric; without a row the catalogue's default applies."""

    form = DetectorSettingForm
    list_display = ["metric", "enabled", "detector", "on", "params", "severity", "updated_at"]
    list_filter = ["enabled", "detector", "severity"]
    search_fields = ["metric"]


@admin.register(SeriesDetector)
class SeriesDetectorAdmin(admin.ModelAdmin):
    """Where each watched series' detector got to; written by detection only."""

    list_display = ["series", "config", "minute", "value", "score"]
    search_fields = ["series__metric", "series__agent_id"]
    list_select_related = ["series"]
    readonly_fields = ["series", "config", "state", "minute", "value", "previous", "score"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AgentHealth)
class AgentHealthAdmin(RecordAdmin):
    """Health is computed by the periodic evaluation only: the admin lists and shows it."""

    list_display = ["agent", "score", "anomalous", "streak", "anomalous_since", "evaluated_at"]
    list_filter = ["anomalous", "agent__role"]
    search_fields = ["agent__id"]
    ordering = ["-score", "agent"]
    list_select_related = ["agent"]
