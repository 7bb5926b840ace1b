from rest_framework.routers import SimpleRouter

from alerting.api import views

router = SimpleRouter(trailing_slash=False)
router.register("alerts", views.AlertViewSet, basename="alert")
router.register("alert-rules", views.AlertRuleViewSet, basename="alert-rule")
router.register("receivers", views.ReceiverViewSet, basename="receiver")
router.register("notifications", views.NotificationViewSet, basename="notification")
router.register("silences", views.SilenceViewSet, basename="silence")
router.register("inhibit-rules", views.InhibitRuleViewSet, basename="inhibit-rule")
router.register("routes", views.RouteViewSet, basename="route")

urlpatterns = router.urls
