from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from alerting import delivery, lifecycle
from alerting.admin_forms import AlertRuleForm
from alerting.models import (
    NOTIFICATION_FIELDS,
    OPEN_STATUSES,
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
from alerting.rules.base import KIND_FIELDS
from alerting.transports import kind_choices
from omoi_console.foundation.record_admin import RecordAdmin

# Label sets the rule preview lists.
PREVIEW_ROWS = 20


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    list_display = ["name", "kind", "severity", "enabled", "last_evaluated_at", "updated_at"]
    list_filter = ["kind", "severity", "enabled"]
    search_fields = ["name", "summary"]
    readonly_fields = ["preview", "last_evaluated_at", "last_error"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "severity", "enabled", "summary"]}),
        ("What it watches", {"fields": [*KIND_FIELDS, "params"]}),
        ("When it fires", {"fields": ["for_duration", "keep_firing_for", "evaluate_every"]}),
        ("What alerts carry", {"fields": ["labels", "annotations"]}),
        ("Now", {"fields": ["preview", "last_evaluated_at", "last_error"]}),
    ]

    @admin.display(description="What it would match now")
    def preview(self, obj):
        """The label sets (and values) the saved rule meets right now, read-only."""
        if obj is None or obj.pk is None:
            return "Save the rule to see what it would match."
        if obj.rule_kind.event_driven:
            open_alerts = obj.alerts.filter(status__in=OPEN_STATUSES).count()
            return f"Evaluated as its events arrive; {open_alerts} alert(s) open now."
        try:
            matches = obj.rule_kind.evaluate(obj, timezone.now())
        except Exception as exc:  # a preview must not break the page
            return f"Cannot evaluate now: {type(exc).__name__}: {str(exc)[:200]}"
        if not matches:
            return "Nothing meets the condition now."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td></tr>",
            (
                (", ".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "(all)", m.value)
                for m in matches[:PREVIEW_ROWS]
            ),
        )
        more = len(matches) - PREVIEW_ROWS
        tail = format_html("<p>and {} more</p>", more) if more > 0 else ""
        return format_html("<table><tr><th>Labels</th><th>Value</th></tr>{}</table>{}", rows, tail)

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
class NotificationAdmin(RecordAdmin):
    """History: read-only and never deleted here (retention removes old rows)."""

    list_display = ["id", "alert", "kind", "receiver", "status", "attempts", "created_at"]
    list_filter = ["status", "kind", "channel", "receiver"]
    search_fields = ["target", "last_error"]
    readonly_fields = NOTIFICATION_FIELDS
    fields = NOTIFICATION_FIELDS
    list_select_related = ["receiver"]
    actions = ["resend"]

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
        "cleared_at",
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
