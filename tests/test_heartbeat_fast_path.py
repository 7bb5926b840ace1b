"""The lean heartbeat path: what it answers itself, what it leaves to Django, and
that neither a command, a revocation nor a state change is lost between them."""

import httpx
import pytest

from monitoring import services
from monitoring.ingest.asgi import answered
from monitoring.models import Agent, AgentCommand, AgentState, AgentToken, CommandStatus
from tests.conftest import flush_ingest

pytestmark = pytest.mark.django_db(transaction=True)

RUNNING = {"state": "running", "task_id": "task-1", "progress": 0.25}


def beat(server, agent_id: str, token: str, body=None) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/v1/agents/{agent_id}/heartbeat",
        json=body or RUNNING,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def lean_answers() -> int:
    return answered["lean"]


def test_it_answers_a_routine_heartbeat_itself_and_writes_it_with_the_next_flush(
    server, registered_agent
):
    agent, token = registered_agent
    assert beat(server, agent.id, token).json()["state"] == "running"  # spawning -> running
    flush_ingest(server)
    first = Agent.objects.get(pk=agent.id).last_heartbeat_at
    before = lean_answers()

    response = beat(server, agent.id, token, {"state": "running", "task_id": "task-2"})

    assert response.status_code == 200
    assert response.json() == {
        "agent_id": agent.id,
        "state": "running",
        "heartbeat_interval_seconds": 5.0,
        "commands": [],
    }
    assert lean_answers() == before + 1
    flush_ingest(server)
    stored = Agent.objects.get(pk=agent.id)
    assert stored.current_task == "task-2"
    assert stored.last_heartbeat_at > first
    assert stored.overdue_at > stored.last_heartbeat_at


def test_it_writes_a_state_change_before_it_answers(server, registered_agent):
    agent, token = registered_agent
    before = lean_answers()

    response = beat(server, agent.id, token, {"state": "idle"})

    # No flush asked for: the answer waited for the batch to commit.
    assert response.json()["state"] == "idle"
    assert lean_answers() == before + 1
    transitions = Agent.objects.get(pk=agent.id).transitions.values_list("to_state", flat=True)
    assert list(transitions) == ["spawning", "idle"]


def test_it_hands_out_a_command_queued_after_the_agent_was_cached(server, registered_agent):
    agent, token = registered_agent
    beat(server, agent.id, token)
    beat(server, agent.id, token)
    command = services.queue_command(agent, "restart", reason="test", issued_by="test")

    first = beat(server, agent.id, token).json()
    second = beat(server, agent.id, token).json()

    assert [c["id"] for c in first["commands"]] == [command.pk]
    assert first["state"] == "restarting"
    assert second["commands"] == []
    assert AgentCommand.objects.get(pk=command.pk).status == CommandStatus.DELIVERED


def test_it_refuses_a_revoked_token_on_the_next_request(server, registered_agent):
    agent, token = registered_agent
    beat(server, agent.id, token)
    assert beat(server, agent.id, token).status_code == 200

    AgentToken.objects.get(agent=agent).revoke()

    assert beat(server, agent.id, token).status_code == 401


def test_it_refuses_a_terminated_agent_at_once(server, registered_agent):
    agent, token = registered_agent
    beat(server, agent.id, token)
    assert beat(server, agent.id, token).status_code == 200

    services.terminate_agent(agent, reason="retired", actor="test")

    assert beat(server, agent.id, token).status_code == 401


def test_it_sends_what_it_cannot_vouch_for_to_django(server, registered_agent):
    agent, token = registered_agent
    beat(server, agent.id, token)
    before = lean_answers()

    wrong_type = beat(server, agent.id, token, {"state": "running", "progress": "half"})
    failed = beat(server, agent.id, token, {"state": "failed"})

    assert wrong_type.status_code == 422
    assert wrong_type.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in wrong_type.json()["errors"]] == ["progress"]
    assert failed.json()["state"] == "failed"
    assert lean_answers() == before
    assert Agent.objects.get(pk=agent.id).state == AgentState.FAILED


def test_it_recovers_an_agent_whose_state_changed_behind_the_cache(server, registered_agent):
    agent, token = registered_agent
    beat(server, agent.id, token)
    flush_ingest(server)
    # A change the cache never heard of (a bulk update sends no signal).
    Agent.objects.filter(pk=agent.id).update(state=AgentState.DEGRADED)

    assert beat(server, agent.id, token).status_code == 200
    flush_ingest(server)

    stored = Agent.objects.get(pk=agent.id)
    assert stored.state == AgentState.RUNNING
    last = stored.transitions.order_by("-at", "-id").first()
    assert (last.from_state, last.to_state, last.reason) == (
        "degraded",
        "running",
        "heartbeat resumed",
    )


def test_it_verifies_a_token_it_has_not_seen_with_one_query_and_answers_itself(
    server, registered_agent
):
    from monitoring.ingest.cache import ingest_cache

    agent, token = registered_agent
    beat(server, agent.id, token)
    ingest_cache.clear()  # as in a process that just started
    before = lean_answers()

    assert beat(server, agent.id, token).status_code == 200
    assert beat(server, agent.id, token[:-4] + "AAAA").status_code == 401

    assert lean_answers() == before + 1


def test_it_leaves_an_unseen_agent_with_a_command_waiting_to_django(server, registered_agent):
    from monitoring.ingest.cache import ingest_cache

    agent, token = registered_agent
    beat(server, agent.id, token)
    command = services.queue_command(agent, "restart", reason="test", issued_by="test")
    ingest_cache.clear()

    answer = beat(server, agent.id, token).json()

    assert [c["id"] for c in answer["commands"]] == [command.pk]
