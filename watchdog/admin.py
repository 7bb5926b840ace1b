from django.contrib import admin

from omoi_console.foundation.record_admin import RecordAdmin
from watchdog import guards
from watchdog.models import (
    EscalationChain,
    PolicyBreaker,
    RemediationAction,
    RemediationPolicy,
    StormState,
    WatchdogSwitch,
)


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
class RemediationActionAdmin(RecordAdmin):
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


@admin.register(WatchdogSwitch)
class WatchdogSwitchAdmin(admin.ModelAdmin):
    """The kill switch: admins turn the fleet-wide dry run on and off, saying why.

    Who and when are set from the request, and each change is audited as a
    ``watchdog.switch.changed`` event.
    """

    list_display = ["__str__", "dry_run", "changed_by", "changed_at", "reason"]
    fields = ["dry_run", "reason", "changed_by", "changed_at"]
    readonly_fields = ["changed_by", "changed_at"]

    def has_add_permission(self, request):
        return super().has_add_permission(request) and not WatchdogSwitch.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        switch = guards.set_kill_switch(
            obj.dry_run, by=f"user:{request.user.get_username()}", reason=obj.reason
        )
        obj.changed_by, obj.changed_at = switch.changed_by, switch.changed_at


class GuardStateAdmin(RecordAdmin):
    """What the guards hold now: read here, changed only by the watchdog."""


@admin.register(StormState)
class StormStateAdmin(GuardStateAdmin):
    list_display = ["role", "paused", "paused_at", "resumed_at", "unhealthy", "total"]


@admin.register(PolicyBreaker)
class PolicyBreakerAdmin(GuardStateAdmin):
    list_display = ["policy", "failures", "opened_at", "open_until"]
