from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import health, registry, services
from monitoring.api.permissions import IsAgent
from monitoring.api.serializers import (
    AgentHealthDetailSerializer,
    AgentHealthSerializer,
    AgentRegistrationSerializer,
    AgentSerializer,
    AgentTokenSerializer,
    AgentUpdateSerializer,
    HeartbeatResponseSerializer,
    HeartbeatSerializer,
    IssuedAgentTokenSerializer,
    RegisteredAgentSerializer,
    TokenRequestSerializer,
    TransitionSerializer,
)
from monitoring.filtersets import AgentFilterSet, AgentHealthFilterSet
from monitoring.ingest.cache import ingest_cache, remember_served
from monitoring.models import AGENT_ID_PATTERN, Agent, AgentHealth, AgentToken
from omoi_console.foundation.api.permissions import ModelPermissions, require
from omoi_console.foundation.api.problems import problem_response

READ_AGENTS = "monitoring.view_agent"


class HeartbeatView(APIView):
    """An agent reports it is alive; the response carries its pending commands."""

    permission_classes = [IsAgent]
    for_agents = True

    @extend_schema(request=HeartbeatSerializer, responses={200: HeartbeatResponseSerializer})
    def post(self, request, agent_id):
        agent = request.user.agent
        if agent.pk != agent_id:
            # 404 for an id that does not exist, 403 for one that is not yours.
            get_object_or_404(Agent, pk=agent_id)
            raise PermissionDenied("This token belongs to another agent.")
        serializer = HeartbeatSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        _, agent_generation = ingest_cache.generations(agent.pk)
        try:
            with ingest_cache.counting_own_changes() as own:
                result = services.record_heartbeat(agent, **serializer.validated_data)
        except services.AgentUnavailable as exc:
            return problem_response(409, str(exc))
        generations = (request.user.token_generation, agent_generation + own.get(agent.pk, 0))
        remember_served(request.user.raw_token, request.auth, result.agent, generations)
        return Response(HeartbeatResponseSerializer(result).data)


class AgentViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """The fleet as we see it. Registering an agent returns its ingest token once;
    its registry metadata can be edited afterwards, its state never."""

    queryset = Agent.objects.all()
    serializer_class = AgentSerializer
    permission_classes = [ModelPermissions]
    filterset_class = AgentFilterSet
    # Agent ids may contain dots, which the router's default pattern excludes;
    # anything that cannot be an id is not found without asking the database.
    lookup_value_regex = AGENT_ID_PATTERN

    @extend_schema(request=AgentRegistrationSerializer, responses={201: RegisteredAgentSerializer})
    def create(self, request, *args, **kwargs):
        serializer = AgentRegistrationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        metadata = {k: data[k] for k in ("name", "capabilities", "owner", "version") if k in data}
        try:
            agent, raw = services.register_agent(
                data["id"],
                data["role"],
                labels=data.get("labels"),
                heartbeat_interval=data.get("heartbeat_interval"),
                actor=f"user:{request.user.get_username()}",
                **metadata,
            )
        except IntegrityError:
            return problem_response(409, "An agent with this id already exists.")
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        agent.token = raw
        return Response(RegisteredAgentSerializer(agent).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=AgentUpdateSerializer, responses={200: AgentSerializer})
    def partial_update(self, request, *args, **kwargs):
        agent = self.get_object()
        serializer = AgentUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            agent = registry.update_agent(
                agent, serializer.validated_data, actor=f"user:{request.user.get_username()}"
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        return Response(AgentSerializer(agent).data)

    @extend_schema(responses=TransitionSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[])
    def transitions(self, request, pk=None):
        agent = self.get_object()
        page = self.paginate_queryset(agent.transitions.order_by("-at", "-id"))
        return self.get_paginated_response(TransitionSerializer(page, many=True).data)

    @extend_schema(responses=AgentHealthDetailSerializer)
    @action(detail=True, methods=["get"], filter_backends=[])
    def health(self, request, pk=None):
        """The agent's composite health as last evaluated, with the policy in force."""
        agent = self.get_object()
        row = AgentHealth.objects.filter(agent=agent).first()
        if row is None:
            raise NotFound(f"Agent {agent.pk} has not been evaluated yet.")
        row.agent = agent
        row.policy = health.HealthPolicy.current().as_dict()
        return Response(AgentHealthDetailSerializer(row).data)


class AgentHealthListView(generics.ListAPIView):
    """Every agent's composite health, worst first. ``?anomalous=true`` lists those
    flagged; ``role`` and ``min_score`` narrow the list."""

    queryset = AgentHealth.objects.select_related("agent").order_by("-score", "agent_id")
    serializer_class = AgentHealthSerializer
    permission_classes = [require(READ_AGENTS)]
    filterset_class = AgentHealthFilterSet


class AgentTokenViewSet(viewsets.GenericViewSet):
    """Ingest tokens of one agent: list, issue (shown once), revoke."""

    serializer_class = AgentTokenSerializer
    permission_classes = [require("monitoring.add_agenttoken")]
    lookup_field = "lookup"
    pagination_class = None  # an agent has a handful of tokens: a plain list
    filter_backends = []

    def get_agent(self):
        return get_object_or_404(Agent, pk=self.kwargs["agent_id"])

    def get_queryset(self):
        return AgentToken.objects.filter(agent=self.get_agent()).order_by("-created_at")

    def list(self, request, agent_id):
        return Response(AgentTokenSerializer(self.get_queryset(), many=True).data)

    @extend_schema(request=TokenRequestSerializer, responses={201: IssuedAgentTokenSerializer})
    def create(self, request, agent_id):
        agent = self.get_agent()
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, raw = AgentToken.issue(agent=agent, name=serializer.validated_data["name"])
        token.token = raw
        return Response(IssuedAgentTokenSerializer(token).data, status=201)

    def destroy(self, request, agent_id, lookup):
        token = get_object_or_404(self.get_queryset(), lookup=lookup)
        token.revoke()
        return Response(status=204)
