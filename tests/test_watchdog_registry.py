import logging

import pytest

from monitoring.models import AgentCommand, AgentState, CommandStatus
from monitoring.services import record_heartbeat, transition
from omoi_console.models import Event
from tests.conftest import bearer, free_port
from tests.delivery_receivers import Answer, HttpReceiver
from watchdog import services
from watchdog.adapters import AdapterError, HttpRegistryAdapter, get_adapter
from watchdog.models import ActionStatus, RemediationAction, Trigger

TOKEN = "registry-token-0123456789"


@pytest.fixture
def registry(settings):
    with HttpReceiver() as receiver:
        settings.WATCHDOG_ADAPTER = "http"
        settings.REGISTRY_URL = receiver.url
        settings.REGISTRY_TOKEN = TOKEN
        settings.REGISTRY_TIMEOUT_SECONDS = 0.2
        settings.REGISTRY_RETRIES = 2
        settings.REGISTRY_BACKOFF_SECONDS = 0
        receiver.answers = [Answer(200, b'{"command_id": "c-1", "generation": 4}')]
        yield receiver


def failed(agent):
    transition(agent, AgentState.FAILED, reason="test", actor="test")
    return services.open_remediation(Trigger.AGENT_FAILED, agent.pk)


@pytest.mark.django_db
def test_it_asks_the_registry_to_restart_a_failed_agent(registry, registered_agent):
    agent, _ = registered_agent
    assert isinstance(get_adapter(), HttpRegistryAdapter)

    action = failed(agent)

    [sent] = registry.requests
    assert (sent.method, sent.path) == ("POST", "/agents/worker-01/restart")
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.json()["serves"] == f"remediation:{action.pk}"
    assert sent.json()["params"] == {"graceful_stop_seconds": 10}
    assert action.status == ActionStatus.VERIFYING
    command = action.command
    assert command.status == CommandStatus.DELIVERED
    assert command.generation == 4
    assert command.params["registry_command_id"] == "c-1"
    # The registry restarts the agent: nothing rides on our heartbeat response.
    assert record_heartbeat(agent, state="failed").commands == []


@pytest.mark.django_db
def test_it_retries_5xx_with_one_idempotency_key(registry, registered_agent):
    agent, _ = registered_agent
    registry.answers = [Answer(503), Answer(502), Answer(200, b"{}")]

    action = failed(agent)

    assert action.status == ActionStatus.VERIFYING
    assert len(registry.requests) == 3
    assert len({r.headers["Idempotency-Key"] for r in registry.requests}) == 1


@pytest.mark.django_db
def test_a_refusal_is_final_and_fails_the_action_audibly_without_the_token(
    registry, registered_agent, caplog
):
    agent, _ = registered_agent
    registry.answers = [Answer(409, b'{"detail": "agent is being replaced"}')]

    with caplog.at_level(logging.WARNING):
        action = failed(agent)

    assert len(registry.requests) == 1
    action.refresh_from_db()
    assert action.status == ActionStatus.FAILED
    assert "HTTP 409" in action.outcome
    assert "agent is being replaced" in action.outcome
    assert action.history[-1]["detail"].startswith("registry: ")
    assert Event.objects.filter(name="watchdog.action.failed").count() == 1
    assert Event.objects.filter(name="watchdog.escalated").count() == 1
    assert not AgentCommand.objects.exists()
    assert TOKEN not in caplog.text
    assert TOKEN not in str(Event.objects.values_list("payload", flat=True))


@pytest.mark.django_db
def test_it_gives_up_after_the_retries_when_the_registry_never_answers(registry, registered_agent):
    agent, _ = registered_agent
    registry.answers = [Answer(200, b"{}", delay=1.0)]

    action = failed(agent)

    assert len(registry.requests) == 3  # one try and two retries
    assert action.status == ActionStatus.FAILED
    assert "no answer within 0.2s" in action.outcome


@pytest.mark.django_db
def test_a_manual_action_refused_by_an_unreachable_registry_is_a_502_and_audited(
    registry, settings, registered_agent, make_operator, api
):
    agent, _ = registered_agent
    settings.REGISTRY_URL = f"http://127.0.0.1:{free_port()}"
    _, token = make_operator("operator", "olga")

    answer = api.post(f"/api/v1/agents/{agent.pk}/actions/drain", **bearer(token))

    assert answer.status_code == 502
    action = RemediationAction.objects.get()
    assert action.status == ActionStatus.FAILED
    assert action.actor == "user:olga"
    assert "ConnectError" in action.outcome
    assert TOKEN not in answer.content.decode()


@pytest.mark.django_db
def test_a_state_change_is_asked_of_the_registry_before_our_mirror_follows(
    registry, registered_agent, make_operator, api
):
    agent, _ = registered_agent
    _, token = make_operator("operator", "olga")
    registry.answers = [Answer(200, b"{}"), Answer(404, b"unknown agent")]

    quarantined = api.post(f"/api/v1/agents/{agent.pk}/actions/quarantine", **bearer(token))
    released = api.post(f"/api/v1/agents/{agent.pk}/actions/release", **bearer(token))

    assert quarantined.status_code == 201
    assert released.status_code == 502
    assert [(r.method, r.path, r.json()["state"]) for r in registry.requests] == [
        ("PUT", "/agents/worker-01/state", "quarantined"),
        ("PUT", "/agents/worker-01/state", "idle"),
    ]
    agent.refresh_from_db()
    assert agent.state == AgentState.QUARANTINED  # the registry refused the release


def test_a_bare_adapter_call_raises_on_a_refusal():
    with HttpReceiver() as receiver:
        receiver.answers = [Answer(401, b"bad token")]
        adapter = HttpRegistryAdapter(receiver.url, token="t", timeout=0.5, retries=3, backoff=0)
        with pytest.raises(AdapterError, match="HTTP 401"):
            adapter.call("POST", "/agents/a/drain", {})
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_a_finished_action_withdraws_only_what_the_registry_says_it_withdrew(
    registry, registered_agent
):
    agent, _ = registered_agent
    action = failed(agent)
    registry.answers = [Answer(200, b'{"cancelled": ["c-1"]}')]

    services.verify_recovery(agent.pk)  # the agent is back before the restart went out

    last = registry.requests[-1]
    assert (last.path, last.json()["serves"]) == ("/commands/cancel", action.serves)
    action.command.refresh_from_db()
    assert action.command.status == CommandStatus.CANCELLED


@pytest.mark.django_db
def test_a_command_the_registry_did_not_withdraw_stays_delivered(registry, registered_agent):
    agent, _ = registered_agent
    action = failed(agent)
    registry.answers = [Answer(200, b'{"cancelled": []}')]

    services.verify_recovery(agent.pk)

    action.command.refresh_from_db()
    assert action.command.status == CommandStatus.DELIVERED
