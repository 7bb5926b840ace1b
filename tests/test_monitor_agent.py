"""The agent mirror's clocks: heartbeat deadlines per role, and stuck detection ("alive
but not working") on the transactional heartbeat path and in its set-based tick.
The lean path's side is in test_stuck_ingest.py, the registry's in test_agent_registry.py."""

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

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
        assert (action.status, action.before_state) == (ActionStatus.VERIFYING, S.STUCK)

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
