"""The agent mirror: heartbeat deadlines per role, stuck detection on both heartbeat
paths, and the registry's metadata (API, admin, bulk sync)."""

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.ingest.cache import ingest_cache, snapshot_of
from monitoring.ingest.flush import Beat, flush_heartbeats
from monitoring.models import Agent, AgentRole, AgentState, role_interval
from monitoring.services import check_heartbeats, record_heartbeat, register_agent
from monitoring.stuck import check_stuck
from omoi_console.models import Event
from tests.test_monitoring import query_plan

S = AgentState


def events(name: str):
    return Event.objects.filter(name=name).order_by("occurred_at")


def stored(agent_id: str) -> Agent:
    return Agent.objects.get(pk=agent_id)


@pytest.fixture
def thresholds(settings):
    """Short, distinct defaults per role, so a test can tell whose it got."""
    settings.HEARTBEAT_INTERVAL_BY_ROLE = {"worker": 5.0, "monitor": 10.0, "scheduler": 30.0}
    settings.STUCK_AFTER_BY_ROLE = {"worker": 60.0, "monitor": 120.0, "scheduler": 300.0}
    return settings


# --- heartbeat deadlines per role ------------------------------------------------------


def test_it_knows_an_interval_and_a_stuck_threshold_for_every_role():
    assert set(django_settings.AGENT_ROLES) == set(AgentRole.values)
    assert set(django_settings.HEARTBEAT_INTERVAL_BY_ROLE) == set(AgentRole.values)
    assert set(django_settings.STUCK_AFTER_BY_ROLE) == set(AgentRole.values)


@pytest.mark.django_db
@pytest.mark.parametrize(("role", "interval"), [("worker", 5), ("monitor", 10), ("scheduler", 30)])
def test_it_applies_the_roles_interval_to_the_deadline_rule(thresholds, role, interval):
    agent, _ = register_agent(f"{role}-1", role)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        clock.shift(interval + 2 - 0.1)  # last heartbeat + interval + 2 s skew
        assert check_heartbeats() == 0

        clock.shift(0.2)
        assert check_heartbeats() == 1
        assert (stored(agent.id).state, stored(agent.id).missed_heartbeats) == (S.DEGRADED, 1)

        clock.shift(interval)  # two misses: still degraded
        check_heartbeats()
        assert (stored(agent.id).state, stored(agent.id).missed_heartbeats) == (S.DEGRADED, 2)

        clock.shift(interval)  # three misses
        check_heartbeats()
        assert stored(agent.id).state == S.FAILED


@pytest.mark.django_db
def test_it_prefers_the_agents_own_interval_to_its_roles(thresholds):
    agent, _ = register_agent("sched-own", "scheduler", heartbeat_interval=2.0)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        result = record_heartbeat(agent, state="idle")
        assert result.agent.interval_seconds == 2.0
        clock.shift(4.1)
        assert check_heartbeats() == 1
    assert stored(agent.id).state == S.DEGRADED


@pytest.mark.django_db
def test_it_tells_each_agent_its_roles_interval(api, thresholds, make_operator):
    _, admin = make_operator("admin")
    _, token = register_agent("mon-1", "monitor")
    response = api.post(
        "/api/v1/agents/mon-1/heartbeat",
        {"state": "idle"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.json()["heartbeat_interval_seconds"] == 10.0
    listed = api.get("/api/v1/agents/mon-1", HTTP_AUTHORIZATION=f"Bearer {admin}").json()
    assert listed["heartbeat_interval_seconds"] == 10.0
    assert role_interval("no-such-role") == django_settings.HEARTBEAT_INTERVAL_SECONDS


def test_it_reads_role_intervals_and_thresholds_from_the_environment(tmp_path):
    from tests.test_settings import load_settings

    show = "settings.HEARTBEAT_INTERVAL_BY_ROLE, settings.STUCK_AFTER_BY_ROLE"
    result = load_settings(
        tmp_path,
        show=show,
        OMOI_HEARTBEAT_INTERVAL="4",
        OMOI_HEARTBEAT_INTERVAL_SCHEDULER="30",
        OMOI_STUCK_AFTER_WORKER="900",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("} {") == [
        "{'worker': 4.0, 'monitor': 4.0, 'scheduler': 30.0",
        "'worker': 900.0, 'monitor': 600.0, 'scheduler': 600.0}\n",
    ]

    refused = load_settings(tmp_path, show=show, OMOI_STUCK_AFTER_MONITOR="1")
    assert refused.returncode != 0
    assert "OMOI_STUCK_AFTER_MONITOR must be between 10 and 86400 seconds" in refused.stderr


# --- stuck detection: the transactional path and the tick --------------------------------


def beat_every(agent, clock, seconds: float, *, every: float = 5.0, **report):
    """Heartbeat every ``every`` seconds for ``seconds``, reporting the same each time."""
    for _ in range(int(seconds // every)):
        clock.shift(every)
        record_heartbeat(agent, **{"state": "running", **report})


@pytest.mark.django_db(transaction=True)
def test_it_marks_a_heartbeating_agent_stuck_when_its_progress_stalls(thresholds):
    thresholds.WATCHDOG_MODE = "off"  # the watchdog's answer is tested on its own below
    agent, _ = register_agent("worker-stalls", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        started = timezone.now()
        record_heartbeat(agent, state="running", task_id="t-1", progress=0.5)
        assert stored(agent.id).stuck_at == started + timedelta(seconds=60)

        beat_every(agent, clock, 55, task_id="t-1", progress=0.5)  # alive, not working
        clock.shift(4.9)  # 59.9 s without progress
        assert check_stuck() == 0
        assert check_heartbeats() == 0

        clock.shift(0.2)
        assert check_stuck() == 1
        assert check_stuck() == 0  # moved once

        now = stored(agent.id)
        assert now.state == S.STUCK
        assert now.stuck_at is None
        assert now.progress_changed_at == started

        # Still heartbeating, still no progress: it stays stuck, and is not overdue.
        beat_every(agent, clock, 30, task_id="t-1", progress=0.5)
        assert check_heartbeats() == 0
        assert stored(agent.id).state == S.STUCK

    stuck = events("monitor.agent.stuck").get()
    assert stuck.payload == {
        "agent_id": agent.id,
        "role": "worker",
        "task_id": "t-1",
        "progress": 0.5,
        "progress_changed_at": stuck.payload["progress_changed_at"],
        "stuck_after": 60.0,
        "seconds_without_progress": pytest.approx(60.1),
    }
    assert stuck.payload["progress_changed_at"].startswith(started.isoformat()[:19])
    assert len(stuck.trace_id) == 32
    last = stored(agent.id).transitions.order_by("-at", "-id").first()
    assert (last.from_state, last.to_state, last.actor) == ("running", "stuck", "monitor")
    assert last.reason == "no progress for 60s"


@pytest.mark.django_db
def test_it_never_marks_an_agent_stuck_while_its_progress_moves(thresholds):
    agent, _ = register_agent("worker-moves", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for step in range(200):  # 1,000 s of a long task, a little progress each time
            record_heartbeat(agent, state="running", task_id="long", progress=step / 1000)
            clock.shift(5)
            assert check_stuck() == 0
    assert stored(agent.id).state == S.RUNNING
    assert not events("monitor.agent.stuck").exists()


@pytest.mark.django_db
def test_it_does_not_watch_idle_agents_or_running_ones_without_a_task(thresholds):
    idle, _ = register_agent("worker-idle", "worker")
    taskless, _ = register_agent("worker-taskless", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(30):
            record_heartbeat(idle, state="idle", task_id="t-9", progress=0.1)
            record_heartbeat(taskless, state="running")
            clock.shift(5)
        assert check_stuck() == 0
    assert Agent.objects.filter(stuck_at__isnull=False).count() == 0
    assert {stored(idle.id).state, stored(taskless.id).state} == {S.IDLE, S.RUNNING}


@pytest.mark.django_db
def test_it_keeps_a_tasks_own_threshold_until_the_task_changes(thresholds):
    agent, _ = register_agent("worker-own", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running", task_id="big", progress=0.1, stuck_after=300)
        clock.shift(5)
        record_heartbeat(agent, state="running", task_id="big", progress=0.1)  # says no more
        assert stored(agent.id).task_stuck_after == 300
        assert stored(agent.id).stuck_at == stored(agent.id).progress_changed_at + timedelta(
            seconds=300
        )
        beat_every(agent, clock, 120, task_id="big", progress=0.1)
        assert check_stuck() == 0  # past the role's 60 s, inside the task's 300 s

        record_heartbeat(agent, state="running", task_id="small", progress=0.0)
        assert stored(agent.id).task_stuck_after is None  # a new task: the role's default
        assert stored(agent.id).stuck_after_seconds == 60
        beat_every(agent, clock, 65, task_id="small", progress=0.0)
        assert check_stuck() == 1
    assert stored(agent.id).state == S.STUCK


def stick(agent, clock, **report):
    """Run a task without progress until the tick declares the agent stuck."""
    report = {"task_id": "t-1", "progress": 0.5, **report}
    record_heartbeat(agent, state="running", **report)
    beat_every(agent, clock, 60, **report)
    clock.shift(1)
    assert check_stuck() == 1
    assert stored(agent.id).state == S.STUCK


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("report", "to_state", "reason"),
    [
        ({"state": "running", "task_id": "t-1", "progress": 0.6}, S.RUNNING, "progress resumed"),
        ({"state": "running", "task_id": "t-2", "progress": 0.5}, S.RUNNING, "progress resumed"),
        ({"state": "running", "task_id": "t-1", "progress": None}, S.RUNNING, "progress resumed"),
        ({"state": "idle"}, S.IDLE, "task left"),
    ],
)
def test_it_brings_a_stuck_agent_back_when_its_task_or_progress_changes(
    thresholds, report, to_state, reason
):
    thresholds.WATCHDOG_MODE = "off"
    agent, _ = register_agent("worker-back", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        stick(agent, clock)
        clock.shift(3)
        result = record_heartbeat(agent, **report)

    assert result.agent.state == to_state
    back = stored(agent.id)
    assert back.state == to_state and back.unhealthy_since is None
    last = back.transitions.order_by("-at", "-id").first()
    assert (last.from_state, last.to_state, last.reason) == ("stuck", to_state, reason)
    recovered = events("monitor.agent.recovered").get()
    assert recovered.payload["from_state"] == "stuck"
    if to_state == S.RUNNING:
        # The stuck clock starts again from this heartbeat.
        assert back.stuck_at == back.last_heartbeat_at + timedelta(seconds=60)
    else:
        assert back.stuck_at is None


@pytest.mark.django_db
def test_it_takes_a_silent_stuck_agent_on_to_degraded_and_failed(thresholds):
    agent, _ = register_agent("worker-silent", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        stick(agent, clock)
        clock.shift(6.5)  # 7.5 s after the last heartbeat
        assert check_heartbeats() == 1
        assert stored(agent.id).state == S.DEGRADED
        clock.shift(10)
        check_heartbeats()
        assert stored(agent.id).state == S.FAILED
    moves = list(stored(agent.id).transitions.values_list("to_state", flat=True))
    assert moves[-3:] == ["stuck", "degraded", "failed"]


@pytest.mark.django_db
def test_a_stuck_agent_that_resumes_heartbeats_without_progress_is_stuck_again(thresholds):
    agent, _ = register_agent("worker-again", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        stick(agent, clock)
        clock.shift(8)
        check_heartbeats()
        assert stored(agent.id).state == S.DEGRADED
        record_heartbeat(agent, state="running", task_id="t-1", progress=0.5)
        # Back to running by its heartbeat, but its task has not moved for 70 s.
        assert stored(agent.id).state == S.RUNNING
        assert check_stuck() == 1
    assert stored(agent.id).state == S.STUCK


def fleet_with_deadlines(size: int, stuck_at, prefix: str) -> list[Agent]:
    now = timezone.now()
    return Agent.objects.bulk_create(
        Agent(
            id=f"{prefix}-{n:05d}",
            role="worker",
            state=S.RUNNING,
            current_task="t",
            task_progress=0.5,
            last_heartbeat_at=now,
            overdue_at=now + timedelta(seconds=7),
            progress_changed_at=stuck_at - timedelta(seconds=600),
            stuck_at=stuck_at,
        )
        for n in range(size)
    )


@pytest.mark.django_db
def test_it_finds_and_claims_the_stuck_by_walking_their_index_alone():
    now = timezone.now()
    fleet_with_deadlines(5000, now + timedelta(minutes=5), "busy")  # nothing due
    fleet_with_deadlines(1, now - timedelta(seconds=1), "due")
    with CaptureQueriesContext(connection) as queries:
        assert check_stuck(now) == 1
    lookups = [q["sql"] for q in queries if q["sql"].startswith("SELECT")][:2]
    assert all("stuck_at" in sql for sql in lookups)  # the probe, then the claim
    for sql in lookups:
        plan = query_plan(sql)
        assert "agent_stuck_idx" in plan, plan
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.django_db
def test_it_answers_a_stuck_tick_with_nothing_due_with_one_read():
    fleet_with_deadlines(20, timezone.now() + timedelta(minutes=5), "busy")
    with CaptureQueriesContext(connection) as queries:
        assert check_stuck() == 0
    assert [q["sql"].split()[0] for q in queries] == ["SELECT"]


@pytest.mark.postgres  # SQLite binds few parameters a statement: it chunks
@pytest.mark.django_db
def test_it_spends_as_many_statements_on_a_thousand_stuck_agents_as_on_three():
    def statements(size: int, prefix: str) -> int:
        fleet_with_deadlines(size, timezone.now() - timedelta(seconds=1), prefix)
        with CaptureQueriesContext(connection) as queries:
            assert check_stuck() == size
        assert Agent.objects.filter(id__startswith=prefix, state=S.STUCK).count() == size
        return len(queries)

    assert statements(3, "small") == statements(1000, "large")
    assert events("monitor.agent.stuck").count() == 1003


@pytest.mark.django_db
def test_it_only_clears_a_stale_deadline_of_an_agent_that_no_longer_runs():
    fleet_with_deadlines(1, timezone.now() - timedelta(seconds=1), "gone")
    Agent.objects.update(state=S.IDLE)  # moved without the transition functions
    assert check_stuck() == 1
    assert stored("gone-00000").state == S.IDLE
    assert stored("gone-00000").stuck_at is None
    assert check_stuck() == 0
    assert not events("monitor.agent.stuck").exists()


@pytest.mark.django_db(transaction=True)
def test_the_watchdog_restarts_a_stuck_worker_as_it_would_a_failed_one(thresholds, seeded):
    from monitoring.models import AgentCommand, CommandStatus
    from watchdog.models import ActionStatus, RemediationAction

    agent, _ = register_agent("worker-wedged", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        stick(agent, clock)
        action = RemediationAction.objects.get()
        assert (action.status, action.before_state) == (ActionStatus.STARTED, S.STUCK)

        clock.shift(2)
        handed = record_heartbeat(agent, state="running", task_id="t-1", progress=0.5)
        assert [c.kind for c in handed.commands] == ["restart"]
        assert handed.agent.state == S.RESTARTING

        clock.shift(2)
        record_heartbeat(agent, state="idle", acks=[handed.commands[0].pk])

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert AgentCommand.objects.get().status == CommandStatus.ACKED
    stuck = events("monitor.agent.stuck").get()
    started = events("watchdog.action.started").get()
    assert started.trace_id == stuck.trace_id  # one trace from the stall to the restart


# --- stuck detection on the lean path ----------------------------------------------------

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


# --- the registry: API ---------------------------------------------------------------------

REGISTERED = {
    "id": "worker-77",
    "role": "worker",
    "name": "Builder 77",
    "capabilities": ["python", "lang:go", "gpu"],
    "owner": "team-infra",
    "version": "1.4.2+build.7",
    "labels": {"zone": "a"},
}


def patch(api, agent_id: str, body, token: str, content_type="application/json"):
    import json

    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return api.patch(
        f"/api/v1/agents/{agent_id}",
        data=raw,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


@pytest.mark.django_db
def test_it_registers_an_agent_with_its_registry_metadata(api, make_operator):
    _, admin = make_operator("admin")

    response = api.post(
        "/api/v1/agents", REGISTERED, format="json", HTTP_AUTHORIZATION=f"Bearer {admin}"
    )

    assert response.status_code == 201, response.content
    shown = api.get("/api/v1/agents/worker-77", HTTP_AUTHORIZATION=f"Bearer {admin}").json()
    assert {key: shown[key] for key in REGISTERED} == REGISTERED
    assert shown["state"] == "spawning"
    assert shown["stuck_after_seconds"] == django_settings.STUCK_AFTER_BY_ROLE["worker"]


@pytest.mark.django_db
def test_it_edits_metadata_and_moves_the_deadlines_a_new_role_implies(
    api, make_operator, thresholds, django_capture_on_commit_callbacks
):
    _, admin = make_operator("admin")
    agent, _ = register_agent("edit-me", "worker", name="old")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running", task_id="t", progress=0.1)
        beat_at = timezone.now()
        generation = ingest_cache.generation(agent.id)
        ingest_cache.update_state(agent.id, snapshot_of(stored(agent.id)), generation)
        assert ingest_cache.agent(agent.id).interval == 5.0
        clock.shift(1)
        body = {"name": "Night scheduler", "role": "scheduler", "capabilities": ["cron"]}

        with django_capture_on_commit_callbacks(execute=True):
            response = patch(api, agent.id, body, admin)

    assert response.status_code == 200, response.content
    assert {key: response.json()[key] for key in body} == body
    edited = stored(agent.id)
    assert (edited.name, edited.role, edited.capabilities) == (
        "Night scheduler",
        "scheduler",
        ["cron"],
    )
    assert edited.state == S.RUNNING  # metadata only
    assert edited.overdue_at == beat_at + timedelta(seconds=30 + 2)
    assert edited.stuck_at == beat_at + timedelta(seconds=300)
    assert ingest_cache.agent(agent.id) is None  # the lean path reads it again


@pytest.mark.django_db
def test_it_keeps_what_a_patch_leaves_out(api, make_operator):
    _, admin = make_operator("admin")
    register_agent("keep-me", "monitor", name="Keeper", owner="ops", version="2.0")

    response = patch(api, "keep-me", {"version": "2.1"}, admin)

    assert response.status_code == 200
    kept = stored("keep-me")
    assert (kept.name, kept.owner, kept.version, kept.role) == ("Keeper", "ops", "2.1", "monitor")


BAD_EDITS = [
    ({"state": "idle"}, "state"),
    ({"last_heartbeat_at": "2026-01-01T00:00:00Z"}, "last_heartbeat_at"),
    ({"id": "renamed"}, "id"),
    ({"capabilities": "python"}, "capabilities"),
    ({"capabilities": ["Python"]}, "capabilities"),
    ({"capabilities": ["python", "python"]}, "capabilities"),
    ({"capabilities": ["x" * 49]}, "capabilities"),
    ({"capabilities": [1]}, "capabilities"),
    ({"capabilities": [f"c{i}" for i in range(33)]}, "capabilities"),
    ({"capabilities": ["has space"]}, "capabilities"),
    ({"version": "1.0 beta"}, "version"),
    ({"version": "v" * 65}, "version"),
    ({"name": "n" * 101}, "name"),
    ({"name": 7}, "name"),
    ({"role": "pilot"}, "role"),
    ({"labels": {"": "x"}}, "labels"),
    ({"heartbeat_interval": 0.1}, "heartbeat_interval"),
    ({"heartbeat_interval": "5"}, "heartbeat_interval"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), BAD_EDITS)
def test_it_refuses_a_bad_edit_with_422_and_stores_nothing(api, make_operator, body, field):
    _, admin = make_operator("admin")
    register_agent("guarded", "worker", name="Guarded", capabilities=["python"])
    before = Agent.objects.filter(pk="guarded").values().get()

    response = patch(api, "guarded", {"owner": "someone-else", **body}, admin)

    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in {e["field"].split("[")[0].split(".")[0] for e in response.json()["errors"]}
    assert Agent.objects.filter(pk="guarded").values().get() == before


@pytest.mark.django_db
def test_it_answers_every_other_refusal_of_an_edit_with_its_own_code(
    api, make_operator, registered_agent
):
    agent, agent_token = registered_agent
    _, admin = make_operator("admin")
    _, viewer = make_operator("viewer", username="v")
    _, operator = make_operator("operator", username="o")
    before = Agent.objects.filter(pk=agent.id).values().get()
    edit = {"name": "x"}

    assert api.patch(f"/api/v1/agents/{agent.id}", edit, format="json").status_code == 401
    for token in (viewer, operator, agent_token):
        assert patch(api, agent.id, edit, token).status_code == 403
    assert patch(api, "no-such-agent", edit, admin).status_code == 404
    put = api.put(
        f"/api/v1/agents/{agent.id}", edit, format="json", HTTP_AUTHORIZATION=f"Bearer {admin}"
    )
    assert put.status_code == 405
    assert patch(api, agent.id, '{"name": ', admin).status_code == 400
    assert patch(api, agent.id, {"owner": "a\u0000b"}, admin).status_code == 400
    assert patch(api, agent.id, "name=x", admin, content_type="text/plain").status_code == 415
    huge = {"name": "x", "owner": "o" * (2 * 1024 * 1024)}
    assert patch(api, agent.id, huge, admin).status_code == 413
    assert patch(api, agent.id, "[1, 2]", admin).status_code == 422
    assert Agent.objects.filter(pk=agent.id).values().get() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"capabilities": ["GPU"]}, "capabilities"),
        ({"version": "not a version"}, "version"),
        ({"state": "running"}, "state"),
        ({"owner": 5}, "owner"),
    ],
)
def test_it_refuses_a_registration_with_bad_metadata(api, make_operator, extra, field):
    _, admin = make_operator("admin")

    response = api.post(
        "/api/v1/agents",
        {"id": "w-1", "role": "worker", **extra},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {admin}",
    )

    assert response.status_code == 422
    assert [e["field"].split("[")[0] for e in response.json()["errors"]] == [field]
    assert not Agent.objects.exists()


# --- the registry: admin ----------------------------------------------------------------


@pytest.mark.django_db
def test_admins_edit_registry_metadata_in_the_admin(client, make_operator, thresholds):
    from django.urls import reverse

    user, _ = make_operator("admin")
    client.force_login(user)
    agent, _ = register_agent("admin-edit", "worker")
    url = reverse("admin:monitoring_agent_change", args=[agent.id])
    form = {
        "name": "Edited",
        "role": "monitor",
        "capabilities": '["python", "gpu"]',
        "owner": "ops",
        "version": "3.0",
        "labels": "{}",
        "heartbeat_interval": "",
        "transitions-TOTAL_FORMS": "0",
        "transitions-INITIAL_FORMS": "0",
    }

    refused = client.post(url, {**form, "capabilities": '["GPU"]'})
    assert refused.status_code == 200  # the form again, with the error
    assert "capabilities are 1-48 lowercase letters" in refused.content.decode()
    assert stored(agent.id).capabilities == []

    saved = client.post(url, form)
    assert saved.status_code == 302
    edited = stored(agent.id)
    assert (edited.name, edited.role, edited.capabilities) == (
        "Edited",
        "monitor",
        ["python", "gpu"],
    )
    assert edited.overdue_at == edited.created_at + timedelta(seconds=10 + 2)
    assert edited.state == S.SPAWNING


# --- the registry: bulk sync -----------------------------------------------------------


@pytest.mark.django_db
def test_sync_creates_and_updates_metadata_and_never_state(django_capture_on_commit_callbacks):
    from monitoring.models import AgentToken
    from monitoring.registry import sync_registry

    running, _ = register_agent("sync-running", "worker", owner="old")
    record_heartbeat(running, state="running", task_id="t", progress=0.5)
    register_agent("sync-same", "monitor", version="1.0")
    before = Agent.objects.filter(pk="sync-running").values().get()
    records = [
        {"id": "sync-running", "owner": "team-b", "capabilities": ["python"]},
        {"id": "sync-same", "version": "1.0"},
        {"id": "sync-new", "role": "scheduler", "name": "New", "labels": {"zone": "b"}},
    ]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = sync_registry(records, actor="registry:test")

    assert (result.created, result.updated, result.unchanged) == (
        ["sync-new"],
        ["sync-running"],
        ["sync-same"],
    )
    after = Agent.objects.filter(pk="sync-running").values().get()
    changed = {key for key in after if after[key] != before[key]}
    assert changed == {"owner", "capabilities"}
    assert after["state"] == S.RUNNING
    new = stored("sync-new")
    assert (new.state, new.name, new.labels) == (S.SPAWNING, "New", {"zone": "b"})
    assert new.overdue_at == new.created_at + timedelta(seconds=5 + 2)
    assert list(new.transitions.values_list("to_state", "actor")) == [("spawning", "registry:test")]
    assert not AgentToken.objects.filter(agent=new).exists()
    assert len(callbacks) == 1  # one invalidation of the updated agents


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad", "key", "says"),
    [
        ({"id": "sync-s", "state": "idle"}, "sync-s", "state: Not a registry field"),
        ({"id": "sync-b", "capabilities": ["BAD"]}, "sync-b", "capabilities:"),
        ({"id": "sync-c", "name": "no role"}, "sync-c", "role:"),
        ({"id": "Bad Id", "role": "worker"}, "Bad Id", "id:"),
        ({"id": "sync-a", "role": "worker"}, "sync-a", "more than once"),
        ({"role": "worker"}, "records[1]", "needs an agent id"),
        ("sync-a", "records[1]", "must be a mapping"),
    ],
)
def test_sync_stores_nothing_when_any_record_is_invalid(bad, key, says):
    from django.core.exceptions import ValidationError

    from monitoring.registry import sync_registry

    register_agent("sync-a", "worker", owner="old")
    before = list(Agent.objects.values())

    with pytest.raises(ValidationError) as refused:
        sync_registry(
            [{"id": "sync-a", "owner": "new"}, bad, {"id": "sync-z", "role": "worker"}],
            actor="test",
        )

    messages = refused.value.message_dict
    assert list(messages) == [key]
    assert says in " ".join(messages[key])
    assert list(Agent.objects.values()) == before


@pytest.mark.django_db
def test_sync_moves_deadlines_when_a_role_changes_the_interval(thresholds):
    from monitoring.registry import sync_registry

    agent, _ = register_agent("sync-role", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        beat_at = timezone.now()
        sync_registry([{"id": agent.id, "role": "scheduler"}], actor="test")
        clock.shift(7.5)  # overdue for a worker, not for a scheduler
        assert check_heartbeats() == 0
    assert stored(agent.id).overdue_at == beat_at + timedelta(seconds=32)


@pytest.mark.postgres
@pytest.mark.django_db
def test_sync_spends_as_many_statements_on_three_hundred_records_as_on_three():
    from monitoring.registry import sync_registry

    def statements(size: int, prefix: str) -> int:
        for n in range(size):
            register_agent(f"{prefix}-old-{n}", "worker")
        records = [{"id": f"{prefix}-old-{n}", "owner": "o"} for n in range(size)]
        records += [{"id": f"{prefix}-new-{n}", "role": "worker"} for n in range(size)]
        with CaptureQueriesContext(connection) as queries:
            result = sync_registry(records, actor="test")
        assert (len(result.created), len(result.updated)) == (size, size)
        return len(queries)

    assert statements(3, "small") == statements(300, "large")


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


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_stuck_tick_leaves_an_agent_whose_heartbeat_is_in_flight_to_the_next_tick():
    import threading

    from django.db import connections, transaction

    fleet_with_deadlines(3, timezone.now() - timedelta(seconds=1), "stalled")
    holds, checked = threading.Event(), threading.Event()
    outcome = {}

    def heartbeat_in_flight():
        try:
            with transaction.atomic():
                Agent.objects.select_for_update().get(pk="stalled-00001")
                holds.set()
                outcome["checked_meanwhile"] = checked.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=heartbeat_in_flight)
    thread.start()
    try:
        assert holds.wait(10)
        outcome["moved"] = check_stuck()
        checked.set()
    finally:
        thread.join(30)

    assert outcome["checked_meanwhile"], "the tick waited for the heartbeat's lock"
    assert outcome["moved"] == 2
    assert stored("stalled-00001").state == S.RUNNING
    assert check_stuck() == 1


@pytest.mark.django_db
def test_only_a_running_agent_can_become_stuck():
    from monitoring.services import InvalidTransition, transition

    idle, _ = register_agent("sm-idle", "worker")
    transition(idle, S.IDLE, reason="setup", actor="test")
    with pytest.raises(InvalidTransition):
        transition(idle, S.STUCK, reason="no progress", actor="test")

    running, _ = register_agent("sm-running", "worker")
    transition(running, S.RUNNING, reason="setup", actor="test")
    transition(running, S.STUCK, reason="no progress", actor="test")
    for to_state in (S.RESTARTING, S.QUARANTINED):  # the watchdog's and an operator's moves
        agent, _ = register_agent(f"sm-{to_state}", "worker")
        for step in (S.RUNNING, S.STUCK, to_state):
            transition(agent, step, reason="setup", actor="test")
        assert stored(agent.id).state == to_state
    assert stored(running.id).unhealthy_since is not None  # stuck counts as unhealthy
