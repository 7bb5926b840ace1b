"""Traces, Prometheus metrics and profiles: what an operator's own tools see."""

import asyncio
import ipaddress
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import httpx
import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import AsyncClient, override_settings
from django.urls import reverse
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from alerting.evaluator import evaluate_due
from alerting.lifecycle import fire_heartbeat_alerts
from alerting.models import Alert, AlertRule, Notification, NotificationStatus
from alerting.rules import KINDS
from monitoring.models import Agent, AgentCommand, MetricSeries
from monitoring.services import check_heartbeats, record_heartbeat
from observability import tracing
from observability.models import ProfileKind, ProfileSnapshot
from observability.profiling import profiled
from omoi_console.foundation.events import publish
from omoi_console.foundation.events.tracing import continued_trace, new_trace, new_trace_ids
from omoi_console.foundation.retention import service as retention
from omoi_console.models import Event
from omoi_console.top import hot_paths
from tests.conftest import REQUIRE_SERVICES, bearer, named, trace_of
from tests.delivery_receivers import HttpReceiver
from tests.test_console_feed import WAIT, communicator
from tests.test_settings import load_settings
from watchdog import services
from watchdog.builtins import RESTART_POLICY
from watchdog.models import RemediationAction, RemediationPolicy

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
        # The agent polls, takes its restart, and comes back acknowledging it.
        clock.shift(1)
        handed = record_heartbeat(agent, state="failed")
        clock.shift(1)
        record_heartbeat(agent, state="running", acks=[c.pk for c in handed.commands])

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
    # The restart carried the trace to the heartbeats that took and answered it,
    # and the recovery they brought (resolved alert, verified action) stayed in it.
    for name in (
        "agent.restart_delivered",
        "agent.restart_acknowledged",
        "event monitor.agent.recovered",
    ):
        assert incident in {trace_of(s) for s in named(spans, name)}, name
    closed = Event.objects.filter(
        name__in=["monitor.agent.recovered", "monitor.alert.resolved", "watchdog.action.succeeded"]
    )
    assert sorted(closed.values_list("trace_id", flat=True)) == [incident] * 3


@pytest.mark.django_db(transaction=True)
def test_it_keeps_a_later_step_in_its_failures_trace(registered_agent, spans):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(
        steps=[
            {"kind": "mark_unhealthy", "after": 0, "verify": 30},
            {"kind": "restart_worker", "after": 0, "verify": 60},
        ]
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        clock.shift(18)
        check_heartbeats()
        clock.shift(31)
        # The periodic job runs in a trace of its own ...
        with new_trace("periodic job") as job:
            services.advance_due()

    action = RemediationAction.objects.get()
    restart = AgentCommand.objects.get(kind="restart")
    # ... yet the restart it queued belongs to the failure, and links back to the job.
    assert action.trace_id and restart.trace_id == action.trace_id
    (advance,) = named(spans, "watchdog.advance")
    assert trace_of(advance) == action.trace_id
    assert [link.context.span_id for link in advance.links] == [job.get_span_context().span_id]


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
        await feed.connect(timeout=WAIT)
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
        settings.DEPLOYMENT_ENVIRONMENT = "staging"
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
    assert attributes["service.version"] == settings.VERSION
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


def test_it_keeps_a_trace_sampled_out_at_its_root_out_of_its_event_handlers(monkeypatch):
    provider = trace.get_tracer_provider()
    kept = new_trace_ids("incident")
    monkeypatch.setattr(provider, "sampler", tracing.sampler("parentbased_always_off", 1.0))
    dropped = new_trace_ids("incident")

    with continued_trace("handler", *dropped) as handler:
        assert not handler.is_recording()
    monkeypatch.undo()
    with continued_trace("handler", *kept) as handler:
        assert handler.is_recording()
        assert trace_of(handler) == kept[0]


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
    timed = [name for name, kind in KINDS.items() if not kind.event_driven]
    evaluated = AlertRule.objects.filter(enabled=True, kind__in=timed).count()
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


# --- profiles -------------------------------------------------------------------


def busy_work(n: int) -> int:
    return sum(i * i for i in range(n))


@pytest.fixture
def admin_client(client, make_operator):
    user, _ = make_operator("admin")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_it_stores_a_real_profile_and_lists_it_in_the_admin(admin_client):
    with profiled(ProfileKind.COMMAND, "busy work", requested_by="tester") as run:
        busy_work(300_000)

    snapshot = run.snapshot
    assert ProfileSnapshot.objects.get() == snapshot
    assert snapshot.duration_seconds > 0
    # pyinstrument sampled the workload itself.
    assert "busy_work" in snapshot.summary and "busy_work" in snapshot.html
    listing = admin_client.get(reverse("admin:observability_profilesnapshot_changelist"))
    assert listing.status_code == 200
    assert b"busy work" in listing.content
    detail = admin_client.get(
        reverse("admin:observability_profilesnapshot_change", args=[snapshot.pk])
    )
    assert detail.status_code == 200
    assert b"busy_work" in detail.content
    assert b'sandbox="allow-scripts"' in detail.content
    page = admin_client.get(reverse("admin:observability_profilesnapshot_page", args=[snapshot.pk]))
    assert page.status_code == 200
    assert page.content.decode() == snapshot.html
    policy = page["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox allow-scripts" in policy
    assert page["X-Frame-Options"] == "SAMEORIGIN"


@pytest.mark.django_db
def test_it_keeps_profiles_from_anyone_but_admins(client, make_operator):
    with profiled(ProfileKind.COMMAND, "busy work"):
        busy_work(1000)
    snapshot = ProfileSnapshot.objects.get()
    viewer, _ = make_operator("viewer")
    client.force_login(viewer)

    page = client.get(reverse("admin:observability_profilesnapshot_page", args=[snapshot.pk]))
    missing = client.get(reverse("admin:observability_profilesnapshot_page", args=[10**9]))

    assert page.status_code == 302  # to the login: the admin is for staff only
    assert missing.status_code == 302
    assert snapshot.html.encode() not in page.content


@pytest.mark.django_db
def test_it_profiles_a_request_only_for_a_staff_user_with_the_permission(
    client, make_operator, settings
):
    admin, _ = make_operator("admin", "root")
    operator, _ = make_operator("operator", "ops")

    client.force_login(operator)
    plain = client.get("/console/state", HTTP_X_OMOI_PROFILE="1")
    assert plain.status_code == 200
    assert "X-Omoi-Profile-Id" not in plain
    assert not ProfileSnapshot.objects.exists()

    client.force_login(admin)
    asked = client.get("/console/state?omoi_profile=1")
    assert asked.status_code == 200
    snapshot = ProfileSnapshot.objects.get(pk=asked["X-Omoi-Profile-Id"])
    assert snapshot.kind == ProfileKind.REQUEST
    assert snapshot.target == "GET /console/state"
    assert snapshot.requested_by == "root"
    assert len(snapshot.trace_id) == 32
    unasked = client.get("/console/state", HTTP_X_OMOI_PROFILE="yes please")
    assert "X-Omoi-Profile-Id" not in unasked
    assert ProfileSnapshot.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_profiles_a_request_served_asynchronously(make_operator):
    admin, _ = make_operator("admin", "root")
    client = AsyncClient()
    client.force_login(admin)

    async def request():
        try:
            return await client.get("/console/state", headers={"X-Omoi-Profile": "1"})
        finally:
            # The test client keeps connections open; this one lives in asgiref's
            # shared thread, which later tests' servers use too.
            await sync_to_async(connections.close_all)()

    response = asyncio.run(request())

    assert response.status_code == 200
    snapshot = ProfileSnapshot.objects.get(pk=response["X-Omoi-Profile-Id"])
    assert snapshot.target == "GET /console/state"
    assert snapshot.duration_seconds > 0


@pytest.mark.django_db
def test_it_profiles_the_named_hot_paths_and_a_task_from_the_command_line(seeded):
    out = StringIO()
    call_command("profile", "ingest", "--samples", "300", stdout=out)
    call_command("profile", "rule-tick", stdout=out)
    call_command("profile", "task", "--task", "alerting.tasks.evaluate_rules", stdout=out)

    ingest, tick, task = ProfileSnapshot.objects.order_by("pk")
    assert (ingest.kind, ingest.target) == (ProfileKind.COMMAND, "ingest 300")
    assert "samples.py" in ingest.summary
    assert MetricSeries.objects.filter(labels__agent=hot_paths.PROBE_AGENT).count() == 10
    assert (tick.kind, tick.target) == (ProfileKind.COMMAND, "rule-tick")
    assert "evaluate_batch" in tick.summary
    assert (task.kind, task.target) == (ProfileKind.TASK, "alerting.tasks.evaluate_rules")
    assert f"profile {task.pk} stored" in out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "argv",
    [
        ["nothing-like-it"],
        ["ingest", "--samples", "0"],
        ["task"],
        ["task", "--task", "no.such.task"],
        ["task", "--task", "alerting.tasks.evaluate_rules", "--task-args", "{"],
    ],
)
def test_it_refuses_what_it_cannot_profile_and_stores_nothing(argv):
    with pytest.raises((CommandError, SystemExit)):
        call_command("profile", *argv, stderr=StringIO())

    assert not ProfileSnapshot.objects.exists()


@pytest.mark.django_db
def test_it_prunes_profiles_past_their_retention(settings):
    settings.RETAIN_PROFILES_DAYS = 14
    start = timezone.now()
    with (
        time_machine.travel(start - timedelta(days=15), tick=False),
        profiled(ProfileKind.COMMAND, "old"),
    ):
        busy_work(1000)
    with (
        time_machine.travel(start - timedelta(days=13), tick=False),
        profiled(ProfileKind.COMMAND, "recent"),
    ):
        busy_work(1000)

    with time_machine.travel(start, tick=False):
        retention.prune(kinds=["observability.profiles"])

    assert list(ProfileSnapshot.objects.values_list("target", flat=True)) == ["recent"]
