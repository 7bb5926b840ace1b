"""Stuck detection on the lean heartbeat path: the batched write keeps the progress
clock and ``stuck_at`` in SQL by the same rule as the transactional path, and the
lean admission keeps a stuck agent stuck while its reports repeat themselves."""

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.utils import timezone

from monitoring.ingest.flush import Beat, flush_heartbeats
from monitoring.models import Agent
from monitoring.services import record_heartbeat, register_agent
from monitoring.stuck import check_stuck
from tests.test_monitor_agent import S, beat_every, events, stick, stored

PROGRESS_FIELDS = (
    "state",
    "current_task",
    "task_progress",
    "progress_changed_at",
    "task_stuck_after",
    "stuck_at",
)
# (seconds later, the report): the same sequence goes down both heartbeat paths.
SEQUENCE = [
    (0, {"state": "running", "task_id": "a", "progress": 0.1}),
    (5, {"state": "running", "task_id": "a", "progress": 0.1}),
    (5, {"state": "running", "task_id": "a", "progress": 0.2, "stuck_after": 120.0}),
    (5, {"state": "running", "task_id": "a", "progress": 0.2}),
    (5, {"state": "running", "task_id": "b", "progress": 0.2}),
    (5, {"state": "running", "task_id": "b", "progress": None}),
    (5, {"state": "running", "task_id": "b", "progress": None, "stuck_after": 45.5}),
    (5, {"state": "idle", "task_id": "", "progress": None}),
    (5, {"state": "running", "task_id": "c", "progress": 0.0}),
]


def lean_beat(agent: Agent, at, report: dict) -> Beat:
    """What the lean path hands its batch writer for ``report``."""
    return Beat(
        agent_id=agent.id,
        at=at,
        state=report["state"],
        served_from=agent.state,
        task_id=report.get("task_id", ""),
        progress=report.get("progress"),
        stuck_after=report.get("stuck_after"),
        default_stuck_after=django_settings.STUCK_AFTER_BY_ROLE[agent.role],
        interval=agent.interval_seconds,
        token_id=0,
        touch_token=False,
        generation=0,
    )


def progress_of(agent_id: str) -> dict:
    return Agent.objects.filter(pk=agent_id).values(*PROGRESS_FIELDS).get()


@pytest.mark.django_db
def test_the_batched_write_follows_progress_exactly_as_the_transactional_path(thresholds):
    full, _ = register_agent("by-django", "worker")
    lean, _ = register_agent("by-batch", "worker")
    # Whole seconds: SQLite's date arithmetic keeps milliseconds.
    start = timezone.now().replace(microsecond=0)
    with time_machine.travel(start, tick=False) as clock:
        for step, (later, report) in enumerate(SEQUENCE):
            clock.shift(later)
            record_heartbeat(full, **report)
            outcome = flush_heartbeats([lean_beat(stored(lean.id), timezone.now(), report)])
            assert outcome.states == {lean.id: report["state"]}
            expected = progress_of(full.id)
            assert progress_of(lean.id) == expected, (step, report)
    # The sequence went through every rule: a clock that moved and one that held,
    # a threshold set, kept and reset, and no deadline while idle.
    assert expected["stuck_at"] == expected["progress_changed_at"] + timedelta(seconds=60)


@pytest.mark.django_db
def test_the_batched_write_leaves_a_stuck_agent_stuck_while_its_heartbeats_repeat(thresholds):
    thresholds.WATCHDOG_MODE = "off"
    agent, _ = register_agent("worker-batch", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        stick(agent, clock)
        clock.shift(5)
        report = {"state": S.STUCK, "task_id": "t-1", "progress": 0.5}
        outcome = flush_heartbeats([lean_beat(stored(agent.id), timezone.now(), report)])

    assert outcome.states == {agent.id: S.STUCK}
    after = stored(agent.id)
    assert (after.state, after.stuck_at) == (S.STUCK, None)
    assert after.last_heartbeat_at == after.overdue_at - timedelta(seconds=7)


def served_beat(server, agent_id: str, token: str, body: dict):
    import httpx

    return httpx.post(
        f"{server.base_url}/api/v1/agents/{agent_id}/heartbeat",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


@pytest.mark.django_db(transaction=True)
def test_the_lean_path_keeps_a_stuck_agent_stuck_and_leaves_its_recovery_to_django(
    server, registered_agent, settings
):
    from monitoring.ingest.asgi import answered
    from tests.conftest import flush_ingest

    settings.WATCHDOG_MODE = "off"
    agent, token = registered_agent
    stalled = {"state": "running", "task_id": "t-1", "progress": 0.25}
    assert served_beat(server, agent.id, token, stalled).json()["state"] == "running"
    flush_ingest(server)
    assert check_stuck(timezone.now() + timedelta(seconds=601)) == 1
    before = answered["lean"]

    still = served_beat(server, agent.id, token, stalled)

    assert still.json()["state"] == "stuck"
    assert answered["lean"] == before + 1  # a liveness write, answered in front of Django
    flush_ingest(server)
    kept = stored(agent.id)
    assert (kept.state, kept.stuck_at) == (S.STUCK, None)
    assert kept.last_heartbeat_at > kept.progress_changed_at

    moved = served_beat(server, agent.id, token, {**stalled, "progress": 0.3})

    assert moved.json()["state"] == "running"
    assert answered["lean"] == before + 1  # leaving STUCK took the transactional path
    back = stored(agent.id)
    assert back.state == S.RUNNING
    assert back.stuck_at == back.progress_changed_at + timedelta(seconds=600)
    last = back.transitions.order_by("-id").first()  # the check ran ahead of the clock
    assert (last.from_state, last.to_state, last.reason) == ("stuck", "running", "progress resumed")
    assert events("monitor.agent.recovered").filter(payload__from_state="stuck").exists()


@pytest.mark.django_db(transaction=True)
def test_the_lean_path_writes_a_tasks_own_threshold_with_its_batch(server, registered_agent):
    from monitoring.ingest.asgi import answered
    from tests.conftest import flush_ingest

    agent, token = registered_agent
    served_beat(server, agent.id, token, {"state": "running", "task_id": "t", "progress": 0.1})
    before = answered["lean"]
    body = {"state": "running", "task_id": "t", "progress": 0.2, "stuck_after": 120}

    assert served_beat(server, agent.id, token, body).status_code == 200

    assert answered["lean"] == before + 1
    flush_ingest(server)
    written = stored(agent.id)
    assert written.task_stuck_after == 120
    assert written.progress_changed_at == written.last_heartbeat_at
    assert abs(
        written.stuck_at - (written.progress_changed_at + timedelta(seconds=120))
    ) < timedelta(milliseconds=1)


@pytest.mark.django_db
def test_the_batched_write_leaves_an_agent_that_stuck_meanwhile_to_the_transactional_rule(
    thresholds,
):
    thresholds.WATCHDOG_MODE = "off"
    agent, _ = register_agent("worker-raced", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running", task_id="t-1", progress=0.5)
        answered_from = stored(agent.id)  # what the lean path's cache still says: running
        beat_every(agent, clock, 60, task_id="t-1", progress=0.5)
        clock.shift(1)
        assert check_stuck() == 1  # the tick moved it after the heartbeat was answered

        report = {"state": "running", "task_id": "t-1", "progress": 0.5}
        outcome = flush_heartbeats([lean_beat(answered_from, timezone.now(), report)])

    assert outcome.states == {agent.id: S.STUCK}
    after = stored(agent.id)
    assert (after.state, after.stuck_at) == (S.STUCK, None)
