from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from monitoring.api.otlp import OtlpMetricsView
from observability import prometheus
from omoi_console.foundation.api import problems
from omoi_console.top import pages, views
from omoi_console.top.login import ThrottledLoginView

api_v1 = [
    path("", include("monitoring.api.urls")),
    path("", include("alerting.api.urls")),
    path("", include("watchdog.api.urls")),
    path("", include("observability.api.urls")),
]

urlpatterns = [
    path("", views.console, name="console"),
    path("console/state", views.console_state, name="console-state"),
    path("agents/<agent_id:agent_id>", pages.agent_page, name="console-agent"),
    path("actions/<int:pk>", pages.action_page, name="console-action"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # One login form, throttled: the admin's own would take unlimited guesses.
    path("admin/login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    # OTLP/HTTP's own path, where OpenTelemetry exporters send metrics by default.
    path("v1/metrics", OtlpMetricsView.as_view(), name="otlp-metrics"),
    # A fixed version: the view would otherwise copy ?version= into a header.
    path("api/schema/", SpectacularAPIView.as_view(api_version="1"), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("metrics", prometheus.metrics_view, name="prometheus-metrics"),
]

handler400 = problems.bad_request_handler
handler404 = problems.not_found_handler
handler500 = problems.server_error_handler
