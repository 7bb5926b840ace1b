"""Simulated agents retry like real clients: backoff with jitter, Retry-After honoured."""

import asyncio
from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import pytest
import time_machine
from django.utils import timezone

from monitoring.models import Agent
from omoi_console import asgi
from omoi_console.top.gameday import GameDay, Options
from omoi_console.top.simulation import SimulatedFleet, register_fleet

pytestmark = pytest.mark.django_db(transaction=True)


class DroppingProxy:
    """A TCP proxy to the server that drops its first ``drops`` connections unanswered."""

    def __init__(self, target_port: int, drops: int):
        self.target_port = target_port
        self.drops = drops
        self.dropped = 0

    async def __aenter__(self):
        self.listener = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self.listener.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.listener.close()

    async def _handle(self, reader, writer):
        if self.dropped < self.drops:
            self.dropped += 1
            await reader.read(65536)  # the request arrives, and then the line goes dead
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))


async def pump(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def one_agent(interval: float = 5.0):
    """An agent whose token the server has not proven yet, as after a server restart
    (registration in the serving process would have proven it)."""
    from monitoring.ingest.cache import ingest_cache

    (agent,) = register_fleet("sim", 1, interval)
    ingest_cache.clear()
    return agent


def test_it_retries_a_dropped_connection_and_recovers(server, seeded):
    agent = one_agent()
    sleeps = []

    async def record(seconds):
        sleeps.append(seconds)

    async def beat():
        async with DroppingProxy(server.port, drops=2) as proxy:
            fleet = SimulatedFleet(proxy.base_url, [agent], sleep=record)
            await fleet.open()
            try:
                await fleet.heartbeat(agent)
            finally:
                await fleet.stop()
        return fleet

    fleet = asyncio.run(beat())

    assert (fleet.transport_errors, fleet.retries, fleet.recovered, fleet.unrecovered) == (
        2,
        2,
        1,
        0,
    )
    assert fleet.responses == Counter({200: 1}) and agent.beats == 1
    assert len(sleeps) == 2 and sum(sleeps) <= agent.interval
    assert Agent.objects.get(pk=agent.id).last_heartbeat_at is not None


def test_it_gives_up_a_heartbeat_once_its_retries_no_longer_fit_the_interval(server, seeded):
    agent = one_agent(interval=0.5)

    async def beat():
        async with DroppingProxy(server.port, drops=1000) as proxy:
            fleet = SimulatedFleet(proxy.base_url, [agent])
            await fleet.open()
            try:
                return fleet, await fleet.heartbeat(agent)
            finally:
                await fleet.stop()

    fleet, _ = asyncio.run(beat())

    assert fleet.unrecovered == 1 and fleet.recovered == 0
    assert fleet.transport_errors == fleet.retries + 1
    assert agent.beats == 0


def test_it_waits_as_long_as_retry_after_asks_before_retrying(server, settings, seeded):
    settings.RATE_LIMIT_PER_TOKEN = "1/2seconds"
    asgi.ingest_limits.configure()
    agent = one_agent()
    sleeps = []

    async def beats(clock):
        async def shift(seconds):
            sleeps.append(seconds)
            clock.shift(timedelta(seconds=seconds))

        fleet = SimulatedFleet(server.base_url, [agent], sleep=shift)
        await fleet.open()
        try:
            for _ in range(3):
                await fleet.heartbeat(agent)
        finally:
            await fleet.stop()
        return fleet

    with time_machine.travel(timezone.now(), tick=True) as clock:
        fleet = asyncio.run(beats(clock))

    # Beat 1 proves the token, beat 2 spends its allowance, beat 3 is told to wait.
    assert fleet.responses == Counter({200: 3, 429: 1})
    # Backoff alone would have retried within 0.05 s and met a second 429.
    assert fleet.retries == 1 and fleet.recovered == 1 and sleeps[0] >= 1
    assert agent.beats == 3


def test_it_holds_off_until_retry_after_when_it_exceeds_the_interval(server, settings, seeded):
    settings.RATE_LIMIT_PER_TOKEN = "1/minute"
    asgi.ingest_limits.configure()
    agent = one_agent()

    async def beats():
        fleet = SimulatedFleet(server.base_url, [agent])
        await fleet.open()
        try:
            for _ in range(3):
                await fleet.heartbeat(agent)
        finally:
            await fleet.stop()
        return fleet

    fleet = asyncio.run(beats())

    assert fleet.responses == Counter({200: 2, 429: 1})
    assert fleet.retries == 0 and fleet.unrecovered == 1
    assert agent.interval < agent.hold_off <= 60


def fleet_counts(**counts):
    base = {"transport_errors": 0, "retries": 0, "recovered": 0, "unrecovered": 0}
    base["transport_error_kinds"] = Counter()
    responses = counts.pop("responses", Counter({200: 40}))
    server_errors = sum(n for status, n in responses.items() if status >= 500)
    return SimpleNamespace(**{**base, **counts}, responses=responses, server_errors=server_errors)


@pytest.mark.parametrize(
    ("fleet", "failure"),
    [
        (fleet_counts(transport_errors=3, retries=3, recovered=3), None),
        (fleet_counts(responses=Counter({200: 40, 429: 2}), retries=2, recovered=2), None),
        (fleet_counts(transport_errors=4, retries=3, unrecovered=1), "1 heartbeats lost"),
        (fleet_counts(responses=Counter({200: 40, 503: 1}), retries=1, recovered=1), "1 server"),
    ],
)
def test_it_fails_a_gameday_only_on_lost_heartbeats_and_server_errors(fleet, failure):
    gameday = GameDay(Options(agents=3, interval=1.0))

    gameday._judge(fleet)

    fleet_failures = [f for f in gameday.report.failures if "stage did not happen" not in f]
    assert [f for f in fleet_failures if failure and failure in f] == fleet_failures
    assert bool(fleet_failures) == bool(failure)
    beats = gameday.report.facts["heartbeats"]
    assert (beats["retries"], beats["recovered"], beats["unrecovered"]) == (
        fleet.retries,
        fleet.recovered,
        fleet.unrecovered,
    )
    assert f"{fleet.retries} retries" in gameday.render()
