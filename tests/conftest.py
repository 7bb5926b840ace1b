"""Shared fixtures. Real Postgres and Redis when the environment names them.

With REQUIRE_SERVICES=1 (CI) a test marked postgres/redis/browser never skips:
a missing service fails the run.
"""

import asyncio
import os
import shutil
import socket
import threading
from urllib.parse import urlparse

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from omoi_console.celery import app as celery_app
from omoi_console.top.embedded import EmbeddedApp

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
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


def pytest_collection_modifyitems(config, items):
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
def eager_celery():
    """Tasks run in-process: tests exercise the code, not a broker."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def seeded(db):
    """What migrate seeds (roles, built-in rule, default policy); transactional tests
    flush the database, so it is re-seeded per test."""
    from alerting.builtins import ensure_builtin_rules
    from omoi_console.foundation.roles import sync_roles
    from watchdog.builtins import ensure_default_policies

    sync_roles()
    ensure_builtin_rules()
    ensure_default_policies()


@pytest.fixture
def registered_agent(seeded):
    """A worker agent and its plaintext ingest token."""
    from monitoring.services import register_agent

    return register_agent("worker-01", "worker", heartbeat_interval=5.0)


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
