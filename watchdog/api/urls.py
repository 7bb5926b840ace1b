from rest_framework.routers import SimpleRouter

from watchdog.api import views

router = SimpleRouter(trailing_slash=False)
router.register("remediation-actions", views.RemediationActionViewSet, basename="remediation")
router.register("remediation-policies", views.RemediationPolicyViewSet, basename="policy")

urlpatterns = router.urls
