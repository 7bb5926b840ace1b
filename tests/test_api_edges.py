"""What reaches the API before any view: hosts, headers, credentials, negotiation."""

import pytest

from tests.conftest import bearer


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


@pytest.mark.django_db
def test_it_answers_problem_json_to_requests_django_refuses(api, make_operator):
    _, viewer = make_operator("viewer")
    assert_problem(api.get("/api/v1/agents", HTTP_HOST="evil.example", **bearer(viewer)), 400)
    crowded = "&".join(f"f{i}=1" for i in range(1100))  # over Django's 1000 fields
    assert_problem(api.get(f"/api/v1/agents?{crowded}", **bearer(viewer)), 400)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer omoi_op_nothex000000_x", "Basic dXNlcjpwdw==", "Token abc", "Bearer a b"],
)
def test_it_says_when_credentials_are_unrecognised(api, seeded, header):
    problem = assert_problem(api.get("/api/v1/agents", HTTP_AUTHORIZATION=header), 401)
    assert problem["detail"].startswith("Unrecognised credentials")


@pytest.mark.django_db
def test_it_still_says_when_no_credentials_were_sent(api, seeded):
    problem = assert_problem(api.get("/api/v1/agents"), 401)
    assert "not provided" in problem["detail"]


@pytest.mark.django_db
def test_it_answers_json_whatever_the_client_accepts(api, make_operator):
    _, viewer = make_operator("viewer")
    for accept in ("application/problem+json", "text/html", "application/xml"):
        response = api.get("/api/v1/agents", HTTP_ACCEPT=accept, **bearer(viewer))
        assert response.status_code == 200, (accept, response.content)
        assert response["Content-Type"] == "application/json"
    assert api.get("/api/v1/agents?format=xml", **bearer(viewer)).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/agents?state=a%00",
        "/api/v1/agents?x%00=1",
        "/api/v1/alerts/1%00",
        "/admin/monitoring/agent/?state__exact=%00",
        "/admin/monitoring/agent/a%00b/change/",
    ],
)
def test_it_refuses_nul_anywhere_in_the_url(api, make_operator, url):
    user, token = make_operator("admin")
    api.force_login(user)
    response = api.get(url, **bearer(token))
    assert response.status_code == 400
    if url.startswith("/api/"):
        assert response["Content-Type"] == "application/problem+json"


@pytest.mark.django_db
def test_it_bounds_query_fields_on_every_request(api, registered_agent):
    agent, token = registered_agent
    crowded = "&".join(f"f{i}=1" for i in range(1100))
    url = f"/api/v1/agents/{agent.id}/heartbeat?{crowded}"
    response = api.post(url, {"state": "idle"}, format="json", **bearer(token))
    assert_problem(response, 400)
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is None
