from django.contrib import admin

from omoi_console.foundation.token_admin import HashedTokenAdmin
from omoi_console.models import Event, OperatorToken


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "name", "status", "attempts", "trace_id"]
    list_filter = ["status", "name"]
    search_fields = ["id", "trace_id", "key"]
    readonly_fields = [f.name for f in Event._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(OperatorToken)
class OperatorTokenAdmin(HashedTokenAdmin):
    list_display = ["lookup", "user", "name", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["user__username", "lookup", "name"]
