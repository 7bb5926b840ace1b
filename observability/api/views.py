import re

from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from observability.api.serializers import LogRecordSerializer, TraceSerializer
from observability.filtersets import TRACE_ID, LogRecordFilterSet
from observability.models import LogRecord
from observability.waterfall import trace_waterfall
from omoi_console.foundation.api.permissions import ModelPermissions, require


class LogRecordListView(generics.ListAPIView):
    """The console's own stored log lines, newest first, by trace, agent, alert or action."""

    queryset = LogRecord.objects.all()
    serializer_class = LogRecordSerializer
    permission_classes = [ModelPermissions]
    filterset_class = LogRecordFilterSet


class TraceView(APIView):
    """One stored trace as a waterfall: spans parents first, with depth and offset."""

    permission_classes = [require("observability.view_spanrecord")]

    @extend_schema(responses={200: TraceSerializer})
    def get(self, request, trace_id: str):
        if not re.fullmatch(TRACE_ID, trace_id):
            raise ValidationError({"trace_id": "A trace id is 32 lowercase hex digits."})
        waterfall = trace_waterfall(trace_id)
        if waterfall is None:
            raise NotFound("No span of this trace is kept.")
        return Response(TraceSerializer(waterfall).data)
