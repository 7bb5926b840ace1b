import json

import pytest
from rest_framework.test import APIClient

from monitoring.models import AgentState, AgentToken, AgentTransition
from monitoring.services import register_agent, terminate_agent
from tests.conftest import ServedClient, bearer

URL = "/api/v1/agents/{}/heartbeat"


@pytest.fixture(params=["in-process", "served"])
def api(request):
    """Every test twice: through DRF's test client, and over HTTP through the ASGI app
    as served (body bound, lean heartbeat path, then Django), which must answer alike."""
    if request.param == "in-process":
        return APIClient()
    return ServedClient(request.getfixturevalue("server").base_url)


GOOD = {"state": "running", "task_id": "task-7", "progress": 0.4}


def post(api, agent_id, body, token, **extra):
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return api.post(
        URL.format(agent_id),
        data=raw,
        content_type=extra.pop("content_type", "application/json"),
        **bearer(token),
        **extra,
    )


def assert_problem(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


@pytest.mark.django_db
def test_it_records_a_heartbeat_and_moves_the_agent_out_of_spawning(api, registered_agent):
    agent, token = registered_agent

    response = post(api, agent.id, GOOD, token)

    assert response.status_code == 200
    assert response.json() == {
        "agent_id": agent.id,
        "state": "running",
        "heartbeat_interval_seconds": 5.0,
        "commands": [],
    }
    agent.refresh_from_db()
    assert agent.state == AgentState.RUNNING
    assert agent.current_task == "task-7"
    assert agent.overdue_at > agent.last_heartbeat_at
    assert list(agent.transitions.values_list("to_state", flat=True)) == ["spawning", "running"]


@pytest.mark.django_db
def test_it_answers_401_without_credentials(api, registered_agent):
    agent, _ = registered_agent
    response = api.post(URL.format(agent.id), data=GOOD, format="json")
    assert_problem(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_it_answers_401_for_a_wrong_or_revoked_token(api, registered_agent):
    agent, token = registered_agent
    assert_problem(post(api, agent.id, GOOD, token[:-4] + "AAAA"), 401)
    AgentToken.objects.get(agent=agent).revoke()
    assert_problem(post(api, agent.id, GOOD, token), 401)


@pytest.mark.django_db
def test_it_forbids_one_agent_writing_another_agents_heartbeat(api, registered_agent):
    agent, _ = registered_agent
    _, other_token = register_agent("worker-02", "worker")

    assert_problem(post(api, agent.id, GOOD, other_token), 403)
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None


@pytest.mark.django_db
def test_it_forbids_operators_from_sending_heartbeats(api, registered_agent, make_operator):
    agent, _ = registered_agent
    _, operator_token = make_operator("admin")
    assert_problem(post(api, agent.id, GOOD, operator_token), 403)


@pytest.mark.django_db
def test_it_answers_404_for_an_unknown_agent(api, registered_agent):
    _, token = registered_agent
    assert_problem(post(api, "no-such-agent", GOOD, token), 404)


@pytest.mark.django_db
def test_it_answers_400_for_malformed_json(api, registered_agent):
    agent, token = registered_agent
    assert_problem(post(api, agent.id, '{"state": "running",', token), 400)
    assert_problem(post(api, agent.id, '{"state": NaN}', token), 400)
    assert_problem(post(api, agent.id, b"\xff\xfe", token), 400)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"state": "\\ud800"}', "lone surrogate"),
        ('{"state": "running", "labels": {"\\udfff": "x"}}', "lone surrogate"),
        ('{"state": "running", "task_id": "a\\u0000b"}', "NUL"),
        ('{"state": "running", "x": {"k\\u0000": 1}}', "NUL"),
        ('{"state": "bogus", "state": "running"}', "duplicate key 'state'"),
        ('{"state": "running", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
)
def test_it_answers_400_for_json_it_could_not_store(api, registered_agent, body, says):
    agent, token = registered_agent

    problem = assert_problem(post(api, agent.id, body, token), 400)

    assert says in problem["detail"]
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None


@pytest.mark.django_db
def test_it_keeps_text_that_merely_looks_like_an_escape(api, registered_agent):
    agent, token = registered_agent
    body = {"state": "running", "task_id": "literal \\u0000 and \U0001f916"}
    assert post(api, agent.id, body, token).status_code == 200
    agent.refresh_from_db()
    assert agent.current_task == body["task_id"]


@pytest.mark.django_db
def test_it_answers_415_for_other_charsets_and_compressed_bodies(api, registered_agent):
    agent, token = registered_agent
    latin = post(api, agent.id, GOOD, token, content_type="application/json; charset=latin-1")
    assert_problem(latin, 415)
    gzipped = post(api, agent.id, GOOD, token, HTTP_CONTENT_ENCODING="gzip")
    assert_problem(gzipped, 415)
    utf8 = post(api, agent.id, GOOD, token, content_type="application/json; charset=UTF-8")
    assert utf8.status_code == 200


@pytest.mark.django_db
def test_it_answers_422_naming_each_bad_field(api, registered_agent):
    agent, token = registered_agent
    body = {"state": "dancing", "progress": "lots", "acks": ["x"]}

    problem = assert_problem(post(api, agent.id, body, token), 422)

    fields = {error["field"] for error in problem["errors"]}
    assert fields == {"state", "progress", "acks[0]"}
    assert "state" in problem["detail"] and "progress" in problem["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": "running", "progress": True}, "progress"),
        ({"state": "running", "progress": "0.5"}, "progress"),
        ({"state": "running", "task_id": 123}, "task_id"),
        ({"state": "running", "acks": ["1"]}, "acks[0]"),
        ({"state": "running", "acks": [1.0]}, "acks[0]"),
        ({"state": "running", "acks": [2**63]}, "acks[0]"),
        ({"state": "running", "stuck_after": "60"}, "stuck_after"),
        ({"state": "running", "stuck_after": True}, "stuck_after"),
        ({"state": "running", "stuck_after": 9.5}, "stuck_after"),
        ({"state": "running", "stuck_after": 86401}, "stuck_after"),
    ],
)
def test_it_answers_422_for_the_wrong_json_type(api, registered_agent, body, field):
    agent, token = registered_agent

    problem = assert_problem(post(api, agent.id, body, token), 422)

    assert [e["field"] for e in problem["errors"]] == [field]
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None


@pytest.mark.django_db
def test_it_answers_422_for_missing_fields_and_non_objects(api, registered_agent):
    agent, token = registered_agent
    missing = assert_problem(post(api, agent.id, {}, token), 422)
    assert [e["field"] for e in missing["errors"]] == ["state"]
    assert_problem(post(api, agent.id, "[1, 2]", token), 422)


@pytest.mark.django_db
def test_it_answers_413_for_a_body_over_one_mebibyte(api, registered_agent):
    agent, token = registered_agent
    body = json.dumps({"state": "running", "task_id": "x" * (1024 * 1024)})

    assert_problem(post(api, agent.id, body, token), 413)
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None


@pytest.mark.django_db
def test_it_answers_415_for_a_body_that_is_not_json(api, registered_agent):
    agent, token = registered_agent
    response = post(api, agent.id, "state=running", token, content_type="text/plain")
    assert_problem(response, 415)


@pytest.mark.django_db
def test_it_answers_409_for_a_terminated_agent(api, registered_agent, make_operator):
    agent, _ = registered_agent
    _, raw = AgentToken.issue(agent=agent, name="kept")
    terminate_agent(agent, reason="retired", actor="test")
    AgentToken.objects.filter(agent=agent).update(revoked_at=None)

    assert_problem(post(api, agent.id, GOOD, raw), 409)


@pytest.mark.django_db
def test_it_stores_nothing_when_the_body_is_invalid(api, registered_agent):
    agent, token = registered_agent
    before = AgentTransition.objects.count()
    post(api, agent.id, {"state": "running", "progress": 7}, token)
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None
    assert AgentTransition.objects.count() == before


@pytest.mark.django_db
def test_it_answers_problem_json_for_unknown_api_paths(api):
    assert_problem(api.get("/api/v1/nothing-here"), 404)


@pytest.mark.django_db
def test_it_keeps_a_routine_heartbeat_to_a_handful_of_queries(api, registered_agent):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    agent, token = registered_agent
    post(api, agent.id, GOOD, token)  # first beat changes state; later ones do not
    with CaptureQueriesContext(connection) as queries:
        assert post(api, agent.id, GOOD, token).status_code == 200
    # token+agent, lock agent, pending commands, update agent (+ savepoint bookkeeping)
    statements = [q["sql"] for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) <= 4, statements
