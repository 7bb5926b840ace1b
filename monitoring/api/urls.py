from django.urls import path
from rest_framework.routers import SimpleRouter

from monitoring.api import views

router = SimpleRouter(trailing_slash=False)
router.register("agents", views.AgentViewSet, basename="agent")

token_list = views.AgentTokenViewSet.as_view({"get": "list", "post": "create"})
token_detail = views.AgentTokenViewSet.as_view({"delete": "destroy"})

urlpatterns = [
    path("agents/<str:agent_id>/heartbeat", views.HeartbeatView.as_view(), name="agent-heartbeat"),
    path("agents/<str:agent_id>/tokens", token_list, name="agent-tokens"),
    path("agents/<str:agent_id>/tokens/<str:lookup>", token_detail, name="agent-token-detail"),
    *router.urls,
]
