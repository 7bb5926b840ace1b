"""The admin every token model shares: list and revoke, never create."""

from django.contrib import admin


class HashedTokenAdmin(admin.ModelAdmin):
    """Admin for a token model: list and revoke, never create (the plaintext shows once
    only where a token is issued: the API and the management commands)."""

    list_filter = ["revoked_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        return [self.model.OWNER, "lookup", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            token.revoke()
