"""Admin pages of records: read in the admin, never written or deleted there."""

from django.contrib import admin


class RecordAdmin(admin.ModelAdmin):
    """Audit rows and state the product keeps for itself (commands, notifications,
    remediation actions, anomalies): people read them here; only the product writes
    them, and retention alone removes them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
