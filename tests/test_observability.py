"""Traces, Prometheus metrics and profiles: what an operator's own tools see."""

import asyncio
import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from alerting.evaluator import evaluate_due
from alerting.lifecycle import fire_heartbeat_alerts
from alerting.models import Alert, AlertRule, Notification, NotificationStatus
from monitoring.models import Agent
from monitoring.services import check_heartbeats, record_heartbeat
from observability import tracing
from omoi_console.foundation.events import publish
from tests.conftest import REQUIRE_SERVICES, bearer, named, trace_of
from tests.delivery_receivers import HttpReceiver
from tests.test_console_feed import communicator
from tests.test_settings import load_settings
from watchdog.models import RemediationAction

LOST = {"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3}

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


# --- metrics --------------------------------------------------------------------


def scrape(client, **headers) -> dict:
    """``/metrics`` parsed: {(sample name, sorted labels): value}."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.mark.django_db
def test_it_reads_fleet_alerts_and_bus_lag_from_the_database_at_scrape_time(
    client, registered_agent, settings
):
    settings.WATCHDOG_MODE = "off"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        alert = fire_heartbeat_alerts(LOST)[0]
        # Published in this test's transaction, which never commits: it stays pending.
        publish("monitor.agent.heartbeat_lost", LOST)
        clock.shift(30)
        metrics = scrape(client)

    worker = (("role", "worker"),)
    assert metrics[("agents", (("role", "worker"), ("state", "running")))] == 1
    assert metrics[("agents", (("role", "monitor"), ("state", "running")))] == 0
    assert metrics[("heartbeat_age_seconds_max", worker)] == 30
    assert metrics[("heartbeats_overdue_agents", worker)] == 1
    assert metrics[("alerts_firing", (("severity", alert.severity),))] == 1
    assert sum(v for (name, _), v in metrics.items() if name == "alerts_firing") == 1
    assert metrics[("event_bus_lag_seconds", ())] == 30
    assert metrics[("event_bus_pending_events", ())] >= 1
    assert all(
        value == 1 for (name, _), value in metrics.items() if name == "omoi_scrape_collector_up"
    )


@pytest.mark.django_db(transaction=True)
def test_it_counts_notifications_actions_and_rule_evaluations(client, registered_agent):
    agent, _ = registered_agent
    before = scrape(client)
    with (
        override_settings(
            ALERT_EMAIL_RECIPIENTS=["oncall@example.org"],
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        ),
        time_machine.travel(timezone.now(), tick=False) as clock,
    ):
        record_heartbeat(agent, state="running")
        clock.shift(18)
        check_heartbeats()
        clock.shift(1)
        restart = record_heartbeat(agent, state="running").commands[0]
        record_heartbeat(agent, state="idle", acks=[restart.pk])
        evaluate_due()
    after = scrape(client)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    # The firing and the resolved notification of each receiver, counted as they were sent.
    for channel in ("email", "console"):
        sent = Notification.objects.filter(channel=channel, status=NotificationStatus.SENT)
        assert sent.count() == 2
        assert grew("notifications_total", channel=channel, status="sent") == 2
    assert grew("watchdog_actions_total", action="restart_worker", outcome="succeeded") == 1
    evaluated = AlertRule.objects.filter(enabled=True).exclude(kind="heartbeat").count()
    counts = [k for k in after if k[0] == "rule_evaluation_duration_seconds_count"]
    assert sum(grew(name, **dict(labels)) for name, labels in counts) == evaluated


@pytest.mark.django_db
def test_it_keeps_metrics_to_the_allowed_networks_or_the_token(client, settings):
    settings.METRICS_ALLOW = (ipaddress.ip_network("10.0.0.0/8"),)
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="not-an-address").status_code == 403
    assert client.post("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 405

    settings.METRICS_TOKEN = "scrape-secret-0123456789"
    refused = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert b"scrape-secret" not in refused.content
    wrong = client.get("/metrics", REMOTE_ADDR="192.0.2.7", **bearer("scrape-secret-nope"))
    assert wrong.status_code == 401
    right = client.get("/metrics", REMOTE_ADDR="192.0.2.7", **bearer("scrape-secret-0123456789"))
    assert right.status_code == 200

    settings.METRICS_ALLOW, settings.METRICS_TOKEN = ("*",), ""
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200


def test_it_refuses_a_bad_metrics_network_at_start(tmp_path):
    show = "settings.METRICS_ALLOW"
    default = load_settings(tmp_path, show)
    wrong = load_settings(tmp_path, show, OMOI_METRICS_ALLOW="10.0.0.0/8,ten")

    assert default.stdout.strip() == "(IPv4Network('127.0.0.0/8'), IPv6Network('::1/128'))"
    assert wrong.returncode != 0 and "OMOI_METRICS_ALLOW" in wrong.stderr


@pytest.mark.django_db
def test_it_passes_promtool(client, registered_agent):
    if not shutil.which("promtool"):
        if REQUIRE_SERVICES:
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    fire_heartbeat_alerts(LOST)
    response = client.get("/metrics")

    checked = subprocess.run(  # noqa: S603  (a fixed tool on our own output)
        [shutil.which("promtool"), "check", "metrics"],
        input=response.content,
        capture_output=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


MULTIPROCESS = """
import os, django
django.setup()
from alerting.prometheus import NOTIFICATIONS
from observability.prometheus import exposition
NOTIFICATIONS.labels("webhook", "sent").inc()
child = os.fork()
if child == 0:
    NOTIFICATIONS.labels("webhook", "sent").inc(2)
    os._exit(0)
os.waitpid(child, 0)
print(exposition().decode())
"""


def test_it_sums_counters_across_processes_in_multiprocess_mode(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "omoi_console.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "OMOI_DATA_DIR": str(tmp_path),
    }
    env.pop("DATABASE_URL", None)
    done = subprocess.run(  # noqa: S603  (our own interpreter, fixed code)
        [sys.executable, "-c", MULTIPROCESS],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    webhook = (("channel", "webhook"), ("status", "sent"))
    assert samples[("notifications_total", webhook)] == 3
    assert len(list(directory.glob("counter_*.db"))) == 2
