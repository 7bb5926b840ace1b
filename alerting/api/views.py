from django.db import transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from alerting import delivery, lifecycle
from alerting.api.serializers import (
    AcknowledgeSerializer,
    AlertRuleSerializer,
    AlertSerializer,
    InhibitRuleSerializer,
    NotificationSerializer,
    ReceiverSerializer,
    ReceiverTestSerializer,
    ResolveSerializer,
    RouteSerializer,
    SilenceSerializer,
)
from alerting.filtersets import AlertFilterSet, NotificationFilterSet
from alerting.models import (
    Alert,
    AlertRule,
    InhibitRule,
    Notification,
    Receiver,
    Route,
    Silence,
)
from omoi_console.foundation.api.permissions import ModelPermissions, require
from omoi_console.foundation.api.problems import problem_response


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Alerts, newest first. ``?status=open`` lists everything not yet resolved."""

    queryset = Alert.objects.select_related("rule", "acknowledged_by")
    serializer_class = AlertSerializer
    permission_classes = [ModelPermissions]
    filterset_class = AlertFilterSet

    @extend_schema(request=AcknowledgeSerializer, responses={200: AlertSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("alerting.acknowledge_alert")],
    )
    def acknowledge(self, request, pk=None):
        """Take the alert, with an optional comment and an optional expiry (``expires_in``)."""
        given = AcknowledgeSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        expires_in = given.validated_data.get("expires_in")
        return self._change(
            lifecycle.acknowledge_alert,
            request.user,
            comment=given.validated_data.get("comment", ""),
            expires_at=timezone.now() + expires_in if expires_in else None,
        )

    @extend_schema(request=None, responses={200: AlertSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("alerting.acknowledge_alert")],
    )
    def unacknowledge(self, request, pk=None):
        """Give the alert back: it fires again until its cause recovers."""
        actor = f"user:{request.user.get_username()}"
        return self._change(lifecycle.unacknowledge_alert, actor, reason="withdrawn")

    @extend_schema(request=ResolveSerializer, responses={200: AlertSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("alerting.resolve_alert")],
    )
    def resolve(self, request, pk=None):
        """Close the alert by hand, saying why (``comment``)."""
        given = ResolveSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        return self._change(
            lifecycle.resolve_by_hand, request.user, comment=given.validated_data["comment"]
        )

    def _change(self, change, *args, **kwargs):
        alert = self.get_object()
        try:
            alert = change(alert, *args, **kwargs)
        except lifecycle.AlertClosed as exc:
            return problem_response(409, str(exc))
        return Response(AlertSerializer(alert).data)


class AlertRuleViewSet(viewsets.ModelViewSet):
    """Alert rules: read by anyone who may view them, written by those who may change them.

    A rule is checked against its kind before it is saved (422 naming each
    field). Disabling a rule resolves its open alerts; a rule that has alerts
    cannot be deleted (409): disable it instead, so its alerts keep their rule.
    """

    queryset = AlertRule.objects.all()
    serializer_class = AlertRuleSerializer
    permission_classes = [ModelPermissions]
    lookup_value_regex = "[0-9]{1,18}"

    def perform_update(self, serializer):
        with transaction.atomic():
            rule = serializer.save(next_evaluation_at=timezone.now())
            if not rule.enabled:
                lifecycle.resolve_rule_alerts(rule, reason="rule disabled")

    def destroy(self, request, *args, **kwargs):
        rule = self.get_object()
        try:
            with transaction.atomic():
                rule.delete()
        except ProtectedError:
            return problem_response(
                409, f"Rule {rule.name} has alerts; disable it instead of deleting it."
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


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


class SilenceViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Silences, newest first; ``?active=true`` lists those in force now. Not edited:
    expire one (``POST .../expire``) and create another."""

    queryset = Silence.objects.select_related("created_by")
    serializer_class = SilenceSerializer
    permission_classes = [ModelPermissions]
    lookup_value_regex = "[0-9]{1,18}"

    def get_queryset(self):
        found = super().get_queryset()
        active = self.request.query_params.get("active")
        if active is None:
            return found
        if active not in ("true", "false"):
            raise ValidationError({"active": "true or false"})
        now = timezone.now()
        current = Q(starts_at__lte=now, ends_at__gt=now)
        return found.filter(current) if active == "true" else found.exclude(current)

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)

    @extend_schema(request=None, responses={200: SilenceSerializer})
    @action(detail=True, methods=["post"], permission_classes=[require("alerting.change_silence")])
    def expire(self, request, pk=None):
        """End the silence now; held-back alerts that still fire are notified by the next sweep."""
        silence = self.get_object()
        now = timezone.now()
        if silence.ends_at > now:
            silence.ends_at = max(now, silence.starts_at)
            silence.save(update_fields=["ends_at"])
        return Response(SilenceSerializer(silence).data)


class InhibitRuleViewSet(viewsets.ModelViewSet):
    queryset = InhibitRule.objects.all()
    serializer_class = InhibitRuleSerializer
    permission_classes = [ModelPermissions]
    lookup_value_regex = "[0-9]{1,18}"


class RouteViewSet(viewsets.ModelViewSet):
    """The routing tree, a route per row: which receivers alerts with given labels go to."""

    queryset = Route.objects.select_related("parent").prefetch_related("receivers")
    serializer_class = RouteSerializer
    permission_classes = [ModelPermissions]
    lookup_value_regex = "[0-9]{1,18}"
