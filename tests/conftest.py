"""Shared fixtures. Real Postgres and Redis when the environment names them.

With REQUIRE_SERVICES=1 (CI) a test marked postgres/redis/browser never skips:
a missing service fails the run.
"""

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import threading
from urllib.parse import urlparse

import httpx
import pytest
from django.conf import settings
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rest_framework.test import APIClient

from observability import store
from observability.logging import structured_formatter
from omoi_console.celery import app as celery_app
from omoi_console.top.embedded import EmbeddedApp

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
# The console's span and log store is written only when a test flushes it: a
# background flusher would write one test's lines into another test's database.
# Server processes the tests start inherit the environment and keep no store.
store.flusher.disable()
os.environ["OMOI_TRACE_STORE"] = "off"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _redis_reachable() -> bool:
    if not settings.REDIS_URL:
        return False
    url = urlparse(settings.REDIS_URL)
    try:
        socket.create_connection((url.hostname, url.port or 6379), timeout=2).close()
    except OSError:
        return False
    return True


def pytest_configure(config):
    if not REQUIRE_SERVICES:
        return
    problems = []
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        problems.append("REQUIRE_SERVICES=1 but DATABASE_URL does not name PostgreSQL")
    if not _redis_reachable():
        problems.append("REQUIRE_SERVICES=1 but Redis (REDIS_URL) is not reachable")
    if problems:
        pytest.exit("; ".join(problems), returncode=3)


SERVED = "served"


def _nats_reachable() -> bool:
    url = urlparse(os.environ.get("NATS_URL", ""))
    if not url.hostname:
        return False
    try:
        socket.create_connection((url.hostname, url.port or 4222), timeout=2).close()
    except OSError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    # NATS is optional everywhere, CI included: its tests run where NATS_URL names one.
    if not _nats_reachable():
        skip = pytest.mark.skip(reason="needs NATS with JetStream (set NATS_URL)")
        for item in items:
            if item.get_closest_marker("nats"):
                item.add_marker(skip)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("api") == SERVED:
            # A served app's threads see only committed rows: this variant of a
            # test runs transactionally whatever its own django_db mark says.
            item.own_markers.insert(0, pytest.mark.django_db(transaction=True).mark)
    if REQUIRE_SERVICES:
        return
    on_postgres = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    reasons = {
        "postgres": None if on_postgres else "needs PostgreSQL (set DATABASE_URL)",
        "redis": None if _redis_reachable() else "needs Redis (set REDIS_URL)",
        "browser": None if os.path.exists(CHROMIUM) else "needs Debian's chromium",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def empty_trace_store_buffers():
    """Each test stores only what it produced, and holds on to nothing of earlier tests."""
    store.spans.clear()
    store.lines.clear()


@pytest.fixture(autouse=True)
def fresh_channel_layers():
    """Each test gets channel layers of its own: a layer keeps locks and connections
    bound to the event loop that first used it, and each test runs its own loop."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def eager_celery():
    """Tasks run in-process: tests exercise the code, not a broker."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def ungrouped_notifications(settings):
    """Each alert its own group, told at once: tests of delivery see every notification
    as it is made. The grouping tests set the group_by and timers they test."""
    settings.ALERT_GROUP_BY = ["..."]
    settings.ALERT_GROUP_WAIT_SECONDS = 0
    settings.ALERT_GROUP_INTERVAL_SECONDS = 0


@pytest.fixture(autouse=True)
def empty_ingest_cache():
    """Each test starts with a lean heartbeat path that knows no token or agent."""
    from monitoring import partitions, samples
    from monitoring.ingest.cache import ingest_cache

    ingest_cache.clear()
    samples.forget_series()
    partitions.forget_known()
    yield
    ingest_cache.clear()
    samples.forget_series()
    partitions.forget_known()


@pytest.fixture(autouse=True)
def empty_metric_tables(request):
    """Samples and rollups live in tables Django does not manage, so a transactional
    test's flush leaves them: empty them after such a test."""
    yield
    marker = request.node.get_closest_marker("django_db")
    if marker is None or not (marker.kwargs.get("transaction") or (marker.args[:1] == (True,))):
        return
    from django.db import connection

    request.getfixturevalue("django_db_blocker").unblock()
    try:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM monitor_samples")
            cursor.execute("DELETE FROM monitor_rollups")
    finally:
        request.getfixturevalue("django_db_blocker").restore()


@pytest.fixture
def seeded(db):
    """What migrate seeds (roles, built-in rule, default policy); transactional tests
    flush the database, so it is re-seeded per test."""
    from alerting.builtins import ensure_builtin_receivers, ensure_builtin_rules
    from omoi_console.foundation.roles import sync_roles
    from watchdog.builtins import ensure_default_policies

    sync_roles()
    ensure_builtin_rules()
    ensure_builtin_receivers()
    ensure_default_policies()


@pytest.fixture
def registered_agent(seeded):
    """A worker agent and its plaintext ingest token."""
    from monitoring.services import register_agent

    return register_agent("worker-01", "worker", heartbeat_interval=5.0)


@pytest.fixture
def thresholds(settings):
    """Short, distinct defaults per role, so a test can tell
    whose it got (interval, stuck threshold)."""
    settings.HEARTBEAT_INTERVAL_BY_ROLE = {"worker": 5.0, "monitor": 10.0, "scheduler": 30.0}
    settings.STUCK_AFTER_BY_ROLE = {"worker": 60.0, "monitor": 120.0, "scheduler": 300.0}
    return settings


@pytest.fixture
def make_operator(seeded):
    """make_operator(role) -> (user, plaintext API token)."""
    from django.contrib.auth import get_user_model

    from omoi_console.foundation.roles import grant_role
    from omoi_console.models import OperatorToken

    def make(role: str, username: str | None = None):
        user = get_user_model().objects.create_user(
            username or f"{role}-user", password="pw-1234-x"
        )
        grant_role(user, role)
        _, raw = OperatorToken.issue(user=user, name="test")
        return user, raw

    return make


@pytest.fixture
def api():
    return APIClient()


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """The served app lives as long as the process: every test starts with no counts and,
    afterwards, with limits read from settings that the test no longer overrides (an
    autouse fixture is torn down after ``settings``)."""
    yield
    asgi = sys.modules.get("omoi_console.asgi")
    if asgi is not None:
        asgi.ingest_limits.configure()
        asgi.verified_credentials.clear()


@pytest.fixture
def server(settings):
    """The app served over real HTTP and websockets on a loopback port, in a thread."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    # No periodic checks: the test decides every state change itself.
    app = EmbeddedApp(with_ticker=False)
    asyncio.run_coroutine_threadsafe(app.start(), loop).result(30)
    yield app
    asyncio.run_coroutine_threadsafe(app.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


class ServedResponse:
    """An httpx response that reads like a Django test response."""

    def __init__(self, response):
        self._response = response
        self.status_code = response.status_code
        self.content = response.content

    def __getitem__(self, header):
        return self._response.headers[header]

    def json(self):
        return self._response.json()


class ServedClient:
    """The calls tests make on DRF's APIClient, sent over HTTP to a served app."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def _headers(self, extra: dict, content_type: str | None) -> dict:
        headers = {"Content-Type": content_type} if content_type else {}
        for key, value in extra.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").title()] = value
        return headers

    def post(self, path, data=None, content_type=None, format=None, **extra):
        import json

        if format == "json" or (content_type is None and not isinstance(data, str | bytes)):
            data, content_type = json.dumps(data), "application/json"
        response = httpx.post(
            self.base_url + path,
            content=data.encode() if isinstance(data, str) else data,
            headers=self._headers(extra, content_type),
            timeout=30,
        )
        return ServedResponse(response)

    def get(self, path, **extra):
        response = httpx.get(self.base_url + path, headers=self._headers(extra, None), timeout=30)
        return ServedResponse(response)


def flush_ingest(app: EmbeddedApp) -> None:
    """Write what the served app's lean heartbeat path has buffered, now."""
    from monitoring.ingest.runtime import flush_now

    asyncio.run_coroutine_threadsafe(flush_now(), app.loop).result(30)


class captured_log:
    """Collects every log line at INFO and above, structlog's and the stdlib's, as parsed
    JSON. The root level is set for the duration: a command run earlier in the session
    (the gameday quietens the log) may have raised it."""

    def __init__(self, lines: list):
        self.lines = lines
        self.handler = logging.StreamHandler(stream=self)
        self.handler.setFormatter(structured_formatter("json"))

    def write(self, text):
        for line in text.splitlines():
            if line.strip():
                self.lines.append(json.loads(line))

    def flush(self):
        pass

    def __enter__(self):
        root = logging.getLogger()
        self.level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.level)


@pytest.fixture(scope="session", autouse=True)
def background_dispatch_drained(django_db_setup):
    """At the end, the background dispatcher lets its connections go before the test
    databases are dropped (which waits for every session on them)."""
    yield
    from omoi_console.foundation.events import background

    background.drain()


@pytest.fixture(scope="session")
def procfile_server(django_db_setup, tmp_path_factory):
    """The web tier as the Procfile starts it, serving the test database; one per run."""
    from tests.procfile_server import ProcfileServer

    web = ProcfileServer(free_port(), tmp_path_factory.mktemp("web") / "web.log")
    try:
        web.start()
        yield web
    finally:
        web.stop()


_span_exporter = InMemorySpanExporter()


@pytest.fixture
def spans():
    """Every span the process finishes during the test, kept in memory."""
    provider = trace.get_tracer_provider()
    if not getattr(provider, "_tests_export_in_memory", False):
        provider.add_span_processor(SimpleSpanProcessor(_span_exporter))
        provider._tests_export_in_memory = True
    _span_exporter.clear()
    yield _span_exporter
    _span_exporter.clear()


def trace_of(span) -> str:
    return format(span.context.trace_id, "032x")


def named(spans: InMemorySpanExporter, name: str) -> list:
    return [span for span in spans.get_finished_spans() if span.name == name]
