"""Metric endpoints: batch ingest and the catalogue."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import catalog, samples
from monitoring.api.authentication import AgentPrincipal
from omoi_console.foundation.api.parsers import BatchJSONParser
from omoi_console.foundation.api.permissions import is_operator_user
from omoi_console.foundation.api.problems import (
    PROBLEM_CONTENT_TYPE,
    VALIDATION_TYPE,
    problem,
)

INGEST_PERMISSION = "monitoring.add_metricseries"


class CanIngest(BasePermission):
    message = f"Send samples with an agent's token, or as an operator with {INGEST_PERMISSION}."

    def has_permission(self, request, view):
        if isinstance(request.user, AgentPrincipal):
            return True
        return is_operator_user(request.user) and request.user.has_perm(INGEST_PERMISSION)


def agent_of(request) -> str | None:
    """The agent a request speaks for (its token's), or None for an operator."""
    return request.user.agent.pk if isinstance(request.user, AgentPrincipal) else None


def rejected_response(exc: samples.BatchRejected) -> Response:
    body = problem(
        422, exc.detail, errors=[found.as_dict() for found in exc.problems], type_=VALIDATION_TYPE
    )
    return Response(body, status=422, content_type=PROBLEM_CONTENT_TYPE)


class SampleSchema(serializers.Serializer):
    """For the schema only: ``samples`` checks batches itself, faster and sample by sample."""

    name = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField(), required=False)
    ts = serializers.FloatField(help_text="Unix seconds, or an ISO 8601 time with zone.")
    value = serializers.FloatField()


StoredSchema = inline_serializer(
    "StoredBatch",
    {
        "stored": serializers.IntegerField(),
        "series_created": serializers.IntegerField(),
        "duplicate": serializers.BooleanField(),
    },
)


class MetricDetectionSerializer(serializers.Serializer):
    """How a metric's series are watched for anomalies by default."""

    on = serializers.CharField()
    detector = serializers.CharField()
    params = serializers.DictField()
    severity = serializers.CharField()


def metric_spec_fields() -> dict:
    """The fields of a catalogue entry, for the schemas of the views that list them."""
    return {
        "name": serializers.CharField(),
        "type": serializers.CharField(),
        "unit": serializers.CharField(),
        "labels": serializers.ListField(child=serializers.CharField()),
        "description": serializers.CharField(),
        "producer": serializers.CharField(),
        "app": serializers.CharField(),
        "max_series": serializers.IntegerField(),
        "detection": MetricDetectionSerializer(allow_null=True),
    }


class MetricIngestView(APIView):
    """Store a batch of samples: all of it, or none and a 422 listing each bad sample.

    Agents send with their own token and only about themselves. A batch sent
    again under the same ``Idempotency-Key`` is not stored twice.
    """

    parser_classes = [BatchJSONParser]
    permission_classes = [CanIngest]
    for_agents = True

    @extend_schema(
        request=inline_serializer("SampleBatch", {"samples": SampleSchema(many=True)}),
        responses={200: StoredSchema},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description="Up to 200 characters; a batch stored under it is not stored again.",
            )
        ],
    )
    def post(self, request):
        data = request.data
        if not isinstance(data, dict) or set(data) != {"samples"}:
            return rejected_response(
                samples.BatchRejected(
                    [samples.Problem(None, "", 'The body is {"samples": [...]}.')]
                )
            )
        try:
            stored = samples.ingest(
                data["samples"],
                agent_id=agent_of(request),
                key=request.headers.get("Idempotency-Key"),
            )
        except samples.BatchRejected as exc:
            return rejected_response(exc)
        return Response(stored.as_dict())


class MetricCatalogView(APIView):
    """Every metric the console stores: name, type, unit, labels, description, producer."""

    pagination_class = None

    @extend_schema(responses=inline_serializer("MetricSpec", metric_spec_fields(), many=True))
    def get(self, request):
        return Response([spec.as_dict() for spec in catalog.ordered()])
