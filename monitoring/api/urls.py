from django.urls import path, register_converter
from django.urls.converters import StringConverter
from rest_framework.routers import SimpleRouter

from monitoring.api import detection, metrics, queries, views
from monitoring.catalog import METRIC_NAME
from monitoring.models import AGENT_ID_PATTERN
from omoi_console.foundation.tokens import LOOKUP_PATTERN


class AgentIdConverter(StringConverter):
    """Only what can be an agent id routes; anything else is simply not found (404)."""

    regex = AGENT_ID_PATTERN


class TokenLookupConverter(StringConverter):
    regex = LOOKUP_PATTERN


class MetricNameConverter(StringConverter):
    regex = METRIC_NAME.pattern


register_converter(AgentIdConverter, "agent_id")
register_converter(MetricNameConverter, "metric")
register_converter(TokenLookupConverter, "token_lookup")

router = SimpleRouter(trailing_slash=False)
router.register("agents", views.AgentViewSet, basename="agent")
router.register("anomalies", queries.AnomalyViewSet, basename="anomaly")

token_list = views.AgentTokenViewSet.as_view({"get": "list", "post": "create"})
token_detail = views.AgentTokenViewSet.as_view({"delete": "destroy"})

urlpatterns = [
    path(
        "agents/<agent_id:agent_id>/heartbeat",
        views.HeartbeatView.as_view(),
        name="agent-heartbeat",
    ),
    path("metrics/ingest", metrics.MetricIngestView.as_view(), name="metric-ingest"),
    path("metrics/catalog", metrics.MetricCatalogView.as_view(), name="metric-catalog"),
    path("metrics", queries.MetricListView.as_view(), name="metric-list"),
    path("metrics/series", queries.SeriesListView.as_view(), name="metric-series"),
    path("metrics/query", queries.SeriesQueryView.as_view(), name="metric-query"),
    path("metrics/top", queries.TopAgentsView.as_view(), name="metric-top"),
    path("detection", detection.DetectionListView.as_view(), name="detection-list"),
    path(
        "detection/<metric:metric>",
        detection.DetectionDetailView.as_view(),
        name="detection-detail",
    ),
    path("anomalies/summary", queries.AnomalySummaryView.as_view(), name="anomaly-summary"),
    path("agent-health", views.AgentHealthListView.as_view(), name="agent-health-list"),
    path("fleet/summary", queries.FleetSummaryView.as_view(), name="fleet-summary"),
    path("agents/<agent_id:agent_id>/tokens", token_list, name="agent-tokens"),
    path(
        "agents/<agent_id:agent_id>/tokens/<token_lookup:lookup>",
        token_detail,
        name="agent-token-detail",
    ),
    *router.urls,
]
