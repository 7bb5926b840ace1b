"""OpenTelemetry set-up: one tracer provider per process, the libraries instrumented.

Django requests, Celery tasks (publish and run), psycopg statements and httpx
calls (the webhook, Slack and Alertmanager transports) get spans from the
OpenTelemetry instrumentation packages; the bus, the alert lifecycle, delivery,
the watchdog and the console's websocket add their own. With
OTEL_EXPORTER_OTLP_ENDPOINT set, finished spans go to that collector in batches;
without it spans still give every request, task and event a trace id to
correlate logs and rows by.
"""

from django.conf import settings
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from observability.store import StoreSpanProcessor

_configured = False


def sampler(name: str, ratio: float) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER names; ``ratio`` is its OTEL_TRACES_SAMPLER_ARG."""
    root = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    return ParentBased(root) if name.startswith("parentbased_") else root


def resource() -> Resource:
    """service.name, service.version and deployment.environment.name of this process.

    Attributes in OTEL_RESOURCE_ATTRIBUTES win over the console's defaults, and
    OTEL_SERVICE_NAME wins over both, as the specification has it.
    """
    defaults = Resource(
        {
            "service.version": settings.VERSION,
            "deployment.environment.name": settings.DEPLOYMENT_ENVIRONMENT,
        }
    )
    return defaults.merge(Resource.create({"service.name": settings.OTEL_SERVICE_NAME}))


def build_provider() -> TracerProvider:
    """A provider from the settings, with the OTLP exporter when an endpoint is set."""
    provider = TracerProvider(
        resource=resource(),
        sampler=sampler(settings.OTEL_TRACES_SAMPLER, settings.OTEL_TRACES_SAMPLER_ARG),
    )
    if settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads the endpoint, headers, timeout and compression from
        # the standard OTEL_EXPORTER_OTLP_* variables and sends to <endpoint>/v1/traces.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def configure_tracing() -> None:
    """Install the SDK provider and instrument Django, Celery, psycopg and httpx, once."""
    global _configured
    if _configured:
        return
    provider = build_provider()
    if settings.TRACE_STORE:
        provider.add_span_processor(StoreSpanProcessor())
    trace.set_tracer_provider(provider)
    for instrumentor in (
        DjangoInstrumentor(),
        CeleryInstrumentor(),
        # Statement text only: parameters may carry tokens or personal data.
        PsycopgInstrumentor(),
        HTTPXClientInstrumentor(),
    ):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
    _configured = True
