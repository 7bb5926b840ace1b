from django.contrib import admin
from django.db import transaction
from django.utils import timezone

from alerting import lifecycle
from alerting.models import Alert, AlertEvent, AlertRule, InhibitRule, Notification, Silence


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "severity", "enabled", "last_evaluated_at", "updated_at"]
    list_filter = ["kind", "severity", "enabled"]
    search_fields = ["name", "summary"]
    readonly_fields = ["last_evaluated_at", "last_error"]

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            obj.next_evaluation_at = timezone.now()
            super().save_model(request, obj, form, change)
            if not obj.enabled:
                lifecycle.resolve_rule_alerts(obj, reason="rule disabled")


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


class AlertEventInline(admin.TabularInline):
    """The alert's history: written by alerting only, never edited or deleted here."""

    model = AlertEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "change", "actor", "detail"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """Alerts change through their lifecycle (API and console), not by editing here."""

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
        "ack_comment",
        "ack_expires_at",
        "resolved_at",
        "resolution",
        "value",
        "last_matched_at",
        "trace_id",
    ]
    inlines = [AlertEventInline, NotificationInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    """Silences are created here or over the API; to end one early, set its end to now."""

    list_display = ["id", "matchers", "starts_at", "ends_at", "created_by", "comment"]
    search_fields = ["comment"]
    readonly_fields = ["created_by", "created_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(InhibitRule)
class InhibitRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "source_matchers", "target_matchers", "equal", "enabled"]
    list_filter = ["enabled"]
