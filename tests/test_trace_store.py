"""The console's own spans and log lines: captured off the request path, bounded, queryable."""

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import structlog
import time_machine
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from opentelemetry import trace

from monitoring.services import check_heartbeats, record_heartbeat
from observability import store
from observability.models import LogRecord, SpanRecord
from omoi_console.foundation.retention.service import prune
from tests.conftest import bearer
from watchdog.models import RemediationAction

log = structlog.get_logger("tests.trace_store")
tracer = trace.get_tracer("tests.trace_store")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(autouse=True)
def full_size_buffers():
    yield
    store.spans.resize(store.settings.TRACE_STORE_BUFFER)
    store.lines.resize(store.settings.TRACE_STORE_BUFFER)
    store.spans.clear()
    store.lines.clear()


@pytest.fixture(autouse=True)
def info_logged():
    """Lines at INFO reach the handlers, whatever an earlier test (gameday's quiet mode) set."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(level)


@pytest.fixture
def viewer(make_operator):
    return bearer(make_operator("viewer")[1])


def stored_line(event: str) -> LogRecord:
    return LogRecord.objects.get(event=event)


@pytest.mark.django_db
def test_it_stores_the_spans_and_log_lines_of_a_real_request(api, registered_agent):
    agent, token = registered_agent
    store.spans.clear()
    store.lines.clear()

    response = api.post(
        f"/api/v1/agents/{agent.id}/heartbeat",
        {"state": "running", "current_task": "task-7"},
        format="json",
        **bearer(token),
    )
    flushed = store.flush()

    assert response.status_code == 200
    assert flushed.spans >= 1 and flushed.logs >= 1
    request_span = SpanRecord.objects.get(name__contains="heartbeat", parent_span_id="")
    assert request_span.kind == "server" and request_span.service == "omoi-console"
    assert request_span.duration_ms > 0
    transition = stored_line("agent.transition")
    assert transition.agent_id == agent.id and transition.level == "info"
    assert transition.logger == "monitoring.services"
    assert transition.fields["to_state"] == "running"
    # The line was logged inside the request: it carries the request's trace.
    assert transition.trace_id == request_span.trace_id
    assert SpanRecord.objects.filter(trace_id=transition.trace_id).count() >= 1


@pytest.mark.django_db
def test_it_keeps_no_database_work_on_the_logging_and_tracing_path():
    with CaptureQueriesContext(connection) as queries, tracer.start_as_current_span("work"):
        log.info("work.done", agent_id="worker-01")

    assert len(queries) == 0
    assert store.stats()["spans"]["buffered"] == 1
    assert store.stats()["logs"]["buffered"] == 1
    assert not LogRecord.objects.exists()


@pytest.mark.django_db
def test_it_stores_log_lines_as_printed_with_secrets_redacted():
    logging.getLogger("tests.stdlib").warning("plain %s line", "stdlib")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception(
            "delivery.failed",
            alert_id=7,
            smtp_password="hunter2",
            authorization="Bearer omoi_op_s3cret",
            receiver={"url": "https://example.com", "api_key": "k"},
        )
    log.info("note", detail="x" * 5000, nul="a\x00b")
    store.flush()

    failed = stored_line("delivery.failed")
    assert failed.alert_id == "7" and failed.level == "error"
    assert failed.fields["smtp_password"] == "[redacted]"
    assert failed.fields["authorization"] == "[redacted]"
    assert "ValueError: boom" in failed.fields["exception"]
    stored = json.dumps(list(LogRecord.objects.values()), default=str)
    assert "hunter2" not in stored and "s3cret" not in stored
    plain = stored_line("plain stdlib line")
    assert plain.level == "warning" and plain.logger == "tests.stdlib"
    note = stored_line("note")
    assert len(note.fields["detail"]) <= store.MAX_VALUE_CHARS + 3
    assert "\x00" not in note.fields["nul"]


@pytest.mark.django_db
def test_it_drops_the_oldest_entries_when_a_buffer_is_full_and_counts_them():
    store.lines.resize(3)

    for n in range(5):
        log.info("burst", n=n)
    store.flush()

    kept = sorted(line.fields["n"] for line in LogRecord.objects.filter(event="burst"))
    assert kept == [2, 3, 4]
    assert store.stats()["logs"]["dropped"] == 2
    assert store.stats()["logs"]["written"] == 3


@pytest.mark.django_db
def test_it_counts_a_batch_the_database_refuses_instead_of_raising(monkeypatch):
    def refuse(*args, **kwargs):
        raise store.DatabaseError("database is locked")

    log.info("lost")
    monkeypatch.setattr(LogRecord.objects, "bulk_create", refuse)

    flushed = store.flush()

    assert flushed.logs == 0
    assert store.stats()["logs"]["failed"] == 1
    # Dropped, not kept for a retry: what waits now is only the warning about it.
    assert [entry[3]["event"] for entry in store.lines.entries] == ["store.write_failed"]


def spans_of_a_trace():
    """root -> (child -> grandchild), sibling: 100 ms in all, at known offsets."""
    with time_machine.travel(NOW, tick=False) as clock:
        root = tracer.start_span("root", attributes={"alert_id": 7})
        with trace.use_span(root, end_on_exit=True):
            clock.shift(timedelta(milliseconds=10))
            with tracer.start_as_current_span("child", attributes={"agent_id": "worker-01"}):
                clock.shift(timedelta(milliseconds=20))
                with tracer.start_as_current_span("grandchild"):
                    clock.shift(timedelta(milliseconds=30))
            with tracer.start_as_current_span("sibling", attributes={"action_id": 3}):
                clock.shift(timedelta(milliseconds=40))
    return format(root.get_span_context().trace_id, "032x")


@pytest.mark.django_db
def test_it_serves_a_trace_as_a_waterfall(api, viewer):
    trace_id = spans_of_a_trace()
    store.flush()

    response = api.get(f"/api/v1/traces/{trace_id}", **viewer)

    assert response.status_code == 200
    body = response.json()
    assert body["duration_ms"] == pytest.approx(100)
    shape = [(s["name"], s["depth"], s["offset_ms"], s["duration_ms"]) for s in body["spans"]]
    assert shape == [
        ("root", 0, 0, pytest.approx(100)),
        ("child", 1, 10, pytest.approx(50)),
        ("grandchild", 2, 30, pytest.approx(30)),
        ("sibling", 1, 60, pytest.approx(40)),
    ]
    assert SpanRecord.objects.get(name="root").alert_id == "7"
    assert SpanRecord.objects.get(name="child").agent_id == "worker-01"
    assert SpanRecord.objects.get(name="sibling").action_id == "3"


@pytest.mark.django_db
def test_it_finds_log_lines_by_trace_agent_alert_action_and_level(api, viewer):
    with time_machine.travel(NOW, tick=False) as clock:
        with tracer.start_as_current_span("incident") as span:
            log.info("agent.seen", agent_id="worker-01")
            log.warning("alert.fired", alert_id=7, agent_id="worker-01")
        clock.shift(timedelta(minutes=5))
        log.error("watchdog.action_failed", action_id=3, agent_id="worker-02")
    store.flush()
    trace_id = format(span.get_span_context().trace_id, "032x")

    def events(query: str) -> list[str]:
        response = api.get(f"/api/v1/logs?{query}", **viewer)
        assert response.status_code == 200, response.json()
        return [line["event"] for line in response.json()["results"]]

    assert events(f"trace_id={trace_id}") == ["alert.fired", "agent.seen"]
    assert events("agent_id=worker-01") == ["alert.fired", "agent.seen"]
    assert events("alert_id=7") == ["alert.fired"]
    assert events("action_id=3") == ["watchdog.action_failed"]
    assert events("agent_id=worker-01&level=warning") == ["alert.fired"]
    assert events("level=error") == ["watchdog.action_failed"]
    since = (NOW + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert events(f"since={since}") == ["watchdog.action_failed"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("trace_id=xyz", "trace_id"),
        ("trace_id=" + "A" * 32, "trace_id"),
        ("alert_id=abc", "alert_id"),
        ("alert_id=1.5", "alert_id"),
        ("action_id=0", "action_id"),
        ("action_id=99999999999999999999", "action_id"),
        ("agent_id=" + "a" * 65, "agent_id"),
        ("level=loud", "level"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
    ],
)
def test_it_answers_422_naming_a_bad_filter(api, viewer, query, field):
    response = api.get(f"/api/v1/logs?{query}", **viewer)

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == [field]


@pytest.mark.django_db
def test_it_refuses_a_malformed_trace_id_and_answers_404_for_an_unknown_one(api, viewer):
    bad = api.get("/api/v1/traces/not-a-trace", **viewer)
    unknown = api.get(f"/api/v1/traces/{TRACE}", **viewer)

    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "trace_id"
    assert unknown.status_code == 404


@pytest.mark.django_db
def test_it_shows_the_store_to_viewers_only(api, viewer, registered_agent):
    _, agent_token = registered_agent

    assert api.get("/api/v1/logs", **viewer).status_code == 200
    assert api.get("/api/v1/logs").status_code == 401
    assert api.get("/api/v1/logs", **bearer(agent_token)).status_code == 403
    assert api.get(f"/api/v1/traces/{TRACE}", **bearer(agent_token)).status_code == 403


def make_lines(count: int, start: datetime, step: timedelta) -> None:
    LogRecord.objects.bulk_create(
        LogRecord(at=start + n * step, level="info", logger="t", event=f"line-{n}")
        for n in range(count)
    )


@pytest.mark.django_db
def test_it_prunes_lines_past_their_age(settings):
    settings.LOG_STORE_DAYS = 3
    settings.LOG_STORE_MAX_LINES = 0
    make_lines(6, NOW - timedelta(days=5, hours=12), timedelta(days=1))

    prune(now=NOW, kinds=["observability.logs"])

    assert sorted(LogRecord.objects.values_list("event", flat=True)) == [
        "line-3",
        "line-4",
        "line-5",
    ]


@pytest.mark.django_db
def test_it_prunes_spans_beyond_the_newest_allowed(settings):
    settings.TRACE_STORE_DAYS = 0
    settings.TRACE_STORE_MAX_SPANS = 2
    SpanRecord.objects.bulk_create(
        SpanRecord(
            trace_id=TRACE,
            span_id=f"{n:016x}",
            name=f"span-{n}",
            kind="internal",
            service="omoi-console",
            started_at=NOW - timedelta(days=30) + timedelta(seconds=n),
            duration_ms=1,
            status="unset",
        )
        for n in range(5)
    )

    prune(now=NOW, kinds=["observability.spans"])

    assert sorted(SpanRecord.objects.values_list("name", flat=True)) == ["span-3", "span-4"]


@pytest.mark.django_db(transaction=True)
def test_its_flusher_writes_from_its_own_thread_what_a_rolled_back_request_logged():
    flusher = store.Flusher()

    with pytest.raises(RuntimeError), transaction.atomic():
        log.info("before.rollback", agent_id="worker-01")
        raise RuntimeError("the request failed")
    flusher.start()
    writer = flusher._thread
    flusher.stop()

    assert not writer.is_alive()
    assert writer.name not in [thread.name for thread in threading.enumerate()]
    assert stored_line("before.rollback").agent_id == "worker-01"


@pytest.mark.django_db(transaction=True)
def test_an_actions_page_shows_its_log_lines_and_its_trace_as_a_waterfall(
    client, registered_agent, make_operator
):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        clock.shift(18)
        check_heartbeats()
    action = RemediationAction.objects.get()
    store.flush()
    client.force_login(make_operator("viewer")[0])

    page = client.get(f"/actions/{action.pk}")

    assert page.status_code == 200
    html = page.content.decode()
    assert action.trace_id and f"<code>{action.trace_id}</code>" in html
    lines = LogRecord.objects.filter(action_id=str(action.pk))
    assert "watchdog.step_acted" in set(lines.values_list("event", flat=True))
    assert "watchdog.step_acted" in html
    # The loss that led to the action is on its trace, though it does not name the action.
    assert "agent.heartbeat_lost" in html
    bars = SpanRecord.objects.filter(trace_id=action.trace_id)
    assert bars.count() >= 2
    assert html.count('class="bar"') == bars.count()
    for span in bars:
        assert span.name in html


@pytest.mark.django_db
def test_an_agents_page_shows_its_lines_and_the_chosen_trace(
    client, registered_agent, make_operator
):
    agent, _ = registered_agent
    trace_id = spans_of_a_trace()
    with tracer.start_as_current_span("other"):
        log.info("agent.seen", agent_id=agent.id)
    log.info("agent.elsewhere", agent_id="worker-99")
    store.flush()
    client.force_login(make_operator("viewer")[0])

    newest = client.get(f"/agents/{agent.id}").content.decode()
    chosen = client.get(f"/agents/{agent.id}?trace={trace_id}").content.decode()
    bad = client.get(f"/agents/{agent.id}?trace=<script>")

    assert "agent.seen" in newest and "agent.elsewhere" not in newest
    assert 'class="bar"' in newest and ">other<" in newest
    assert trace_id[:12] in newest  # offered: one of its spans names the agent
    assert [name in chosen for name in ("root", "child", "grandchild", "sibling")] == [True] * 4
    assert 'style="margin-left: 60.00%; width: 40.00%"' in chosen
    assert bad.status_code == 200 and b"<script>" not in bad.content


@pytest.mark.django_db
def test_the_pages_are_for_operators_who_may_read_the_store(client, registered_agent):
    agent, _ = registered_agent

    assert client.get(f"/agents/{agent.id}").status_code == 302  # to the login page
    client.force_login(get_user_model().objects.create_user("nobody", password="pw-1234-x"))
    assert client.get(f"/agents/{agent.id}").status_code == 403
    assert client.get("/actions/99999999999999999999").status_code == 403


@pytest.mark.django_db
def test_the_pages_answer_404_for_what_does_not_exist(client, make_operator):
    client.force_login(make_operator("viewer")[0])

    assert client.get("/agents/nobody-here").status_code == 404
    assert client.get("/actions/99999999999999999999").status_code == 404
    assert client.get("/actions/12345").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_its_flusher_drops_a_batch_rather_than_wait_long_for_a_locked_table():
    flusher = store.Flusher()
    log.info("while.locked")

    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE observability_logrecord IN EXCLUSIVE MODE")
        else:
            # SQLite: a write holds the database's only write lock until commit.
            LogRecord.objects.create(at=timezone.now(), level="info", logger="t", event="holder")
        flusher.start()
        writer = flusher._thread
        started = time.monotonic()
        flusher.stop(timeout=10)
        waited = time.monotonic() - started

    assert not writer.is_alive() and waited < 5
    # The line, and then the warning about it: neither waited for the lock.
    assert store.stats()["logs"]["failed"] >= 1 and store.stats()["logs"]["written"] == 0
    assert not LogRecord.objects.filter(event="while.locked").exists()
