from django.db import transaction
from django.db.models import ProtectedError
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from alerting import delivery, lifecycle
from alerting.api.serializers import (
    AlertRuleSerializer,
    AlertSerializer,
    NotificationSerializer,
    ReceiverSerializer,
    ReceiverTestSerializer,
)
from alerting.filtersets import AlertFilterSet, NotificationFilterSet
from alerting.models import Alert, AlertRule, Notification, Receiver
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


class ReceiverViewSet(viewsets.ModelViewSet):
    """Where notifications go. Secrets in ``config`` are write-only."""

    queryset = Receiver.objects.select_related("fallback")
    serializer_class = ReceiverSerializer
    permission_classes = [ModelPermissions]
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    def perform_create(self, serializer):
        with transaction.atomic():
            serializer.save()

    def perform_update(self, serializer):
        with transaction.atomic():
            serializer.save()

    def destroy(self, request, *args, **kwargs):
        receiver = self.get_object()
        try:
            receiver.delete()
        except ProtectedError:
            return problem_response(
                409,
                f"receiver {receiver.name} has notifications on record; disable it instead",
            )
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: ReceiverTestSerializer})
    @action(
        detail=True,
        methods=["post"],
        url_path="test",
        permission_classes=[require("alerting.change_receiver")],
    )
    def send_test(self, request, pk=None):
        """Send a made-up alert to this receiver now; nothing is recorded."""
        receiver = self.get_object()
        delivered, error, latency_ms = delivery.send_test(receiver)
        return Response(
            ReceiverTestSerializer(
                {"delivered": delivered, "error": error, "latency_ms": latency_ms}
            ).data
        )


class NotificationViewSet(viewsets.ReadOnlyModelViewSet):
    """Every delivery, newest first; filter by status (``dead`` is the dead letter),
    kind, channel, receiver (name) and alert."""

    queryset = Notification.objects.select_related("receiver").order_by("-created_at", "-id")
    serializer_class = NotificationSerializer
    permission_classes = [ModelPermissions]
    filterset_class = NotificationFilterSet

    @extend_schema(request=None, responses={201: NotificationSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("alerting.resend_notification")],
    )
    def resend(self, request, pk=None):
        """Try a dead notification again, as a new notification pointing at it."""
        notification = self.get_object()
        try:
            again = delivery.resend_notification(notification.pk)
        except delivery.NotResendable as exc:
            return problem_response(409, str(exc))
        return Response(NotificationSerializer(again).data, status=status.HTTP_201_CREATED)
