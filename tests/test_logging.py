import asyncio
import json
import logging
from pathlib import Path

import jsonschema
import pytest
import structlog
from opentelemetry import trace

from observability.logging import REDACTED, structured_formatter
from omoi_console.celery import app as celery_app
from omoi_console.foundation.request_context import RequestContext

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "observability/log_line.schema.json").read_text()
)


class _Buffer:
    def __init__(self):
        self.lines = []

    def write(self, text):
        if text.strip():
            self.lines.append(text.strip())

    def flush(self):
        pass


class written_lines:
    """The lines the JSON formatter writes for logger ``name``, as text."""

    def __init__(self, name: str = "test.secrets"):
        self.logger = logging.getLogger(name)
        self.handler = logging.StreamHandler(stream=_Buffer())
        self.handler.setFormatter(structured_formatter("json"))

    @property
    def lines(self) -> list[str]:
        return self.handler.stream.lines

    def __enter__(self):
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_it_never_writes_secrets_to_the_log():
    with written_lines() as out:
        structlog.get_logger("test.secrets").info(
            "token.issued", token="omoi_ag_0123456789ab_s3cret", smtp_password="hunter2", agent="a"
        )

    line = json.loads(out.lines[-1])
    assert line["token"] == REDACTED and line["smtp_password"] == REDACTED
    assert line["agent"] == "a"
    assert "s3cret" not in out.lines[-1] and "hunter2" not in out.lines[-1]


@pytest.mark.parametrize(
    ("message", "secret", "kept"),
    [
        ("sent Authorization: Bearer abcdEFGH1234.5678-xyz", "abcdEFGH1234", "Authorization"),
        ("agent used omoi_ag_0123456789ab_Zq9sEcReTvAlUe", "Zq9sEcReTvAlUe", "omoi_ag_01234"),
        ("POST https://ops:pa55word@hooks.example.com/alert", "pa55word", "example.com/alert"),
        ("GET https://example.com/ping?token=tok3nvalue&x=1", "tok3nvalue", "x=1"),
        ("cache at redis://:hunter22@cache:6379/0 down", "hunter22", "cache:6379/0"),
        ("slack https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX", "XXXXsecret", "slack"),
        ("receiver hmac_key=f00dfeedcafe0123 saved", "f00dfeedcafe0123", "saved"),
        ('config {"password": "correct-horse"} loaded', "correct-horse", "loaded"),
    ],
)
def test_it_masks_secrets_written_inside_messages(message, secret, kept):
    with written_lines() as out:
        logging.getLogger("test.secrets").warning(message)

    assert secret not in out.lines[-1]
    event = json.loads(out.lines[-1])["event"]
    assert REDACTED in event and kept in event


def test_it_masks_a_password_in_exception_text():
    with written_lines() as out:
        try:
            raise ConnectionError(
                'connection to "postgres://omoi:Sup3rS3cret@db:5432/omoi" failed: '
                "password=Sup3rS3cret rejected"
            )
        except ConnectionError:
            logging.getLogger("test.secrets").exception("database.unreachable")

    line = json.loads(out.lines[-1])
    assert "ConnectionError" in line["exception"]
    assert "Sup3rS3cret" not in out.lines[-1]


def test_it_writes_lines_that_follow_the_documented_schema():
    tracer = trace.get_tracer("test")
    with written_lines() as out:
        structlog.get_logger("test.secrets").info("plain.line", count=3)
        with (
            tracer.start_as_current_span("work"),
            structlog.contextvars.bound_contextvars(request_id="req-1", agent_id="a-1"),
        ):
            structlog.get_logger("test.secrets").warning("alert.fired", alert_id=7)
        logging.getLogger("test.secrets").error("stdlib says %s", "hello")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger("test.secrets").exception("job.failed", task_id="t-1")

    lines = [json.loads(text) for text in out.lines]
    assert len(lines) == 4
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    assert lines[1]["request_id"] == "req-1" and len(lines[1]["trace_id"]) == 32
    assert lines[2]["event"] == "stdlib says hello" and "request_id" not in lines[2]


def test_the_schema_refuses_a_line_without_its_standard_fields():
    with pytest.raises(jsonschema.ValidationError, match="logger"):
        jsonschema.validate(
            {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": "x"}, SCHEMA
        )


def test_celery_workers_keep_the_structured_log(monkeypatch):
    root = logging.getLogger()
    before = [(handler, handler.formatter) for handler in root.handlers]
    monkeypatch.setattr(celery_app.log, "already_setup", False)

    # What a worker or beat does with its logging when it starts.
    handled = celery_app.log.setup_logging_subsystem(loglevel="INFO")

    assert handled
    assert [(handler, handler.formatter) for handler in root.handlers] == before
    assert isinstance(before[0][1], structlog.stdlib.ProcessorFormatter)
    assert celery_app.conf.worker_hijack_root_logger is False


# --- request ids and the access log ---------------------------------------------------


def request_parts(path: str, headers=(), status: int = 200):
    """An app that logs a line and answers ``status``, a request to it, and what it sent."""
    sent = []

    async def app(scope, receive, send):
        structlog.get_logger("test.secrets").info("view.ran")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": list(headers),
        "client": ("10.1.2.3", 5555),
    }
    return RequestContext(app), (scope, receive, send), sent


def serve(path: str, headers=(), status: int = 200):
    """One request through RequestContext; its request id, the app's lines, the access lines."""
    middleware, request, sent = request_parts(path, headers, status)
    with written_lines("test.secrets") as app_log, written_lines("omoi.access") as access:
        asyncio.run(middleware(*request))
    response_headers = dict(sent[0]["headers"])
    return (
        response_headers[b"x-request-id"].decode(),
        [json.loads(line) for line in app_log.lines],
        [json.loads(line) for line in access.lines],
    )


def test_it_honours_a_well_formed_incoming_request_id():
    request_id, app_lines, access_lines = serve(
        "/console/", [(b"x-request-id", b"lb-7f3a:2026.12")]
    )

    assert request_id == "lb-7f3a:2026.12"
    assert app_lines[0]["request_id"] == request_id
    (line,) = access_lines
    assert line["request_id"] == request_id
    assert (line["method"], line["path"], line["status"], line["client"]) == (
        "GET",
        "/console/",
        200,
        "10.1.2.3",
    )
    assert line["duration_ms"] >= 0
    jsonschema.validate(line, SCHEMA)


@pytest.mark.parametrize("bad", [b"x" * 129, b"has space", b"new\nline", b"<script>", b""])
def test_it_replaces_an_unsafe_request_id_with_a_fresh_one(bad):
    request_id, app_lines, _ = serve("/console/", [(b"x-request-id", bad)])

    assert request_id != bad.decode(errors="replace")
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert app_lines[0]["request_id"] == request_id


def test_it_forgets_the_request_id_after_the_request():
    middleware, request, _ = request_parts("/console/", [(b"x-request-id", b"only-this-one")])

    async def serve_then_look():
        # The same task, as a server's connection handler serves one request after another.
        await middleware(*request)
        return structlog.contextvars.get_contextvars()

    assert "request_id" not in asyncio.run(serve_then_look())


def test_it_logs_ingest_failures_but_not_routine_ingest_or_counted_refusals():
    assert serve("/api/v1/agents/a-1/heartbeat")[2] == []
    assert serve("/api/v1/metrics/ingest", status=401)[2] == []
    assert serve("/console/", status=429)[2] == []
    (failed,) = serve("/api/v1/agents/a-1/heartbeat", status=503)[2]
    assert failed["status"] == 503


def test_it_turns_the_access_log_off_by_setting(settings):
    settings.ACCESS_LOG = False
    assert serve("/console/")[2] == []
