"""The body bound as a client on the wire meets it: before Django reads the body."""

import json
import socket

import httpx
import pytest

from monitoring.models import Agent

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


@pytest.fixture(params=["in-process", "procfile"])
def server(request):
    """Each check runs on the in-process server and on the one the Procfile starts."""
    if request.param == "in-process":
        return request.getfixturevalue("server")
    return request.getfixturevalue("procfile_server")


def chunks(body: bytes, size: int = 64 * 1024):
    for start in range(0, len(body), size):
        yield body[start : start + size]


def heartbeat(server, agent_id: str, token: str, content, **headers) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/v1/agents/{agent_id}/heartbeat",
        content=content,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            **headers,
        },
        timeout=10,
    )


def test_it_reads_a_chunked_heartbeat_like_any_other(server, registered_agent):
    agent, token = registered_agent
    body = json.dumps({"state": "running", "task_id": "chunked"}).encode()

    response = heartbeat(server, agent.id, token, chunks(body, 8))

    assert response.status_code == 200, response.text
    assert Agent.objects.get(pk=agent.id).current_task == "chunked"


def test_it_answers_413_to_a_chunked_body_over_the_bound(server, registered_agent):
    agent, token = registered_agent
    # Just over the bound, so the chunk that crosses it is the last: the server
    # then leaves nothing unread, and its close cannot reset the connection
    # before the client has read the answer.
    body = json.dumps({"state": "running", "task_id": "x" * MIB}).encode()

    response = heartbeat(server, agent.id, token, chunks(body))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert Agent.objects.get(pk=agent.id).last_heartbeat_at is None


def test_it_answers_a_declared_oversize_before_the_body_is_sent(server, registered_agent):
    agent, token = registered_agent
    request = (
        f"POST /api/v1/agents/{agent.id}/heartbeat HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100 * MIB}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request.encode())  # and not one byte of the 100 MiB
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]

    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_fresh_process_refuses_oversize_before_serving_anything(tmp_path):
    """The first request a new server gets may be too large; the answer is still a 413."""
    import os
    import subprocess
    import sys

    code = """
import asyncio, json
from omoi_console.asgi import application

async def main():
    scope = {"type": "http", "method": "POST", "path": "/api/v1/agents/w/heartbeat",
             "headers": [(b"content-length", b"99999999")], "query_string": b""}
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await application(scope, receive, send)
    print(sent[0]["status"], json.loads(sent[1]["body"])["status"])

asyncio.run(main())
"""
    env = {**os.environ, "OMOI_DATA_DIR": str(tmp_path)}
    result = subprocess.run(  # noqa: S603  (our own interpreter, fixed code)
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["413", "413"]
