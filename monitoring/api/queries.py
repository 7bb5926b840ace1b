"""Read endpoints of monitoring: metrics, series, range queries, top agents, anomalies, fleet.

Each view checks its query parameters with a serializer (422 naming the
parameter) and hands them to a service in ``monitoring.queries``,
``monitoring.anomalies`` or ``monitoring.fleet``.
"""

import re
from datetime import UTC, datetime, timedelta

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import generics, serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import anomalies, catalog, fleet, queries
from monitoring.api.metrics import metric_spec_fields
from monitoring.filtersets import AnomalyFilterSet, SeriesFilterSet
from monitoring.models import MetricSeries, MonitorAnomaly
from omoi_console.foundation.api.pagination import BoundedLimitOffsetPagination
from omoi_console.foundation.api.permissions import ModelPermissions, require
from omoi_console.foundation.api.problems import problem_response

VIEW_SERIES = "monitoring.view_metricseries"
UNIX_SECONDS = re.compile(r"[0-9]{1,10}(\.[0-9]{1,9})?")
# Instants a query may name: the sample store holds nothing outside them.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
DEFAULT_RANGE = timedelta(hours=1)


@extend_schema_field(OpenApiTypes.STR)
class InstantField(serializers.Field):
    """Unix seconds, or an ISO 8601 time with a zone."""

    default_error_messages = {
        "invalid": "A time is Unix seconds or an ISO 8601 time with zone.",
        "range": "A time lies between 1970 and 2200.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str) or len(data) > 40:
            self.fail("invalid")
        if UNIX_SECONDS.fullmatch(data):
            moment = datetime.fromtimestamp(float(data), UTC)
        else:
            try:
                moment = datetime.fromisoformat(data)
            except ValueError:
                self.fail("invalid")
            if moment.tzinfo is None:
                self.fail("invalid")
            # Checked before converting: a zone can push year 1 or 9999 out of range.
            if not EARLIEST.year <= moment.year < LATEST.year:
                self.fail("range")
            moment = moment.astimezone(UTC)
        if not EARLIEST <= moment <= LATEST:
            self.fail("range")
        return moment

    def to_representation(self, value):
        return value.isoformat()


def metric_field():
    return serializers.ChoiceField(
        choices=[], help_text="A metric of the catalogue (/api/v1/metrics/catalog)."
    )


class MetricParams(serializers.Serializer):
    metric = metric_field()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read when a request comes: apps above monitoring declare metrics at startup.
        self.fields["metric"].choices = [spec.name for spec in catalog.ordered()]


class QueryParams(MetricParams):
    MAX_SERIES = 50
    start = InstantField(required=False, help_text="Default: an hour before the end.")
    end = InstantField(required=False, help_text="Default: now.")
    step = serializers.IntegerField(
        min_value=1, max_value=queries.DAY_SECONDS * 30, default=60, help_text="Seconds."
    )
    agg = serializers.ChoiceField(choices=queries.AGGREGATIONS, default="avg")
    label = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="name:value, repeatable."
    )
    agent = serializers.CharField(required=False)
    limit = serializers.IntegerField(
        min_value=1,
        max_value=MAX_SERIES,
        required=False,
        help_text="Series per page (10 by default).",
    )
    offset = serializers.IntegerField(min_value=0, required=False)

    def validate(self, attrs):
        attrs.setdefault("end", timezone.now())
        attrs.setdefault("start", attrs["end"] - DEFAULT_RANGE)
        return attrs


class TopParams(MetricParams):
    agg = serializers.ChoiceField(choices=queries.AGGREGATIONS, default="avg")
    window = serializers.IntegerField(
        min_value=1, max_value=queries.MAX_TOP_WINDOW_SECONDS, default=300, help_text="Seconds."
    )
    k = serializers.IntegerField(min_value=1, max_value=queries.MAX_TOP_K, default=10)
    order = serializers.ChoiceField(choices=["desc", "asc"], default="desc")


class WindowParams(serializers.Serializer):
    window = serializers.IntegerField(
        min_value=1, max_value=anomalies.MAX_WINDOW_SECONDS, default=86_400, help_text="Seconds."
    )


class SeriesPagination(BoundedLimitOffsetPagination):
    """A range query answers for at most this many series at once."""

    default_limit = 10
    max_limit = QueryParams.MAX_SERIES


def checked(serializer_class, request):
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def refused(exc: queries.BadQuery):
    return ValidationError({exc.field: [exc.detail]})


class MetricSeriesSerializer(serializers.ModelSerializer):
    class Meta:
        model = MetricSeries
        fields = ["id", "metric", "labels", "agent_id", "created_at"]


MetricSummaries = inline_serializer(
    "MetricSummary",
    {
        **metric_spec_fields(),
        "series": serializers.IntegerField(help_text="How many series the metric has."),
    },
    many=True,
)


class MetricListView(generics.GenericAPIView):
    """The catalogue, each metric with how many series it has."""

    permission_classes = [require(VIEW_SERIES)]
    filter_backends = []

    @extend_schema(responses=MetricSummaries)
    def get(self, request):
        page = self.paginate_queryset(queries.metric_catalogue())
        return self.get_paginated_response(page)


class SeriesListView(generics.ListAPIView):
    """Series by metric, agent and labels (``label=name:value``, repeatable, all must match)."""

    queryset = MetricSeries.objects.order_by("id")
    serializer_class = MetricSeriesSerializer
    permission_classes = [ModelPermissions]
    filterset_class = SeriesFilterSet


PointsSchema = inline_serializer(
    "SeriesPoints",
    {
        "id": serializers.IntegerField(),
        "labels": serializers.DictField(child=serializers.CharField()),
        "points": serializers.ListField(
            child=serializers.ListField(child=serializers.FloatField(), min_length=2, max_length=2),
            help_text="[unix seconds of the bucket's start, value]",
        ),
    },
    many=True,
)
QueryAnswer = inline_serializer(
    "SeriesQuery",
    {
        "metric": serializers.CharField(),
        "agg": serializers.CharField(),
        "step": serializers.IntegerField(),
        "start": serializers.IntegerField(help_text="Unix seconds, rounded down to the step."),
        "end": serializers.IntegerField(help_text="Unix seconds, rounded up to the step."),
        "source": serializers.ChoiceField(choices=["raw", "rollup"]),
        "raw_after": serializers.FloatField(
            allow_null=True,
            help_text="With rollups: from here on (not rolled up yet) raw samples answered.",
        ),
        "count": serializers.IntegerField(help_text="Series matched, over all pages."),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "series": PointsSchema,
    },
)


class SeriesQueryView(generics.GenericAPIView):
    """An aggregation of each matching series over a range, bucket by bucket.

    Long ranges with a step of whole minutes are answered from the per-minute
    rollups, short ranges and sub-minute steps from raw samples; minutes not
    rolled up yet always come from raw samples. Paginated over series.
    """

    queryset = MetricSeries.objects.order_by("id")
    permission_classes = [require(VIEW_SERIES)]
    pagination_class = SeriesPagination
    filter_backends = []

    @extend_schema(parameters=[QueryParams], responses=QueryAnswer)
    def get(self, request):
        params = checked(QueryParams, request)
        selection = SeriesFilterSet(request.query_params, queryset=self.get_queryset())
        if not selection.is_valid():
            raise ValidationError(selection.errors)
        page = self.paginate_queryset(selection.qs)
        try:
            result = queries.series_query(
                page,
                start=params["start"],
                end=params["end"],
                step=params["step"],
                agg=params["agg"],
            )
        except queries.BadQuery as exc:
            raise refused(exc) from None
        except queries.QueryTooLarge as exc:
            return problem_response(422, str(exc))
        paginator = self.paginator
        return Response(
            {
                "metric": params["metric"],
                "agg": result.agg,
                "step": result.step,
                "start": result.start,
                "end": result.end,
                "source": result.source,
                "raw_after": result.raw_after,
                "count": paginator.count,
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "series": [one.as_dict() for one in result.series],
            }
        )


TopAnswer = inline_serializer(
    "TopAgents",
    {
        "metric": serializers.CharField(),
        "agg": serializers.CharField(),
        "window": serializers.IntegerField(),
        "source": serializers.ChoiceField(choices=["raw", "rollup"]),
        "results": inline_serializer(
            "AgentValue",
            {"agent": serializers.CharField(), "value": serializers.FloatField()},
            many=True,
        ),
    },
)


class TopAgentsView(APIView):
    """The k agents with the highest (``order=desc``) or lowest value over the last window."""

    permission_classes = [require(VIEW_SERIES)]

    @extend_schema(parameters=[TopParams], responses=TopAnswer)
    def get(self, request):
        params = checked(TopParams, request)
        try:
            result = queries.top_agents(
                params["metric"],
                agg=params["agg"],
                window=params["window"],
                k=params["k"],
                order=params["order"],
            )
        except queries.BadQuery as exc:
            raise refused(exc) from None
        except queries.QueryTooLarge as exc:
            return problem_response(422, str(exc))
        return Response(
            {
                "metric": result.metric,
                "agg": result.agg,
                "window": result.window,
                "source": result.source,
                "results": [{"agent": agent, "value": value} for agent, value in result.results],
            }
        )


class AnomalySerializer(serializers.ModelSerializer):
    class Meta:
        model = MonitorAnomaly
        fields = [
            "id",
            "series",
            "metric",
            "agent_id",
            "started_at",
            "ended_at",
            "peak_score",
            "direction",
            "detector",
            "severity",
            "explanation",
        ]


class AnomalyViewSet(viewsets.ReadOnlyModelViewSet):
    """Anomalies the detectors found, newest first. ``?open=true`` lists the open ones;
    ``since``/``until`` keep those open at some moment between them."""

    queryset = MonitorAnomaly.objects.all()
    serializer_class = AnomalySerializer
    permission_classes = [ModelPermissions]
    filterset_class = AnomalyFilterSet
    lookup_value_regex = "[0-9]{1,18}"


class AnomalySummaryView(APIView):
    """Anomalies open at any time in the last window, counted by metric, agent and severity."""

    permission_classes = [require("monitoring.view_monitoranomaly")]

    @extend_schema(
        parameters=[WindowParams],
        responses=inline_serializer(
            "AnomalySummary",
            {
                "window": serializers.IntegerField(),
                "total": serializers.IntegerField(),
                "by_metric": serializers.DictField(child=serializers.IntegerField()),
                "by_agent": serializers.DictField(child=serializers.IntegerField()),
                "by_severity": serializers.DictField(child=serializers.IntegerField()),
            },
        ),
    )
    def get(self, request):
        summary = anomalies.summarise(checked(WindowParams, request)["window"])
        return Response(summary.__dict__)


class FleetSummaryView(APIView):
    """Agents per state and role, and availability: the share of live (not terminated)
    agents that are healthy; null when there is none."""

    permission_classes = [require("monitoring.view_agent")]

    @extend_schema(
        responses=inline_serializer(
            "FleetSummary",
            {
                "agents": serializers.IntegerField(),
                "by_state": serializers.DictField(child=serializers.IntegerField()),
                "by_role": serializers.DictField(child=serializers.IntegerField()),
                "availability": serializers.FloatField(allow_null=True, min_value=0, max_value=1),
            },
        )
    )
    def get(self, request):
        return Response(fleet.fleet_summary().__dict__)
