from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from alerting.models import Alert
from monitoring.models import Agent
from omoi_console.foundation.api.permissions import ModelPermissions, require
from omoi_console.foundation.api.problems import problem_response
from watchdog import explain, manual
from watchdog.api.serializers import (
    ExplainQuerySerializer,
    ManualActionSerializer,
    RemediationActionSerializer,
    RemediationPolicySerializer,
)
from watchdog.models import ActionStatus, RemediationAction, RemediationPolicy, Trigger


class RemediationActionViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit of remediations: read-only."""

    queryset = RemediationAction.objects.select_related("policy")
    serializer_class = RemediationActionSerializer
    permission_classes = [ModelPermissions]
    filterset_fields = ["agent", "status", "policy", "trigger"]


class RemediationPolicyViewSet(
    mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet
):
    """Policies: read by those who may view them, written by those who may change them.

    Not deleted through the API: a policy is referenced by its actions; disable it.
    """

    queryset = RemediationPolicy.objects.all()
    serializer_class = RemediationPolicySerializer
    permission_classes = [ModelPermissions]

    @extend_schema(
        parameters=[
            OpenApiParameter("alert", int, description="Explain for this alert."),
            OpenApiParameter("agent", str, description="Explain for this agent ..."),
            OpenApiParameter("trigger", str, description="... and trigger (agent_failed)."),
        ],
        responses={200: dict},
    )
    @action(detail=False, methods=["get"], filter_backends=[], pagination_class=None)
    def explain(self, request):
        """Which policy would act, and what it would do step by step; acts on nothing."""
        query = ExplainQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        given = query.validated_data
        alert = None
        if "alert" in given:
            found = Alert.objects.select_related("rule").filter(pk=given["alert"]).first()
            if found is None:
                raise NotFound(f"No alert {given['alert']}.")
            alert = explain.alert_payload(found)
            agent_id = explain.alert_agent_id(alert)
            if not agent_id:
                raise ValidationError({"alert": ["the alert names no agent (agent_id label)"]})
            trigger = Trigger.ALERT
        else:
            agent_id = given["agent"]
            trigger = given.get("trigger", Trigger.AGENT_FAILED)
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is None:
            raise NotFound(f"No agent {agent_id}.")
        return Response(explain.explain(trigger, agent, alert))


class ManualActionView(APIView):
    """``POST /agents/{id}/actions/{restart|drain|quarantine|release|recycle-token}``.

    Operators only; each is an audited action with the operator as actor.
    """

    permission_classes = [require("watchdog.act_on_agent")]

    @extend_schema(request=ManualActionSerializer, responses={201: RemediationActionSerializer})
    def post(self, request, agent_id, kind):
        if kind not in manual.MANUAL_ACTIONS:
            raise NotFound(f"No action {kind!r}; one of {', '.join(manual.MANUAL_ACTIONS)}.")
        given = ManualActionSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                done = manual.run_manual_action(
                    agent_id,
                    kind,
                    actor=f"user:{request.user.get_username()}",
                    reason=given.validated_data.get("reason", ""),
                )
        except manual.AgentNotFound:
            raise NotFound(f"No agent {agent_id}.") from None
        except manual.Conflict as exc:
            return problem_response(409, str(exc))
        if done.status == ActionStatus.FAILED:
            return problem_response(502, f"Action {done.pk} failed: {done.outcome}")
        return Response(RemediationActionSerializer(done).data, status=status.HTTP_201_CREATED)
