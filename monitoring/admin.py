from django.contrib import admin

from monitoring.models import Agent, AgentCommand, AgentToken, AgentTransition


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


@admin.register(AgentToken)
class AgentTokenAdmin(admin.ModelAdmin):
    list_display = ["lookup", "agent", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["agent__id", "lookup", "name"]
    readonly_fields = ["agent", "lookup", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Tokens are issued through the API or `manage.py agents`, which show them once.
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            token.revoke()


@admin.register(AgentCommand)
class AgentCommandAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "kind", "status", "created_at", "delivered_at", "acked_at"]
    list_filter = ["kind", "status"]
    search_fields = ["agent__id"]
