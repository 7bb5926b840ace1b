"""The lean path's cache across processes: a revocation holds in every one at once."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from monitoring.models import AgentToken
from tests.conftest import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
RUNNING = {"state": "running", "task_id": "t", "progress": 0.5}


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def two_servers(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "OMOI_DATA_DIR": str(tmp_path),
        # Web processes only: no Celery worker or beat whose liveness /healthz could see.
        "OMOI_LIVENESS_STALE_SECONDS": "0",
    }
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(  # noqa: S603  (our own interpreter and app)
            [sys.executable, "-m", "uvicorn", "omoi_console.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_until_serving(url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def wait_until_serving(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling a starting process; nothing to freeze here
    raise AssertionError(f"{url} never answered")


def beat(url: str, agent_id: str, token: str) -> int:
    response = httpx.post(
        f"{url}/api/v1/agents/{agent_id}/heartbeat",
        json=RUNNING,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return response.status_code


def test_it_refuses_a_revoked_token_in_every_process_on_the_next_request(
    two_servers, registered_agent
):
    agent, token = registered_agent
    for url in two_servers:  # the first fills that process's cache, the rest are lean
        assert [beat(url, agent.id, token) for _ in range(3)] == [200, 200, 200]

    AgentToken.objects.get(agent=agent).revoke()

    assert [beat(url, agent.id, token) for url in two_servers] == [401, 401]
