"""Traces, Prometheus metrics and profiles: what an operator's own tools see."""

import asyncio

import httpx
import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind

from alerting.models import Alert, Notification, NotificationStatus
from monitoring.models import Agent
from monitoring.services import check_heartbeats, record_heartbeat
from observability import tracing
from tests.conftest import bearer, named, trace_of
from tests.delivery_receivers import HttpReceiver
from tests.test_console_feed import communicator
from tests.test_settings import load_settings
from watchdog.models import RemediationAction

# --- traces -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_follows_a_lost_heartbeat_to_its_remediation_in_one_trace(registered_agent, spans):
    agent, _ = registered_agent
    with (
        override_settings(
            ALERT_EMAIL_RECIPIENTS=["oncall@example.org"],
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        ),
        time_machine.travel(timezone.now(), tick=False) as clock,
    ):
        record_heartbeat(agent, state="running")
        clock.shift(18)
        spans.clear()
        check_heartbeats()

    alert = Alert.objects.get()
    incident = alert.trace_id
    # The FAILED move opened the incident's trace ...
    assert incident in {trace_of(s) for s in named(spans, "monitoring.heartbeat_overdue")}
    # ... and every step after it, across the bus and Celery, continued it.
    for name in (
        "event monitor.agent.heartbeat_lost",
        "alert.fire",
        "run/alerting.tasks.deliver_notification",
        "notification.deliver",
        "watchdog.remediate",
    ):
        assert incident in {trace_of(s) for s in named(spans, name)}, name
    delivered = [s for s in named(spans, "notification.deliver") if trace_of(s) == incident]
    sent = Notification.objects.filter(alert=alert, status=NotificationStatus.SENT)
    assert {s.attributes["notification.id"] for s in delivered} == {n.pk for n in sent}
    assert {n.trace_id for n in sent} == {incident}
    assert RemediationAction.objects.get().trace_id == incident


@pytest.mark.django_db
def test_it_traces_api_requests_as_server_spans(api, make_operator, registered_agent, spans):
    _, token = make_operator("viewer")

    response = api.get("/api/v1/agents", **bearer(token))

    assert response.status_code == 200
    (request,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert request.attributes["http.route"] == "api/v1/agents$"
    assert request.attributes["http.status_code"] == 200


@pytest.mark.django_db
@pytest.mark.postgres
def test_it_traces_database_statements_inside_the_request(spans):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("psycopg statements are traced on PostgreSQL")
    with trace.get_tracer(__name__).start_as_current_span("work") as work:
        Agent.objects.filter(role="worker").count()

    statements = [s for s in spans.get_finished_spans() if s.attributes.get("db.system")]
    assert statements, "no psycopg span"
    assert all(s.attributes["db.system"] == "postgresql" for s in statements)
    assert work.get_span_context().span_id in {s.parent.span_id for s in statements}


def test_it_traces_outgoing_http_calls(spans):
    with HttpReceiver() as receiver:
        httpx.post(f"{receiver.url}/hook", content=b"{}")

    (call,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert call.attributes["http.url"] == f"{receiver.url}/hook"
    traceparent = receiver.requests[0].headers["traceparent"]
    assert traceparent.split("-")[1] == trace_of(call)


@pytest.mark.django_db(transaction=True)
def test_it_traces_websocket_connects_and_messages(make_operator, spans):
    _, token = make_operator("viewer")

    async def session():
        feed = communicator(token)
        await feed.connect()
        await feed.send_json_to({"type": "filter", "events": ["monitor.alert.*"]})
        assert (await feed.receive_json_from(timeout=5))["type"] == "filter.accepted"
        await feed.disconnect()

    asyncio.run(session())

    (connect,) = named(spans, "websocket connect console")
    assert connect.attributes["websocket.close_code"] == 0
    assert len(named(spans, "websocket receive console")) == 1


def test_it_exports_spans_over_otlp_when_an_endpoint_is_set(monkeypatch, settings):
    with HttpReceiver() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=web-7")
        settings.OTEL_EXPORTER_OTLP_ENDPOINT = collector.url
        settings.OMOI_DEPLOYMENT_ENVIRONMENT = "staging"
        provider = tracing.build_provider()
        with provider.get_tracer(__name__).start_as_current_span("exported"):
            pass
        assert provider.force_flush(5_000)
        provider.shutdown()

    (post,) = collector.requests
    assert post.path == "/v1/traces"
    assert {k.lower(): v for k, v in post.headers.items()}["content-type"] == (
        "application/x-protobuf"
    )
    export = ExportTraceServiceRequest.FromString(post.body)
    (resource_spans,) = export.resource_spans
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["service.name"] == "omoi-console"
    assert attributes["service.instance.id"] == "web-7"
    assert attributes["deployment.environment.name"] == "staging"
    assert attributes["service.version"] == settings.OMOI_VERSION
    names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
    assert names == ["exported"]


def test_it_exports_nothing_without_an_endpoint(settings):
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    provider = tracing.build_provider()

    assert provider._active_span_processor._span_processors == ()


@pytest.mark.parametrize(
    ("name", "ratio", "recorded"),
    [
        ("parentbased_always_on", 1.0, True),
        ("always_off", 1.0, False),
        ("parentbased_traceidratio", 0.0, False),
        ("traceidratio", 1.0, True),
    ],
)
def test_it_samples_as_the_standard_variables_say(settings, name, ratio, recorded):
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    settings.OTEL_TRACES_SAMPLER, settings.OTEL_TRACES_SAMPLER_ARG = name, ratio
    provider = tracing.build_provider()

    with provider.get_tracer(__name__).start_as_current_span("root") as root:
        assert root.is_recording() is recorded


def test_it_reads_the_sampler_from_the_environment(tmp_path):
    show = "settings.OTEL_TRACES_SAMPLER, settings.OTEL_TRACES_SAMPLER_ARG"
    standard = load_settings(
        tmp_path, show, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0.25"
    )
    older = load_settings(tmp_path, show, OTEL_TRACES_SAMPLER_RATIO="0.5")
    wrong = load_settings(tmp_path, show, OTEL_TRACES_SAMPLER="sometimes")

    assert standard.stdout.strip() == "traceidratio 0.25"
    assert older.stdout.strip() == "parentbased_traceidratio 0.5"
    assert wrong.returncode != 0 and "OTEL_TRACES_SAMPLER must be one of" in wrong.stderr
