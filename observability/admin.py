from django.contrib import admin
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.clickjacking import xframe_options_sameorigin

from observability.models import ProfileSnapshot

# pyinstrument's page is one file with inline script and style. Served alone,
# sandboxed (an origin of its own: no cookies, no admin DOM) and allowed
# nothing beyond its inline code, a profile cannot act as the operator viewing it.
PROFILE_PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'; sandbox allow-scripts"
)


@admin.register(ProfileSnapshot)
class ProfileSnapshotAdmin(admin.ModelAdmin):
    """Profiles are evidence: read and deleted here, never edited or made by hand."""

    list_display = ["created_at", "kind", "target", "duration_seconds", "requested_by"]
    list_filter = ["kind"]
    search_fields = ["target", "requested_by", "trace_id"]
    date_hierarchy = "created_at"
    fields = [
        "kind",
        "target",
        "created_at",
        "duration_seconds",
        "requested_by",
        "trace_id",
        "page",
        "summary",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        # The list never shows the pages; each is a few hundred kilobytes.
        return super().get_queryset(request).defer("html", "summary")

    @admin.display(description="Profile")
    def page(self, obj):
        url = reverse("admin:observability_profilesnapshot_page", args=[obj.pk])
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">open in its own tab</a><br>'
            '<iframe src="{}" sandbox="allow-scripts" title="profile" '
            'style="width:100%;height:70vh;border:1px solid #ccc"></iframe>',
            url,
            url,
        )

    def get_urls(self):
        page = path(
            "<int:pk>/page/",
            self.admin_site.admin_view(self.page_view),
            name="observability_profilesnapshot_page",
        )
        return [page, *super().get_urls()]

    @xframe_options_sameorigin
    def page_view(self, request, pk):
        if not self.has_view_permission(request):
            return HttpResponse("Not allowed.", status=403, content_type="text/plain")
        snapshot = get_object_or_404(ProfileSnapshot.objects.only("html"), pk=pk)
        response = HttpResponse(snapshot.html, content_type="text/html; charset=utf-8")
        response["Content-Security-Policy"] = PROFILE_PAGE_POLICY
        response["X-Content-Type-Options"] = "nosniff"
        response["Referrer-Policy"] = "no-referrer"
        return response
