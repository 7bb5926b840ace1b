from django.contrib import admin

from watchdog.models import EscalationChain, RemediationAction, RemediationPolicy


@admin.register(RemediationPolicy)
class RemediationPolicyAdmin(admin.ModelAdmin):
    """Policies are edited here; ``clean()`` refuses an invalid one, naming the field."""

    list_display = [
        "name",
        "enabled",
        "trigger",
        "agent_role",
        "alert_rule",
        "severity",
        "cooldown_seconds",
        "max_per_hour",
        "dry_run",
        "priority",
    ]
    list_filter = ["enabled", "trigger", "dry_run"]
    search_fields = ["name"]


@admin.register(EscalationChain)
class EscalationChainAdmin(admin.ModelAdmin):
    """Chains are edited here too; ``clean()`` refuses invalid levels, naming each problem."""

    list_display = ["name"]
    search_fields = ["name"]


@admin.register(RemediationAction)
class RemediationActionAdmin(admin.ModelAdmin):
    """The audit: read-only and never deleted here (retention prunes it)."""

    list_display = [
        "id",
        "agent",
        "step",
        "status",
        "skip_reason",
        "policy",
        "started_at",
        "next_step_at",
        "finished_at",
    ]
    list_filter = ["status", "skip_reason", "step", "policy"]
    search_fields = ["agent__id", "idempotency_key"]
    readonly_fields = [f.name for f in RemediationAction._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
