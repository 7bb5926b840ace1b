"""OpenTelemetry set-up: one tracer provider per process, Django instrumented."""

from django.conf import settings
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from observability.store import StoreSpanProcessor

_configured = False


def configure_tracing() -> None:
    """Install the SDK provider so spans carry real trace ids, and instrument Django.

    Exporters (OTLP and others) attach to this provider; without one, spans
    still give every request, task and event a trace id to correlate by.
    """
    global _configured
    if _configured:
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.OTEL_SERVICE_NAME}),
        sampler=ParentBased(TraceIdRatioBased(settings.OTEL_TRACES_SAMPLER_RATIO)),
    )
    if settings.TRACE_STORE:
        provider.add_span_processor(StoreSpanProcessor())
    trace.set_tracer_provider(provider)
    instrumentor = DjangoInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
    _configured = True
