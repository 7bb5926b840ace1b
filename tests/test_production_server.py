"""The web tier as the Procfile's web line runs it: under abuse, on stop and on restart.

The body-bound checks (a declared oversize answered before the body is sent, a
chunked body cut off at the bound) run against this same server in
test_request_limits.py. The server is another process, so its clock cannot be
frozen: these tests run in real time, and every wait is bounded.
"""

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.models import Agent, AgentState, AgentTransition
from monitoring.services import check_heartbeats, register_agent
from tests.conftest import free_port
from tests.procfile_server import ProcfileServer

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
PIECE = 256 * 1024


def send_oversized(port: int, *, chunked: bool, size: int = 32 * MIB) -> bytes:
    """Send an unauthenticated heartbeat of `size` bytes; return the status line if one came."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (
        "POST /api/v1/agents/nobody/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )
    piece = b"x" * PIECE
    if chunked:
        piece = f"{PIECE:x}\r\n".encode() + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        # A server that refuses the body answers and closes while the rest is on its way.
        with contextlib.suppress(OSError):
            for _ in range(size // PIECE):
                sock.sendall(piece)
        with contextlib.suppress(OSError):
            return sock.recv(4096).split(b"\r\n", 1)[0]
    return b""


def test_it_keeps_memory_flat_under_oversized_bodies(procfile_server):
    web = procfile_server
    for chunked in (False, True):  # first requests load code; that growth is not the bodies'
        send_oversized(web.port, chunked=chunked, size=2 * MIB)
    before = peak = web.rss_bytes()

    with ThreadPoolExecutor(10) as pool:
        sends = [pool.submit(send_oversized, web.port, chunked=n % 2 == 0) for n in range(20)]
        while not all(send.done() for send in sends):
            peak = max(peak, web.rss_bytes())
            time.sleep(0.02)
        answers = [send.result() for send in sends]
    after = web.rss_bytes()

    # 640 MiB went out; buffering even a few of those bodies would show here.
    assert (peak - before) / MIB < 64, (before, peak, answers)
    assert (after - before) / MIB < 32, (before, after)
    assert httpx.get(f"{web.base_url}/healthz", timeout=10).status_code == 200


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def open_heartbeat(port: int, agent_id: str, token: str, first_part: bytes) -> HTTPConnection:
    """Start a chunked heartbeat on a connection a worker holds; send part of its body."""
    client = HTTPConnection("127.0.0.1", port, timeout=15)
    # Answered, this request shows that a worker has taken the connection.
    client.request("GET", "/healthz")
    client.getresponse().read()
    client.putrequest("POST", f"/api/v1/agents/{agent_id}/heartbeat")
    client.putheader("Authorization", f"Bearer {token}")
    client.putheader("Content-Type", "application/json")
    client.putheader("Transfer-Encoding", "chunked")
    client.endheaders()
    client.send(chunk(first_part))
    return client


def test_it_answers_requests_in_flight_on_sigterm_and_still_exits_in_time(seeded, tmp_path):
    agent, token = register_agent("worker-drain", "worker", heartbeat_interval=5.0)
    body = json.dumps({"state": "running", "task_id": "drained"}).encode()
    web = ProcfileServer(free_port(), tmp_path / "web.log")
    try:
        web.start()
        in_flight = open_heartbeat(web.port, agent.id, token, body[:10])
        # A client that never finishes its body must not keep the server up.
        stalled = open_heartbeat(web.port, agent.id, token, body[:10])
        time.sleep(0.5)  # the workers read what was sent before the signal comes
        web.terminate()
        signalled = time.monotonic()
        time.sleep(0.5)  # the rest of the body arrives while the server is stopping
        in_flight.send(chunk(body[10:]) + b"0\r\n\r\n")
        status = in_flight.getresponse().status
        exited = web.wait_gone(10)
        took = time.monotonic() - signalled
        in_flight.close()
        stalled.close()
    finally:
        web.stop()

    assert status == 200, web.log_tail()
    assert Agent.objects.get(pk=agent.id).current_task == "drained"
    assert exited, f"still running {took:.1f} s after SIGTERM:\n{web.log_tail()}"


def test_it_runs_lifespan_shutdown_in_every_worker_on_restart_and_on_stop(tmp_path):
    events = tmp_path / "lifespan.log"
    web = ProcfileServer(
        free_port(),
        tmp_path / "web.log",
        app="tests.lifespan_probe:application",
        LIFESPAN_PROBE_LOG=str(events),
    )
    try:
        web.start()
        first = web.worker_pids()
        web.reload()
        until = time.monotonic() + 60
        while (web.worker_pids() & first or len(web.worker_pids()) < len(first)) and (
            time.monotonic() < until
        ):
            time.sleep(0.1)
        second = web.worker_pids()
        web.terminate()
        exited = web.wait_gone(10)
    finally:
        web.stop()

    noted = [line.split() for line in events.read_text().splitlines()] if events.exists() else []
    assert first and second and not first & second, web.log_tail()
    assert exited, web.log_tail()
    for event in ("startup", "shutdown"):
        assert {int(pid) for name, pid in noted if name == event} == first | second, noted


def heartbeat_until(stop, base_url, agent_id, token, offset, record) -> None:
    """One agent: a heartbeat a second over its own keep-alive connection until stopped."""
    path = f"/api/v1/agents/{agent_id}/heartbeat"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, headers=auth, timeout=10) as client:
        due = time.monotonic() + offset
        while not stop.wait(max(0.0, due - time.monotonic())):
            due += 1.0
            try:
                try:
                    response = client.post(path, json={"state": "running"})
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                    # The server closed the idle connection as the request went out:
                    # like any HTTP client, try once more on a fresh connection.
                    response = client.post(path, json={"state": "running"})
            except httpx.HTTPError as error:
                record["failed"].append((agent_id, repr(error)))
                continue
            if response.status_code == 200:
                record["answered"][agent_id] += 1
            else:
                record["failed"].append((agent_id, response.status_code, response.text[:200]))


def check_while(condition, deadline: float) -> int:
    """Run the overdue check four times a second while `condition()` holds; return how often."""
    checks = 0
    until = time.monotonic() + deadline
    while condition() and time.monotonic() < until:
        check_heartbeats()
        checks += 1
        time.sleep(0.25)
    return checks


def test_it_restarts_the_web_tier_without_dropping_a_heartbeat(procfile_server, seeded):
    web = procfile_server
    fleet = [register_agent(f"worker-{n:02}", "worker", heartbeat_interval=1.0) for n in range(30)]
    record = {"failed": [], "answered": {agent.id: 0 for agent, _ in fleet}}
    stop = threading.Event()
    agents = [
        threading.Thread(
            target=heartbeat_until,
            args=(stop, web.base_url, agent.id, token, n / len(fleet), record),
        )
        for n, (agent, token) in enumerate(fleet)
    ]
    for agent in agents:
        agent.start()
    try:
        # Registration and first heartbeats are no part of a restart: start the checks
        # once every agent has been heard from.
        until = time.monotonic() + 60
        while not all(record["answered"].values()) and time.monotonic() < until:
            time.sleep(0.1)
        started = time.monotonic()
        check_while(lambda: time.monotonic() - started < 1.5, 1.5)
        old_workers = web.worker_pids()
        web.reload()
        restarting = check_while(
            lambda: web.worker_pids() & old_workers or len(web.worker_pids()) < len(old_workers),
            90,
        )
        new_workers = web.worker_pids()
        # A heartbeat the restart held up is overdue interval + skew (3 s) after the last one.
        after = time.monotonic()
        check_while(lambda: time.monotonic() - after < 3.5, 3.5)
    finally:
        stop.set()
        for agent in agents:
            agent.join(15)

    lost = AgentTransition.objects.filter(to_state__in=[AgentState.DEGRADED, AgentState.FAILED])
    assert list(lost.values_list("agent_id", "to_state", "reason")) == []
    assert set(Agent.objects.values_list("state", flat=True)) == {AgentState.RUNNING}
    assert record["failed"] == [], web.log_tail()
    assert old_workers and not (new_workers & old_workers), web.log_tail()
    assert len(new_workers) == len(old_workers), web.log_tail()
    assert restarting >= 4  # the overdue check ran all through the restart
    assert min(record["answered"].values()) >= 5


def test_it_writes_a_json_access_line_with_the_request_id(procfile_server):
    web = procfile_server
    request_id = f"probe-{time.monotonic_ns()}"

    response = httpx.get(f"{web.base_url}/healthz", headers={"X-Request-ID": request_id})

    assert response.headers["x-request-id"] == request_id
    until = time.monotonic() + 10
    while time.monotonic() < until:  # a server worker writes it, after answering
        lines = [line for line in web.log_path.read_text().splitlines() if request_id in line]
        if lines:
            break
        time.sleep(0.05)
    (line,) = [json.loads(line) for line in lines]
    assert line["logger"] == "omoi.access" and line["event"] == "http.request"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)
    assert line["client"] == "127.0.0.1" and line["duration_ms"] > 0


HEALTHZ_COUNT = "django_http_requests_total_by_view_transport_method_total"


def healthz_requests(web) -> float:
    page = httpx.get(f"{web.base_url}/metrics", timeout=10)
    assert page.status_code == 200, page.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page.text)
        for sample in family.samples
        if sample.name == HEALTHZ_COUNT and sample.labels.get("view") == "healthz"
    )


def test_it_counts_every_worker_in_each_scrape(procfile_server):
    web = procfile_server
    assert len(web.worker_pids()) >= 2
    before = healthz_requests(web)
    for _ in range(40):
        # A new connection each: the workers take turns accepting them.
        assert httpx.get(f"{web.base_url}/healthz", timeout=10).status_code == 200
    # Whichever worker answers a scrape, it counts what all of them served.
    counts = {healthz_requests(web) for _ in range(8)}

    assert counts == {before + 40}
