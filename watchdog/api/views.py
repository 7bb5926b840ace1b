from django.db import transaction
from django.db.models import ProtectedError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from alerting.models import Alert
from monitoring.models import Agent
from omoi_console.foundation.api.fields import BIGINT_MAX
from omoi_console.foundation.api.permissions import ModelPermissions, require
from omoi_console.foundation.api.problems import problem_response
from watchdog import approval, explain, manual
from watchdog.api.serializers import (
    ApprovalDecisionSerializer,
    EscalationChainDetailSerializer,
    ExplainQuerySerializer,
    ManualActionSerializer,
    RemediationActionSerializer,
    RemediationPolicySerializer,
)
from watchdog.models import (
    ActionStatus,
    ApprovalDecision,
    EscalationChain,
    RemediationAction,
    RemediationPolicy,
    Trigger,
)


class RemediationActionViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit of remediations: read-only, but for an operator's decision on a step
    that awaits approval (``approve``, ``reject``)."""

    queryset = RemediationAction.objects.select_related("policy")
    serializer_class = RemediationActionSerializer
    permission_classes = [ModelPermissions]
    filterset_fields = ["agent", "status", "policy", "trigger"]

    @extend_schema(request=ApprovalDecisionSerializer, responses={200: RemediationActionSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("watchdog.act_on_agent")],
        filter_backends=[],
    )
    def approve(self, request, pk=None):
        """Let the step the action waits on act (through the usual guards); operators only."""
        return self._decide(request, pk, ApprovalDecision.APPROVED)

    @extend_schema(request=ApprovalDecisionSerializer, responses={200: RemediationActionSerializer})
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[require("watchdog.act_on_agent")],
        filter_backends=[],
    )
    def reject(self, request, pk=None):
        """Refuse the step the action waits on: the action is skipped (``rejected``)."""
        return self._decide(request, pk, ApprovalDecision.REJECTED)

    def _decide(self, request, pk, decision):
        if not str(pk).isdigit() or int(pk) > BIGINT_MAX:
            raise NotFound(f"No action {pk}.")
        given = ApprovalDecisionSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            decided = approval.decide(
                int(pk),
                decision,
                by=request.user.get_username(),
                reason=given.validated_data.get("reason", ""),
            )
        except approval.ActionNotFound:
            raise NotFound(f"No action {pk}.") from None
        except approval.Conflict as exc:
            return problem_response(409, str(exc))
        decided = self.get_queryset().get(pk=decided.pk)
        return Response(RemediationActionSerializer(decided).data)


class EscalationChainViewSet(viewsets.ModelViewSet):
    """Escalation chains by name: read by those who may view them, written by admins.

    Levels are checked as in the admin and policy files (one check); a chain that
    a policy still names is not deleted (409).
    """

    queryset = EscalationChain.objects.prefetch_related("policies")
    serializer_class = EscalationChainDetailSerializer
    permission_classes = [ModelPermissions]
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    def destroy(self, request, *args, **kwargs):
        chain = self.get_object()
        named = sorted(chain.policies.values_list("name", flat=True))
        if named:
            return problem_response(
                409, f"Escalation chain {chain.name} is named by policy {', '.join(named)}."
            )
        try:
            chain.delete()
        except ProtectedError:
            # A policy came to name it meanwhile.
            return problem_response(409, f"Escalation chain {chain.name} is named by a policy.")
        return Response(status=status.HTTP_204_NO_CONTENT)


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
