from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone

from alerting import delivery, lifecycle
from alerting.models import (
    NOTIFICATION_FIELDS,
    Alert,
    AlertEvent,
    AlertRule,
    InhibitRule,
    Notification,
    NotificationStatus,
    Receiver,
    Route,
    Silence,
)
from alerting.transports import kind_choices


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


class ReceiverForm(forms.ModelForm):
    """Secrets are never shown: the config field holds the rest, and a secret left
    out of it is kept (``null`` clears it)."""

    kind = forms.ChoiceField(choices=kind_choices)

    class Meta:
        model = Receiver
        fields = [
            "name",
            "kind",
            "config",
            "enabled",
            "default",
            "send_resolved",
            "send_resolved_when_silenced",
            "fallback",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["config"] = self.instance.public_config()
            secrets = self.instance.secrets_set()
            if secrets:
                self.fields[
                    "config"
                ].help_text = f"Set and hidden: {', '.join(secrets)}. Leave them out to keep them."

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk and "config" in cleaned:
            cleaned["config"] = self.instance.merged_config(cleaned["config"], cleaned.get("kind"))
        return cleaned


@admin.register(Receiver)
class ReceiverAdmin(admin.ModelAdmin):
    form = ReceiverForm
    list_display = ["name", "kind", "enabled", "default", "fallback", "consecutive_failures"]
    list_filter = ["kind", "enabled", "default"]
    search_fields = ["name"]
    readonly_fields = ["consecutive_failures", "circuit_open_until"]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    """History: read-only and never deleted here (retention removes old rows)."""

    list_display = ["id", "alert", "kind", "receiver", "status", "attempts", "created_at"]
    list_filter = ["status", "kind", "channel", "receiver"]
    search_fields = ["target", "last_error"]
    readonly_fields = NOTIFICATION_FIELDS
    fields = NOTIFICATION_FIELDS
    list_select_related = ["receiver"]
    actions = ["resend"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_resend_permission(self, request):
        return request.user.has_perm("alerting.resend_notification")

    @admin.action(description="Re-send selected dead notifications", permissions=["resend"])
    def resend(self, request, queryset):
        resent = skipped = 0
        for pk in queryset.filter(status=NotificationStatus.DEAD).values_list("pk", flat=True):
            try:
                delivery.resend_notification(pk)
                resent += 1
            except delivery.NotResendable:
                skipped += 1
        skipped += queryset.exclude(status=NotificationStatus.DEAD).count()
        self.message_user(request, f"Re-sent {resent}; skipped {skipped} (not dead or re-sent).")
        if skipped:
            self.message_user(request, "Only dead notifications are re-sent.", messages.WARNING)


class NotificationInline(admin.TabularInline):
    model = Notification
    fk_name = "alert"
    extra = 0
    can_delete = False
    fields = ["kind", "receiver", "target", "status", "attempts", "last_error", "sent_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
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


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "parent",
        "position",
        "matchers",
        "continue_matching",
        "group_by",
        "group_wait",
        "enabled",
    ]
    list_filter = ["enabled"]
    filter_horizontal = ["receivers"]
