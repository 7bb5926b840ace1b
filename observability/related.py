"""What the store keeps about one agent or one action: its log lines and its traces."""

from django.db.models import Q, QuerySet

from observability.models import LogRecord, SpanRecord

LINES_SHOWN = 100
TRACES_SHOWN = 10
# How many recent rows are read to find the distinct traces among them.
TRACES_SCANNED = 500


def lines_about(link: Q, trace_ids: list[str] = (), limit: int = LINES_SHOWN) -> QuerySet:
    """The newest log lines that name the link (``Q(agent_id=...)``) or belong to the traces."""
    if trace_ids:
        link |= Q(trace_id__in=trace_ids)
    return LogRecord.objects.filter(link)[:limit]


def traces_about(link: Q, *, also: list[str] = (), limit: int = TRACES_SHOWN) -> list[str]:
    """The most recent distinct trace ids whose spans or log lines name the link."""
    logged = (
        LogRecord.objects.filter(link)
        .exclude(trace_id="")
        .order_by("-at")
        .values_list("trace_id", "at")[:TRACES_SCANNED]
    )
    spanned = (
        SpanRecord.objects.filter(link)
        .order_by("-started_at")
        .values_list("trace_id", "started_at")[:TRACES_SCANNED]
    )
    newest = sorted([*logged, *spanned], key=lambda row: row[1], reverse=True)
    found = list(dict.fromkeys([*also, *(trace_id for trace_id, _ in newest)]))
    return [trace_id for trace_id in found if trace_id][:limit]
