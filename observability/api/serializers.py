from rest_framework import serializers

from observability.models import LogRecord, SpanRecord


class LogRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = LogRecord
        fields = [
            "id",
            "at",
            "level",
            "logger",
            "event",
            "trace_id",
            "span_id",
            "request_id",
            "agent_id",
            "alert_id",
            "action_id",
            "fields",
        ]


class SpanSerializer(serializers.ModelSerializer):
    class Meta:
        model = SpanRecord
        fields = [
            "span_id",
            "parent_span_id",
            "name",
            "kind",
            "service",
            "status",
            "started_at",
            "duration_ms",
            "attributes",
            "agent_id",
            "alert_id",
            "action_id",
        ]


class WaterfallSpanSerializer(serializers.Serializer):
    """A span in tree order: depth, and its offset from the trace's first span."""

    depth = serializers.IntegerField()
    offset_ms = serializers.FloatField()

    def to_representation(self, bar):
        return {
            **SpanSerializer(bar.span).data,
            "depth": bar.depth,
            "offset_ms": bar.offset_ms,
        }


class TraceSerializer(serializers.Serializer):
    trace_id = serializers.CharField()
    started_at = serializers.DateTimeField()
    duration_ms = serializers.FloatField()
    truncated = serializers.BooleanField(help_text="More spans are kept than the answer lists.")
    spans = WaterfallSpanSerializer(many=True, source="bars")
