from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from alerting import lifecycle
from alerting.api.serializers import AlertRuleSerializer, AlertSerializer, NotificationSerializer
from alerting.filtersets import AlertFilterSet
from alerting.models import Alert, AlertRule, Notification
from omoi_console.foundation.api.permissions import ModelPermissions, require
from omoi_console.foundation.api.problems import problem_response


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Alerts, newest first. ``?status=open`` lists everything not yet resolved."""

    queryset = Alert.objects.select_related("rule", "acknowledged_by")
    serializer_class = AlertSerializer
    permission_classes = [ModelPermissions]
    filterset_class = AlertFilterSet

    @extend_schema(request=None, responses={200: AlertSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("alerting.acknowledge_alert")],
    )
    def acknowledge(self, request, pk=None):
        alert = self.get_object()
        try:
            alert = lifecycle.acknowledge_alert(alert, request.user)
        except lifecycle.AlertClosed as exc:
            return problem_response(409, str(exc))
        return Response(AlertSerializer(alert).data)


class AlertRuleViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = AlertRule.objects.all()
    serializer_class = AlertRuleSerializer
    permission_classes = [ModelPermissions]


class NotificationViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Notification.objects.order_by("-created_at")
    serializer_class = NotificationSerializer
    permission_classes = [ModelPermissions]
