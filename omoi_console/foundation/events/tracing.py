"""The trace an event belongs to: read when published, continued when handled."""

from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

tracer = trace.get_tracer("omoi_console.foundation.events")


def current_trace_ids() -> tuple[str, str]:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def current_span_context() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


def root_flags(trace_id: int) -> TraceFlags:
    """Whether the trace's root span was sampled, asked again of the process's sampler.

    Only ids are stored on an event, not the root's sampling flag. The standard
    samplers decide a root by its trace id alone, so asking again gives the
    answer the root got: a trace sampled out stays out in its handlers.
    """
    sampler = getattr(trace.get_tracer_provider(), "sampler", None)
    if sampler is None or sampler.should_sample(None, trace_id, "event").decision.is_sampled():
        return TraceFlags(TraceFlags.SAMPLED)
    return TraceFlags(TraceFlags.DEFAULT)


@contextmanager
def continued_trace(span_name: str, trace_id: str, span_id: str, *, links=(), **attributes):
    """Run the block in a span that is a child of the stored trace, or a new root.

    ``links`` are span contexts the block also follows from (another trace that
    led here, such as the request that carried the news).
    """
    parent = None
    if trace_id and span_id:
        remote = SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=root_flags(int(trace_id, 16)),
        )
        parent = trace.set_span_in_context(NonRecordingSpan(remote))
    with tracer.start_as_current_span(
        span_name,
        context=parent,
        attributes=attributes,
        links=[trace.Link(link) for link in links if link.is_valid],
    ) as span:
        yield span


@contextmanager
def new_trace(span_name: str, **attributes):
    """Start a fresh root span: one incident, one trace id."""
    with tracer.start_as_current_span(
        span_name, context=trace.set_span_in_context(trace.INVALID_SPAN), attributes=attributes
    ) as span:
        yield span


def event_trace(event):
    """The span in which a handler acts on ``event``: a child of the trace it was published in.

    Batch handlers that act per event enter it per event, so each incident keeps one trace.
    """
    return continued_trace(
        f"event {event.name}", event.trace_id, event.span_id, event_id=str(event.id)
    )


def in_context(parent: context.Context, func, *args):
    """Call ``func(*args)`` in ``parent``, a context captured earlier (for on-commit callbacks)."""
    token = context.attach(parent)
    try:
        return func(*args)
    finally:
        context.detach(token)


def new_trace_ids(span_name: str, **attributes) -> tuple[str, str]:
    """Open and close a fresh root span; its ids start the trace of one incident."""
    with new_trace(span_name, **attributes):
        return current_trace_ids()
