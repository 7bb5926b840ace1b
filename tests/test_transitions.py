"""transition_many: many agents' state changes in a handful of statements."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring.models import Agent, AgentState, AgentTransition
from monitoring.services import register_agent, transition
from monitoring.transitions import InvalidTransition, Move, transition_many
from omoi_console.models import Event

S = AgentState


def agent_in(agent_id: str, *states: str) -> Agent:
    agent, _ = register_agent(agent_id, "worker")
    for state in states:
        transition(agent, state, reason="setup", actor="test")
    return Agent.objects.get(pk=agent_id)


def statement_kinds(queries) -> list[str]:
    kinds = [q["sql"].split()[0] for q in queries]
    return [kind for kind in kinds if kind in ("INSERT", "UPDATE", "DELETE")]


@pytest.mark.django_db
def test_it_moves_many_agents_with_one_statement_per_table():
    running = agent_in("a-running", S.RUNNING)
    degraded = agent_in("b-degraded", S.RUNNING, S.DEGRADED)
    spawning = agent_in("c-spawning")
    Event.objects.all().delete()
    moves = [
        Move(running, S.DEGRADED, "1 heartbeat(s) missed", "monitor"),
        Move(degraded, S.RUNNING, "heartbeat resumed", "agent:b-degraded"),
        Move(spawning, S.FAILED, "3 heartbeat(s) missed", "monitor", ("ab" * 16, "cd" * 8)),
    ]

    with CaptureQueriesContext(connection) as queries:
        rows = transition_many(moves)

    # agents, transition rows, events
    assert statement_kinds(queries) == ["UPDATE", "INSERT", "INSERT"]
    assert [(r.agent_id, r.from_state, r.to_state) for r in rows] == [
        ("a-running", S.RUNNING, S.DEGRADED),
        ("b-degraded", S.DEGRADED, S.RUNNING),
        ("c-spawning", S.SPAWNING, S.FAILED),
    ]
    stored = {a.id: a for a in Agent.objects.all()}
    for agent in (running, degraded, spawning):
        assert stored[agent.id].state == agent.state  # instances follow the database
        assert stored[agent.id].unhealthy_since == agent.unhealthy_since
        assert stored[agent.id].overdue_at == agent.overdue_at
    assert stored["a-running"].unhealthy_since is not None
    assert stored["b-degraded"].unhealthy_since is None
    assert stored["c-spawning"].overdue_at is None  # a failed agent owes no heartbeat

    events = {(e.name, e.payload["agent_id"]): e for e in Event.objects.all()}
    assert len(events) == 4
    recovered = events[("monitor.agent.recovered", "b-degraded")]
    assert (
        recovered.payload["from_state"] == S.DEGRADED and recovered.key == f"recovered:{rows[1].pk}"
    )
    changed = events[("monitor.agent.state_changed", "c-spawning")]
    assert changed.payload["reason"] == "3 heartbeat(s) missed"
    assert (changed.trace_id, changed.span_id) == ("ab" * 16, "cd" * 8)
    assert changed.key == f"state_changed:{rows[2].pk}"


@pytest.mark.django_db
def test_it_skips_an_agent_whose_state_changed_after_it_was_read():
    stale = agent_in("a-stale", S.RUNNING)
    fresh = agent_in("b-fresh", S.RUNNING)
    # Meanwhile the agent reports itself failed through another path.
    transition(Agent.objects.get(pk="a-stale"), S.FAILED, reason="reported", actor="agent:a-stale")
    before = Event.objects.count()

    rows = transition_many(
        [
            Move(stale, S.DEGRADED, "1 heartbeat(s) missed", "monitor"),
            Move(fresh, S.DEGRADED, "1 heartbeat(s) missed", "monitor"),
        ]
    )

    assert [r.agent_id for r in rows] == ["b-fresh"]
    assert Agent.objects.get(pk="a-stale").state == S.FAILED
    assert stale.state == S.RUNNING  # not applied, so not mirrored either
    assert not AgentTransition.objects.filter(agent_id="a-stale", to_state=S.DEGRADED).exists()
    assert Event.objects.count() == before + 1


@pytest.mark.django_db
def test_it_refuses_a_move_the_state_machine_forbids_and_writes_nothing():
    running = agent_in("a-running", S.RUNNING)
    gone = agent_in("b-gone", S.TERMINATED)
    transitions, events = AgentTransition.objects.count(), Event.objects.count()

    with pytest.raises(InvalidTransition, match="b-gone: terminated -> idle"):
        transition_many(
            [
                Move(running, S.DEGRADED, "1 heartbeat(s) missed", "monitor"),
                Move(gone, S.IDLE, "revive", "test"),
            ]
        )
    with pytest.raises(ValueError, match="more than one move for a-running"):
        transition_many([Move(running, S.IDLE, "x", "test"), Move(running, S.FAILED, "y", "test")])

    assert Agent.objects.get(pk="a-running").state == S.RUNNING
    assert (AgentTransition.objects.count(), Event.objects.count()) == (transitions, events)


@pytest.mark.django_db
def test_it_takes_rows_as_well_as_instances():
    agent_in("a-one", S.RUNNING)
    agent_in("b-two", S.IDLE)
    rows = Agent.objects.values("id", "role", "state", "unhealthy_since", "last_heartbeat_at")

    applied = transition_many([Move(row, S.QUARANTINED, "isolated", "operator") for row in rows])

    assert len(applied) == 2
    assert set(Agent.objects.values_list("state", flat=True)) == {S.QUARANTINED}
    assert transition_many([]) == []
