import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.models import Agent, AgentState
from monitoring.services import (
    InvalidTransition,
    check_heartbeats,
    miss_deadline,
    overdue_agents,
    record_heartbeat,
    transition,
)
from omoi_console.models import Event


def names():
    return list(Event.objects.order_by("occurred_at").values_list("name", flat=True))


@pytest.mark.django_db(transaction=True)
def test_it_marks_degraded_after_one_miss_and_failed_after_three(registered_agent):
    agent, _ = registered_agent  # interval 5 s, skew 2 s
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        clock.shift(6.9)
        assert check_heartbeats() == 0

        clock.shift(0.2)  # 7.1 s: one interval + skew missed
        assert check_heartbeats() == 1
        agent.refresh_from_db()
        assert agent.state == AgentState.DEGRADED
        assert agent.missed_heartbeats == 1

        clock.shift(5)  # 12.1 s: two missed, still degraded
        check_heartbeats()
        agent.refresh_from_db()
        assert (agent.state, agent.missed_heartbeats) == (AgentState.DEGRADED, 2)

        clock.shift(5)  # 17.1 s: three missed
        check_heartbeats()
        agent.refresh_from_db()
        assert agent.state == AgentState.FAILED
        assert agent.overdue_at is None

    assert "monitor.agent.heartbeat_lost" in names()
    lost = Event.objects.get(name="monitor.agent.heartbeat_lost")
    assert lost.payload["agent_id"] == agent.id and lost.payload["missed"] == 3
    assert len(lost.trace_id) == 32
    reasons = list(agent.transitions.values_list("to_state", "actor"))
    assert reasons[-2:] == [("degraded", "monitor"), ("failed", "monitor")]


@pytest.mark.django_db(transaction=True)
def test_it_recovers_when_heartbeats_resume(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        clock.shift(8)
        check_heartbeats()
        clock.shift(1)
        record_heartbeat(agent, state="idle")

    agent.refresh_from_db()
    assert agent.state == AgentState.IDLE
    recovered = Event.objects.get(name="monitor.agent.recovered")
    assert recovered.payload["from_state"] == "degraded"
    assert recovered.payload["down_seconds"] == pytest.approx(9, abs=0.01)


@pytest.mark.django_db
def test_it_finds_overdue_agents_in_one_query(registered_agent):
    from monitoring.services import register_agent

    for n in range(5):
        register_agent(f"extra-{n}", "worker")
    with CaptureQueriesContext(connection) as queries:
        overdue = list(overdue_agents(timezone.now() + timedelta(minutes=1)))
    assert len(overdue) == 6
    assert len(queries) == 1
    assert "overdue_at" in queries[0]["sql"]


@pytest.mark.django_db
def test_it_refuses_transitions_the_state_machine_does_not_allow(registered_agent):
    agent, _ = registered_agent
    transition(agent, AgentState.TERMINATED, reason="retired", actor="test")
    with pytest.raises(InvalidTransition):
        transition(agent, AgentState.IDLE, reason="revive", actor="test")


@pytest.mark.django_db
def test_it_marks_an_agent_failed_when_it_reports_failure(registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="running")
    record_heartbeat(agent, state="failed")
    agent.refresh_from_db()
    assert agent.state == AgentState.FAILED
    assert agent.transitions.last().reason == "reported failed by the agent"


def silent_fleet(size: int, now, prefix: str = "silent") -> list[Agent]:
    """``size`` running workers whose last heartbeats were in the second before ``now``."""
    agents = []
    for n in range(size):
        last = now - timedelta(milliseconds=n % 1000)
        agent = Agent(
            id=f"{prefix}-{n:05d}",
            role="worker",
            state=AgentState.RUNNING,
            heartbeat_interval=5.0,
            last_heartbeat_at=last,
            created_at=last,
            state_changed_at=last,
        )
        agent.overdue_at = miss_deadline(agent, last, 1)
        agents.append(agent)
    return Agent.objects.bulk_create(agents)


def query_plan(sql: str) -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE monitoring_agent")
            cursor.execute(f"EXPLAIN {sql}")
            return "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("ANALYZE")
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(row[-1] for row in cursor.fetchall())


@pytest.mark.django_db
def test_it_finds_and_claims_the_overdue_by_walking_their_index_alone():
    now = timezone.now()
    silent_fleet(5000, now + timedelta(minutes=5))  # a fleet with nothing due
    silent_fleet(1, now - timedelta(seconds=8), prefix="due")
    with CaptureQueriesContext(connection) as queries:
        assert check_heartbeats(now) == 1
    lookups = [q["sql"] for q in queries if q["sql"].startswith("SELECT")][:2]
    assert all("overdue_at" in sql for sql in lookups)  # the probe, then the claim

    for sql in lookups:
        plan = query_plan(sql)
        # The LIMIT stops early only if the index yields rows in the order asked
        # for: a sort (or a scan of another index) reads every agent on every tick.
        assert "agent_overdue_idx" in plan, plan
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.django_db
def test_it_answers_a_tick_with_nothing_due_with_one_read():
    now = timezone.now()
    silent_fleet(10, now + timedelta(minutes=5))
    with CaptureQueriesContext(connection) as queries:
        assert check_heartbeats(now) == 0
    assert [q["sql"].split()[0] for q in queries] == ["SELECT"]


@pytest.mark.django_db
def test_it_moves_a_mass_outage_in_one_tick_per_stage():
    t0 = timezone.now()
    with time_machine.travel(t0, tick=False) as clock:
        fleet = silent_fleet(1000, t0)
        last = {agent.id: agent.last_heartbeat_at for agent in fleet}

        clock.shift(7.1)  # every agent has missed one heartbeat
        assert check_heartbeats() == 1000
        degraded = Agent.objects.filter(state=AgentState.DEGRADED)
        assert degraded.count() == 1000
        for agent_id, overdue_at in degraded.values_list("id", "overdue_at"):
            assert overdue_at == last[agent_id] + timedelta(seconds=12)

        clock.shift(5)  # two missed: only their deadlines move
        assert check_heartbeats() == 1000
        assert set(Agent.objects.values_list("state", "missed_heartbeats")) == {("degraded", 2)}

        clock.shift(5)  # three missed: all of them fail in the same tick
        assert check_heartbeats() == 1000
        assert check_heartbeats() == 0

    assert set(Agent.objects.values_list("state", "overdue_at")) == {("failed", None)}
    lost = Event.objects.filter(name="monitor.agent.heartbeat_lost")
    assert lost.count() == 1000
    assert {e.payload["agent_id"] for e in lost} == set(last)
    assert len({e.trace_id for e in lost}) == 1000  # one trace per incident
    assert Event.objects.filter(name="monitor.agent.state_changed").count() == 2000


@pytest.mark.postgres
@pytest.mark.django_db
def test_it_spends_as_many_statements_on_a_thousand_failures_as_on_three():
    def statements(size: int, prefix: str) -> int:
        t0 = timezone.now()
        with time_machine.travel(t0, tick=False) as clock:
            silent_fleet(size, t0, prefix)
            clock.shift(17.1)
            with CaptureQueriesContext(connection) as queries:
                assert check_heartbeats() == size
        assert Agent.objects.filter(id__startswith=prefix, state=AgentState.FAILED).count() == size
        return len(queries)

    assert statements(3, "small") == statements(1000, "large")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_leaves_an_agent_whose_heartbeat_is_in_flight_to_the_next_tick():
    t0 = timezone.now()
    silent_fleet(3, t0 - timedelta(seconds=8))  # one heartbeat missed by each
    holds, checked = threading.Event(), threading.Event()
    outcome = {}

    def heartbeat_in_flight():
        # What record_heartbeat does first: lock the agent's row, then work.
        try:
            with transaction.atomic():
                Agent.objects.select_for_update().get(pk="silent-00001")
                holds.set()
                outcome["checked_meanwhile"] = checked.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=heartbeat_in_flight)
    thread.start()
    try:
        assert holds.wait(10)
        outcome["moved"] = check_heartbeats()
        checked.set()
    finally:
        thread.join(30)

    assert outcome["checked_meanwhile"], "the check waited for the heartbeat's lock"
    assert outcome["moved"] == 2
    states = dict(Agent.objects.values_list("id", "state"))
    assert states == {
        "silent-00000": AgentState.DEGRADED,
        "silent-00001": AgentState.RUNNING,
        "silent-00002": AgentState.DEGRADED,
    }
    assert check_heartbeats() == 1  # the next tick takes it
