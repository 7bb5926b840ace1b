from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.models import AgentState
from monitoring.services import (
    InvalidTransition,
    check_heartbeats,
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
