import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from monitoring.models import Agent, AgentToken
from tests.conftest import bearer


@pytest.mark.django_db
def test_it_registers_an_agent_and_shows_its_token_once(api, make_operator):
    _, admin = make_operator("admin")
    body = {"id": "worker-42", "role": "worker", "labels": {"zone": "a"}}

    response = api.post("/api/v1/agents", body, format="json", **bearer(admin))

    assert response.status_code == 201
    token = response.json()["token"]
    assert token.startswith("omoi_ag_")
    stored = AgentToken.objects.get(agent_id="worker-42")
    assert token not in (stored.token_hash, stored.lookup)
    listed = api.get("/api/v1/agents/worker-42/tokens", **bearer(admin)).json()
    assert "token" not in listed[0] and listed[0]["lookup"] == stored.lookup
    heartbeat = api.post(
        "/api/v1/agents/worker-42/heartbeat", {"state": "idle"}, format="json", **bearer(token)
    )
    assert heartbeat.status_code == 200


@pytest.mark.django_db
def test_it_refuses_registration_to_viewers_and_operators(api, make_operator):
    for role in ("viewer", "operator"):
        _, token = make_operator(role, username=f"{role}-x")
        response = api.post(
            "/api/v1/agents", {"id": "w-1", "role": "worker"}, format="json", **bearer(token)
        )
        assert response.status_code == 403
    assert not Agent.objects.exists()


@pytest.mark.django_db
def test_it_names_bad_fields_and_refuses_duplicates(api, make_operator, registered_agent):
    _, admin = make_operator("admin")
    bad = api.post(
        "/api/v1/agents", {"id": "Bad Id!", "role": "pilot"}, format="json", **bearer(admin)
    )
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"id", "role"}
    dup = api.post(
        "/api/v1/agents", {"id": "worker-01", "role": "worker"}, format="json", **bearer(admin)
    )
    assert dup.status_code == 422
    assert AgentToken.objects.filter(agent_id="worker-01").count() == 1


@pytest.mark.django_db
def test_it_answers_409_when_a_concurrent_request_took_the_id(
    api, make_operator, registered_agent, monkeypatch
):
    from monitoring.api.serializers import AgentRegistrationSerializer

    _, admin = make_operator("admin")
    # The other request commits between this one's check and its insert.
    monkeypatch.setattr(AgentRegistrationSerializer, "validate_id", lambda self, value: value)
    body = {"id": "worker-01", "role": "worker"}

    response = api.post("/api/v1/agents", body, format="json", **bearer(admin))

    assert response.status_code == 409
    assert AgentToken.objects.filter(agent_id="worker-01").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": 123, "role": "worker"}, "id"),
        ({"id": " w-1 ", "role": "worker"}, "id"),
        ({"id": "w-1", "role": "worker", "heartbeat_interval": True}, "heartbeat_interval"),
        ({"id": "w-1", "role": "worker", "heartbeat_interval": "5"}, "heartbeat_interval"),
        ({"id": "w-1", "role": "worker", "labels": {"n": 1}}, "labels.n"),
        ({"id": "w-1", "role": "worker", "labels": {"": "x"}}, "labels"),
        ({"id": "w-1", "role": "worker", "labels": {"k" * 100: "x"}}, "labels"),
        ({"id": "w-1", "role": "worker", "labels": {f"l{i}": "x" for i in range(33)}}, "labels"),
    ],
)
def test_it_refuses_wrong_types_and_unbounded_labels(api, make_operator, body, field):
    _, admin = make_operator("admin")

    response = api.post("/api/v1/agents", body, format="json", **bearer(admin))

    assert response.status_code == 422, response.content
    assert any(e["field"].startswith(field) for e in response.json()["errors"])
    assert not Agent.objects.exists()


@pytest.mark.django_db
def test_it_revokes_a_token_so_it_stops_working(api, make_operator, registered_agent):
    agent, token = registered_agent
    _, admin = make_operator("admin")
    lookup = AgentToken.objects.get(agent=agent).lookup

    assert (
        api.delete(f"/api/v1/agents/{agent.id}/tokens/{lookup}", **bearer(admin)).status_code == 204
    )
    response = api.post(
        f"/api/v1/agents/{agent.id}/heartbeat", {"state": "idle"}, format="json", **bearer(token)
    )
    assert response.status_code == 401


@pytest.mark.django_db
def test_viewers_read_the_fleet_but_agents_do_not(api, make_operator, registered_agent):
    _, token = registered_agent
    _, viewer = make_operator("viewer")
    assert api.get("/api/v1/agents", **bearer(viewer)).json()["count"] == 1
    assert api.get("/api/v1/agents", **bearer(token)).status_code == 403
    assert api.get("/api/v1/agents").status_code == 401


@pytest.mark.django_db
def test_the_operators_command_issues_and_revokes_tokens(api, seeded, capsys):
    call_command("operators", "create", "dana", "--role", "viewer")
    call_command("operators", "token", "dana", "--name", "laptop")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert api.get("/api/v1/alerts", **bearer(raw)).status_code == 200

    lookup = raw.split("_")[2]
    call_command("operators", "revoke", lookup)
    assert api.get("/api/v1/alerts", **bearer(raw)).status_code == 401
    with pytest.raises(CommandError):
        call_command("operators", "token", "nobody")


@pytest.mark.django_db
def test_the_agents_command_refuses_bad_ids(seeded):
    with pytest.raises(CommandError, match="lowercase"):
        call_command("agents", "register", "Bad Id", "--role", "worker")
    assert not Agent.objects.exists()


@pytest.mark.django_db
def test_it_serves_agents_whose_ids_contain_dots(api, make_operator):
    from monitoring.services import register_agent

    register_agent("worker.eu-1", "worker")
    _, admin = make_operator("admin")
    assert api.get("/api/v1/agents/worker.eu-1", **bearer(admin)).json()["id"] == "worker.eu-1"
    assert api.get("/api/v1/agents/worker.eu-1/transitions", **bearer(admin)).status_code == 200
    issued = api.post(
        "/api/v1/agents/worker.eu-1/tokens", {"name": ""}, format="json", **bearer(admin)
    )
    assert issued.status_code == 201


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/agents/a b",
        "/api/v1/agents/-worker/transitions",
        "/api/v1/agents/a%0Ab/tokens",
        "/api/v1/agents/Worker-01",
        "/api/v1/agents/worker-01/tokens/abc",
        "/api/v1/agents/worker-01/tokens/ABCDEF012345",
    ],
)
def test_it_answers_404_for_paths_that_cannot_name_an_agent_or_token(
    api, make_operator, registered_agent, path
):
    _, admin = make_operator("admin")
    for method in (api.get, api.delete):
        response = method(path, **bearer(admin))
        assert response.status_code == 404, (method, response.content)
        assert response["Content-Type"] == "application/problem+json"


@pytest.mark.django_db
def test_it_answers_404_to_a_heartbeat_for_an_impossible_id(api, registered_agent):
    _, token = registered_agent
    response = api.post(
        "/api/v1/agents/Worker-01/heartbeat", {"state": "idle"}, format="json", **bearer(token)
    )
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.django_db
def test_it_filters_the_fleet_by_state_and_role(api, make_operator, registered_agent):
    from monitoring.services import register_agent

    register_agent("monitor-01", "monitor")
    _, viewer = make_operator("viewer")

    listed = api.get("/api/v1/agents?role=monitor&state=spawning", **bearer(viewer)).json()

    assert [a["id"] for a in listed["results"]] == ["monitor-01"]
    assert api.get("/api/v1/agents?role=worker", **bearer(viewer)).json()["count"] == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=bogus", "state"),
        ("role=pilot", "role"),
        ("limit=abc", "limit"),
        ("limit=%C2%B2", "limit"),
        ("offset=%D9%A1", "offset"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=9223372036854775808", "limit"),
        ("offset=-1", "offset"),
        ("offset=9223372036854775808", "offset"),
    ],
)
def test_it_answers_422_for_query_parameters_out_of_range(
    api, make_operator, registered_agent, query, field
):
    _, viewer = make_operator("viewer")

    response = api.get(f"/api/v1/agents?{query}", **bearer(viewer))

    assert response.status_code == 422, response.content
    assert [e["field"] for e in response.json()["errors"]] == [field]


@pytest.mark.django_db
def test_it_pages_the_fleet_within_its_bounds(api, make_operator, registered_agent):
    _, viewer = make_operator("viewer")
    page = api.get("/api/v1/agents?limit=500&offset=0", **bearer(viewer)).json()
    assert page["count"] == 1 and len(page["results"]) == 1
    beyond = api.get("/api/v1/agents?offset=9223372036854775807", **bearer(viewer)).json()
    assert beyond["results"] == []
