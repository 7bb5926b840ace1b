"""A stored trace as a waterfall: its spans in tree order, each placed on the trace's time line."""

from dataclasses import dataclass
from datetime import datetime

from observability.models import SpanRecord

# A trace with more spans than this shows its first ones (by start time).
MAX_SPANS = 2000


@dataclass(frozen=True)
class Bar:
    """One span of the waterfall: its depth in the tree and where it sits on the time line."""

    span: SpanRecord
    depth: int
    offset_ms: float
    # Where the bar starts and how wide it is, in percent of the trace's duration.
    left: float
    width: float


@dataclass(frozen=True)
class Waterfall:
    trace_id: str
    started_at: datetime
    duration_ms: float
    bars: list[Bar]
    truncated: bool


def trace_waterfall(trace_id: str) -> Waterfall | None:
    """The stored spans of ``trace_id`` as a tree, parents before children; None if none is kept.

    A span whose parent is not stored (a remote parent, or one already pruned)
    starts a root of its own, so a partial trace still shows everything kept.
    """
    rows = list(
        SpanRecord.objects.filter(trace_id=trace_id).order_by("started_at", "id")[: MAX_SPANS + 1]
    )
    if not rows:
        return None
    truncated = len(rows) > MAX_SPANS
    rows = rows[:MAX_SPANS]
    start = min(span.started_at for span in rows)
    end = max(span.started_at.timestamp() * 1000 + span.duration_ms for span in rows)
    duration = max(end - start.timestamp() * 1000, 0.0)
    ids = {span.span_id for span in rows}
    children: dict[str, list[SpanRecord]] = {}
    roots = []
    for span in rows:
        parent = span.parent_span_id
        if parent and parent in ids and parent != span.span_id:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    bars: list[Bar] = []
    seen: set[str] = set()
    # Spans caught in a parent cycle reach no root: they start trees of their own.
    for root in [*roots, *rows]:
        if root.span_id in seen:
            continue
        # Depth-first without recursion: a deep trace cannot exhaust the stack.
        stack = [(root, 0)]
        while stack:
            span, depth = stack.pop()
            if span.span_id in seen:
                continue
            seen.add(span.span_id)
            bars.append(_bar(span, depth, start, duration))
            stack.extend((child, depth + 1) for child in reversed(children.get(span.span_id, [])))
    return Waterfall(trace_id, start, round(duration, 3), bars, truncated)


def _bar(span: SpanRecord, depth: int, start: datetime, duration: float) -> Bar:
    offset = (span.started_at - start).total_seconds() * 1000
    return Bar(
        span=span,
        depth=depth,
        offset_ms=round(offset, 3),
        left=round(100 * offset / duration, 2) if duration else 0.0,
        width=round(100 * span.duration_ms / duration, 2) if duration else 100.0,
    )
