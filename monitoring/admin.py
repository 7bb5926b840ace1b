from django.contrib import admin

from monitoring.models import Agent, AgentCommand, AgentToken, AgentTransition, MonitorAnomaly
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
    list_display = ["id", "role", "state", "last_heartbeat_at", "missed_heartbeats"]
    list_filter = ["state", "role"]
    search_fields = ["id"]
    readonly_fields = [
        "state",
        "last_heartbeat_at",
        "overdue_at",
        "missed_heartbeats",
        "unhealthy_since",
        "current_task",
        "task_progress",
        "state_changed_at",
        "created_at",
    ]
    inlines = [TransitionInline]

    def get_readonly_fields(self, request, obj=None):
        # Editing a primary key in the admin would save a copy under the new id.
        return [*self.readonly_fields, "id"] if obj is not None else self.readonly_fields

    def has_add_permission(self, request):
        # Agents are registered through the API or `manage.py agents`, which also
        # issue the first token and record the first transition.
        return False


@admin.register(AgentToken)
class AgentTokenAdmin(HashedTokenAdmin):
    list_display = ["lookup", "agent", "name", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["agent__id", "lookup", "name"]


@admin.register(AgentCommand)
class AgentCommandAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "kind", "status", "created_at", "delivered_at", "acked_at"]
    list_filter = ["kind", "status"]
    search_fields = ["agent__id"]


@admin.register(MonitorAnomaly)
class MonitorAnomalyAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
