from django.contrib import admin

from alerting.models import Alert, AlertRule, Notification


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "severity", "enabled", "updated_at"]
    list_filter = ["kind", "severity", "enabled"]
    search_fields = ["name", "summary"]


class NotificationInline(admin.TabularInline):
    model = Notification
    extra = 0
    can_delete = False
    readonly_fields = [
        "kind",
        "channel",
        "target",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
        "latency_ms",
    ]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["id", "rule", "summary", "severity", "status", "started_at", "resolved_at"]
    list_filter = ["status", "severity", "rule"]
    search_fields = ["summary", "fingerprint"]
    readonly_fields = [
        "rule",
        "fingerprint",
        "labels",
        "severity",
        "summary",
        "status",
        "started_at",
        "fired_at",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
        "trace_id",
    ]
    inlines = [NotificationInline]

    def has_add_permission(self, request):
        return False
