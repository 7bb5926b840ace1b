from django.urls import path
from rest_framework.routers import SimpleRouter

from watchdog.api import views

router = SimpleRouter(trailing_slash=False)
router.register("remediation-actions", views.RemediationActionViewSet, basename="remediation")
router.register("remediation-policies", views.RemediationPolicyViewSet, basename="policy")
router.register("escalation-chains", views.EscalationChainViewSet, basename="escalation-chain")

urlpatterns = [
    path(
        "agents/<str:agent_id>/actions/<str:kind>",
        views.ManualActionView.as_view(),
        name="agent-manual-action",
    ),
    *router.urls,
]
