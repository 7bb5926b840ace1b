"""The OpenAPI schema is valid and warning-free; its docs page needs no internet."""

import json
import re

import pytest
from django.core.management import call_command


def test_it_generates_a_valid_schema_without_warnings(tmp_path):
    target = tmp_path / "schema.json"
    call_command(
        "spectacular", validate=True, fail_on_warn=True, file=str(target), format="openapi-json"
    )
    schema = json.loads(target.read_text())

    heartbeat = schema["paths"]["/api/v1/agents/{agent_id}/heartbeat"]["post"]
    assert heartbeat["security"] == [{"agentToken": []}]
    ok = heartbeat["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/HeartbeatResponse"}
    for code in ("401", "403", "404", "409", "413", "415", "422"):
        content = heartbeat["responses"][code]["content"]
        assert content["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
    alerts = schema["paths"]["/api/v1/alerts"]["get"]
    limit = next(p for p in alerts["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 500)
    assert {"operatorToken": []} in alerts["security"]
    assert {"agentToken": []} not in alerts["security"]


@pytest.mark.django_db
def test_it_serves_swagger_ui_from_its_own_static_files(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert assets, html
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


@pytest.mark.django_db
def test_it_ignores_a_version_parameter_it_would_echo_into_a_header(client):
    for version in ("%0A", "%22", "2"):
        response = client.get(f"/api/schema/?version={version}")
        assert response.status_code == 200
        assert response["Content-Disposition"] == 'inline; filename="Omoi Console API (1).yaml"'


def test_it_documents_the_metric_reads_with_their_parameters(tmp_path):
    target = tmp_path / "schema.json"
    call_command("spectacular", file=str(target), format="openapi-json")
    paths = json.loads(target.read_text())["paths"]

    query = paths["/api/v1/metrics/query"]["get"]
    parameters = {p["name"]: p["schema"] for p in query["parameters"]}
    assert {"metric", "start", "end", "step", "agg", "label", "agent", "limit", "offset"} <= set(
        parameters
    )
    assert set(parameters["agg"]["enum"]) >= {"avg", "rate", "p95"}
    assert parameters["limit"]["maximum"] == 50
    for path in (
        "/api/v1/metrics",
        "/api/v1/metrics/series",
        "/api/v1/metrics/top",
        "/api/v1/anomalies",
        "/api/v1/anomalies/{id}",
        "/api/v1/anomalies/summary",
        "/api/v1/fleet/summary",
    ):
        assert "200" in paths[path]["get"]["responses"], path
        assert "422" in paths[path]["get"]["responses"], path
