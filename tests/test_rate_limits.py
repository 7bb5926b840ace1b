"""Rate limits in front of Django, met by clients on the wire."""

import asyncio
import json
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
import time_machine
from django.utils import timezone

from monitoring.models import Agent, AgentState
from monitoring.services import check_heartbeats, register_agent
from omoi_console import asgi
from omoi_console.foundation.rate_limits import client_address, trusted_networks
from omoi_console.foundation.rate_windows import (
    BoundedMemoryStorage,
    RecentlyVerified,
    WindowedTally,
)
from tests.conftest import captured_log, flush_ingest

pytestmark = pytest.mark.django_db(transaction=True)

BEAT = {"state": "running", "task_id": "t-1", "progress": 0.5}


def heartbeat(server, agent_id: str, token: str, body=BEAT) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/v1/agents/{agent_id}/heartbeat",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def stale_token(number: int) -> str:
    """A well-formed agent token that no agent holds, as after a rotation."""
    return f"omoi_ag_{number:012x}_{'x' * 43}"


async def flood(server, agent_id: str, count: int) -> list[int]:
    """``count`` concurrent heartbeats with stale tokens; their status codes."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"/api/v1/agents/{agent_id}/heartbeat",
                    json=BEAT,
                    headers={"Authorization": f"Bearer {stale_token(n)}"},
                )
                for n in range(count)
            )
        )
    return [r.status_code for r in responses]


def limit(settings, **values):
    for name, value in values.items():
        setattr(settings, name, value)
    asgi.ingest_limits.configure()


def assert_too_many(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 429 and body["title"] == "Too Many Requests" and body["detail"]
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def test_it_answers_429_with_retry_after_once_a_token_spends_its_allowance(
    server, settings, seeded
):
    limit(settings, RATE_LIMIT_PER_TOKEN="3/minute")
    agent, token = register_agent("worker-01", "worker")
    other, other_token = register_agent("worker-02", "worker")
    # Registration proved the token to this process (the lean path caches it);
    # unproven requests draw on an allowance of their own, so that bad secrets
    # under a known lookup id cannot spend this one.
    statuses = [heartbeat(server, agent.id, token).status_code for _ in range(3)]
    refused = heartbeat(server, agent.id, token, {**BEAT, "task_id": "refused"})

    assert statuses == [200, 200, 200]
    assert assert_too_many(refused) <= 60
    # The refused heartbeat never reached the database, and other tokens are untouched.
    assert Agent.objects.get(pk=agent.id).current_task == "t-1"
    assert heartbeat(server, other.id, other_token).status_code == 200


def test_it_gives_the_token_room_again_when_its_window_closes(server, settings, seeded):
    limit(settings, RATE_LIMIT_PER_TOKEN="2/minute")
    agent, token = register_agent("worker-01", "worker")
    with time_machine.travel(timezone.now(), tick=True) as clock:
        for _ in range(3):
            heartbeat(server, agent.id, token)
        retry_after = assert_too_many(heartbeat(server, agent.id, token))

        clock.shift(timedelta(seconds=retry_after))

        assert heartbeat(server, agent.id, token).status_code == 200


def test_it_keeps_good_agents_healthy_while_one_client_floods_bad_tokens(server, settings, seeded):
    limit(settings, RATE_LIMIT_AUTH_FAILURES="20/minute")
    fleet = [register_agent(f"worker-{n:02d}", "worker", heartbeat_interval=1.0) for n in range(4)]
    victim = fleet[0][0].id
    flooded = []
    with time_machine.travel(timezone.now(), tick=True) as clock:
        for agent, token in fleet:
            assert heartbeat(server, agent.id, token).status_code == 200
        for _ in range(4):
            # Each round is a heartbeat interval: an agent that missed it would be overdue.
            clock.shift(timedelta(seconds=1.5))
            flooded += asyncio.run(flood(server, victim, 60))
            statuses = [heartbeat(server, agent.id, token).status_code for agent, token in fleet]
            assert statuses == [200] * len(fleet)
        # The clock jumps, so give the lean path the flush interval it would have had.
        flush_ingest(server)
        clock.shift(timedelta(seconds=1))
        check_heartbeats()

    assert set(flooded) == {401, 429}
    assert flooded.count(429) >= len(flooded) - 60  # after the first round, all refused
    states = set(
        Agent.objects.filter(pk__in=[a.id for a, _ in fleet]).values_list("state", flat=True)
    )
    assert states == {AgentState.RUNNING}


def test_it_refuses_a_source_that_fails_operator_authentication_too_often(
    server, settings, make_operator
):
    limit(settings, RATE_LIMIT_AUTH_FAILURES="5/minute")
    _, good = make_operator("viewer")

    def agents(token):
        return httpx.get(
            f"{server.base_url}/api/v1/agents",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    assert agents(good).status_code == 200
    statuses = [agents(f"omoi_op_{n:012x}_{'y' * 43}").status_code for n in range(8)]

    assert statuses == [401] * 5 + [429] * 3
    assert_too_many(agents("omoi_op_000000000000_nothing"))
    assert agents(good).status_code == 200  # known good: not held back with the flooder


def test_it_counts_failures_per_client_behind_a_trusted_proxy(server, settings, seeded):
    limit(settings, RATE_LIMIT_AUTH_FAILURES="3/minute", TRUSTED_PROXIES=["127.0.0.1"])
    agent, _ = register_agent("worker-01", "worker")

    def from_client(address, number):
        return httpx.post(
            f"{server.base_url}/api/v1/agents/{agent.id}/heartbeat",
            json=BEAT,
            headers={
                "Authorization": f"Bearer {stale_token(number)}",
                "X-Forwarded-For": f"198.51.100.66, {address}",
            },
            timeout=10,
        ).status_code

    flooder = [from_client("203.0.113.9", n) for n in range(5)]

    assert flooder == [401] * 3 + [429] * 2
    assert from_client("203.0.113.10", 99) == 401  # another client behind the same proxy


def test_it_logs_failures_once_per_window_with_a_count(server, settings, seeded):
    limit(settings, RATE_LIMIT_AUTH_FAILURES="3/minute", RATE_LIMIT_LOG_SECONDS=10.0)
    agent, token = register_agent("worker-01", "worker")
    lines = []
    with captured_log(lines), time_machine.travel(timezone.now(), tick=True) as clock:
        statuses = [heartbeat(server, agent.id, stale_token(n)).status_code for n in range(6)]
        during = [line["event"] for line in lines]
        clock.shift(timedelta(seconds=11))
        heartbeat(server, agent.id, token)

    assert statuses == [401] * 3 + [429] * 3
    assert "auth.failures" not in during and "rate_limit.refused" not in during
    failures = [line for line in lines if line["event"] == "auth.failures"]
    refusals = [line for line in lines if line["event"] == "rate_limit.refused"]
    assert [(f["source"], f["count"], f["window_seconds"]) for f in failures] == [
        ("127.0.0.1", 3, 10.0)
    ]
    assert [(r["limit"], r["source"], r["count"]) for r in refusals] == [
        ("auth_failures", "127.0.0.1", 3)
    ]
    # Django's own line per 401 ("Unauthorized: ...") is gone, and no secret is logged.
    assert not [line for line in lines if line.get("logger") == "django.request"]
    assert "x" * 43 not in json.dumps(lines)


def test_it_keeps_counts_in_bounded_memory_under_a_flood_of_distinct_keys():
    storage = BoundedMemoryStorage(max_keys=100)
    verified = RecentlyVerified(max_entries=100)
    written = []
    log = SimpleNamespace(warning=lambda event, **fields: written.append(fields["source"]))
    tally = WindowedTally(log, 10.0, max_keys=100)

    for n in range(10_000):
        storage.incr(f"lookup-{n}", 60)
        verified.add(f"Bearer {stale_token(n)}".encode())
        tally.add("auth.failures", 0.0, source=f"10.0.{n // 256}.{n % 256}")

    assert len(storage.windows) == 100 and len(verified.entries) == 100
    # A full tally writes its counts early rather than grow: every source is told once.
    assert len(tally.open) <= 100 and len(written) + len(tally.open) == 10_000
    assert len(set(written)) == len(written)
    assert storage.get("lookup-9999") == 1 and storage.get("lookup-0") == 0


def test_it_drops_expired_windows_before_evicting_live_ones():
    storage = BoundedMemoryStorage(max_keys=3)
    with time_machine.travel(0, tick=False) as clock:
        storage.incr("old", 1)
        clock.shift(2)
        for key in ("a", "b", "c"):
            storage.incr(key, 60)

    assert list(storage.windows) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "source"),
    [
        ("10.0.0.5", "203.0.113.9", [], "10.0.0.5"),  # no trusted proxy: header ignored
        ("10.0.0.5", "203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
        ("192.0.2.1", "203.0.113.9", ["10.0.0.0/8"], "192.0.2.1"),  # not from our proxy
        # The client wrote the left entry itself; the proxy appended the real one.
        ("10.0.0.5", "1.2.3.4, 203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, 10.0.0.7", ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.5", None, ["10.0.0.0/8"], "10.0.0.5"),
    ],
)
def test_it_honours_x_forwarded_for_only_from_a_trusted_proxy(remote, forwarded, trusted, source):
    assert client_address(remote, forwarded, trusted_networks(trusted)) == source
