from django.contrib import admin

from watchdog.models import RemediationAction, RemediationPolicy


@admin.register(RemediationPolicy)
class RemediationPolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "enabled", "trigger", "agent_role", "step", "dry_run", "priority"]
    list_filter = ["enabled", "trigger", "step", "dry_run"]
    search_fields = ["name"]


@admin.register(RemediationAction)
class RemediationActionAdmin(admin.ModelAdmin):
    list_display = ["id", "agent", "step", "status", "policy", "started_at", "finished_at"]
    list_filter = ["status", "step", "policy"]
    search_fields = ["agent__id", "idempotency_key"]
    readonly_fields = [f.name for f in RemediationAction._meta.fields]

    def has_add_permission(self, request):
        return False
