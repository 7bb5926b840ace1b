"""The registry mirror: metadata registered and edited by API and admin, every refusal,
and the bulk upsert through which an external registry keeps the mirror in step."""

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.ingest.cache import ingest_cache, snapshot_of
from monitoring.models import Agent
from monitoring.services import check_heartbeats, record_heartbeat, register_agent
from tests.test_monitor_agent import S, stored

# --- the registry: API ---------------------------------------------------------------------

REGISTERED = {
    "id": "worker-77",
    "role": "worker",
    "name": "Builder 77",
    "capabilities": ["python", "lang:go", "gpu"],
    "owner": "team-infra",
    "version": "1.4.2+build.7",
    "labels": {"zone": "a"},
}


def patch(api, agent_id: str, body, token: str, content_type="application/json"):
    import json

    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return api.patch(
        f"/api/v1/agents/{agent_id}",
        data=raw,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


@pytest.mark.django_db
def test_it_registers_an_agent_with_its_registry_metadata(api, make_operator):
    _, admin = make_operator("admin")

    response = api.post(
        "/api/v1/agents", REGISTERED, format="json", HTTP_AUTHORIZATION=f"Bearer {admin}"
    )

    assert response.status_code == 201, response.content
    shown = api.get("/api/v1/agents/worker-77", HTTP_AUTHORIZATION=f"Bearer {admin}").json()
    assert {key: shown[key] for key in REGISTERED} == REGISTERED
    assert shown["state"] == "spawning"
    assert shown["stuck_after_seconds"] == django_settings.STUCK_AFTER_BY_ROLE["worker"]


@pytest.mark.django_db
def test_it_edits_metadata_and_moves_the_deadlines_a_new_role_implies(
    api, make_operator, thresholds, django_capture_on_commit_callbacks
):
    _, admin = make_operator("admin")
    agent, _ = register_agent("edit-me", "worker", name="old")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running", task_id="t", progress=0.1)
        beat_at = timezone.now()
        generation = ingest_cache.generation(agent.id)
        ingest_cache.update_state(agent.id, snapshot_of(stored(agent.id)), generation)
        assert ingest_cache.agent(agent.id).interval == 5.0
        clock.shift(1)
        body = {"name": "Night scheduler", "role": "scheduler", "capabilities": ["cron"]}

        with django_capture_on_commit_callbacks(execute=True):
            response = patch(api, agent.id, body, admin)

    assert response.status_code == 200, response.content
    assert {key: response.json()[key] for key in body} == body
    edited = stored(agent.id)
    assert (edited.name, edited.role, edited.capabilities) == (
        "Night scheduler",
        "scheduler",
        ["cron"],
    )
    assert edited.state == S.RUNNING  # metadata only
    assert edited.overdue_at == beat_at + timedelta(seconds=30 + 2)
    assert edited.stuck_at == beat_at + timedelta(seconds=300)
    assert ingest_cache.agent(agent.id) is None  # the lean path reads it again


@pytest.mark.django_db
def test_it_keeps_what_a_patch_leaves_out(api, make_operator):
    _, admin = make_operator("admin")
    register_agent("keep-me", "monitor", name="Keeper", owner="ops", version="2.0")

    response = patch(api, "keep-me", {"version": "2.1"}, admin)

    assert response.status_code == 200
    kept = stored("keep-me")
    assert (kept.name, kept.owner, kept.version, kept.role) == ("Keeper", "ops", "2.1", "monitor")


BAD_EDITS = [
    ({"state": "idle"}, "state"),
    ({"last_heartbeat_at": "2026-01-01T00:00:00Z"}, "last_heartbeat_at"),
    ({"id": "renamed"}, "id"),
    ({"capabilities": "python"}, "capabilities"),
    ({"capabilities": ["Python"]}, "capabilities"),
    ({"capabilities": ["python", "python"]}, "capabilities"),
    ({"capabilities": ["x" * 49]}, "capabilities"),
    ({"capabilities": [1]}, "capabilities"),
    ({"capabilities": [f"c{i}" for i in range(33)]}, "capabilities"),
    ({"capabilities": ["has space"]}, "capabilities"),
    ({"version": "1.0 beta"}, "version"),
    ({"version": "v" * 65}, "version"),
    ({"name": "n" * 101}, "name"),
    ({"name": 7}, "name"),
    ({"role": "pilot"}, "role"),
    ({"labels": {"": "x"}}, "labels"),
    ({"heartbeat_interval": 0.1}, "heartbeat_interval"),
    ({"heartbeat_interval": "5"}, "heartbeat_interval"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), BAD_EDITS)
def test_it_refuses_a_bad_edit_with_422_and_stores_nothing(api, make_operator, body, field):
    _, admin = make_operator("admin")
    register_agent("guarded", "worker", name="Guarded", capabilities=["python"])
    before = Agent.objects.filter(pk="guarded").values().get()

    response = patch(api, "guarded", {"owner": "someone-else", **body}, admin)

    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in {e["field"].split("[")[0].split(".")[0] for e in response.json()["errors"]}
    assert Agent.objects.filter(pk="guarded").values().get() == before


@pytest.mark.django_db
def test_it_answers_every_other_refusal_of_an_edit_with_its_own_code(
    api, make_operator, registered_agent
):
    agent, agent_token = registered_agent
    _, admin = make_operator("admin")
    _, viewer = make_operator("viewer", username="v")
    _, operator = make_operator("operator", username="o")
    before = Agent.objects.filter(pk=agent.id).values().get()
    edit = {"name": "x"}

    assert api.patch(f"/api/v1/agents/{agent.id}", edit, format="json").status_code == 401
    for token in (viewer, operator, agent_token):
        assert patch(api, agent.id, edit, token).status_code == 403
    assert patch(api, "no-such-agent", edit, admin).status_code == 404
    put = api.put(
        f"/api/v1/agents/{agent.id}", edit, format="json", HTTP_AUTHORIZATION=f"Bearer {admin}"
    )
    assert put.status_code == 405
    assert patch(api, agent.id, '{"name": ', admin).status_code == 400
    assert patch(api, agent.id, {"owner": "a\u0000b"}, admin).status_code == 400
    assert patch(api, agent.id, "name=x", admin, content_type="text/plain").status_code == 415
    huge = {"name": "x", "owner": "o" * (2 * 1024 * 1024)}
    assert patch(api, agent.id, huge, admin).status_code == 413
    assert patch(api, agent.id, "[1, 2]", admin).status_code == 422
    assert Agent.objects.filter(pk=agent.id).values().get() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"capabilities": ["GPU"]}, "capabilities"),
        ({"version": "not a version"}, "version"),
        ({"state": "running"}, "state"),
        ({"owner": 5}, "owner"),
    ],
)
def test_it_refuses_a_registration_with_bad_metadata(api, make_operator, extra, field):
    _, admin = make_operator("admin")

    response = api.post(
        "/api/v1/agents",
        {"id": "w-1", "role": "worker", **extra},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {admin}",
    )

    assert response.status_code == 422
    assert [e["field"].split("[")[0] for e in response.json()["errors"]] == [field]
    assert not Agent.objects.exists()


# --- the registry: admin ----------------------------------------------------------------


@pytest.mark.django_db
def test_admins_edit_registry_metadata_in_the_admin(client, make_operator, thresholds):
    from django.urls import reverse

    user, _ = make_operator("admin")
    client.force_login(user)
    agent, _ = register_agent("admin-edit", "worker")
    url = reverse("admin:monitoring_agent_change", args=[agent.id])
    form = {
        "name": "Edited",
        "role": "monitor",
        "capabilities": '["python", "gpu"]',
        "owner": "ops",
        "version": "3.0",
        "labels": "{}",
        "heartbeat_interval": "",
        "transitions-TOTAL_FORMS": "0",
        "transitions-INITIAL_FORMS": "0",
    }

    refused = client.post(url, {**form, "capabilities": '["GPU"]'})
    assert refused.status_code == 200  # the form again, with the error
    assert "capabilities are 1-48 lowercase letters" in refused.content.decode()
    assert stored(agent.id).capabilities == []

    saved = client.post(url, form)
    assert saved.status_code == 302
    edited = stored(agent.id)
    assert (edited.name, edited.role, edited.capabilities) == (
        "Edited",
        "monitor",
        ["python", "gpu"],
    )
    assert edited.overdue_at == edited.created_at + timedelta(seconds=10 + 2)
    assert edited.state == S.SPAWNING


# --- the registry: bulk sync -----------------------------------------------------------


@pytest.mark.django_db
def test_sync_creates_and_updates_metadata_and_never_state(django_capture_on_commit_callbacks):
    from monitoring.models import AgentToken
    from monitoring.registry import sync_registry

    running, _ = register_agent("sync-running", "worker", owner="old")
    record_heartbeat(running, state="running", task_id="t", progress=0.5)
    register_agent("sync-same", "monitor", version="1.0")
    before = Agent.objects.filter(pk="sync-running").values().get()
    records = [
        {"id": "sync-running", "owner": "team-b", "capabilities": ["python"]},
        {"id": "sync-same", "version": "1.0"},
        {"id": "sync-new", "role": "scheduler", "name": "New", "labels": {"zone": "b"}},
    ]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = sync_registry(records, actor="registry:test")

    assert (result.created, result.updated, result.unchanged) == (
        ["sync-new"],
        ["sync-running"],
        ["sync-same"],
    )
    after = Agent.objects.filter(pk="sync-running").values().get()
    changed = {key for key in after if after[key] != before[key]}
    assert changed == {"owner", "capabilities"}
    assert after["state"] == S.RUNNING
    new = stored("sync-new")
    assert (new.state, new.name, new.labels) == (S.SPAWNING, "New", {"zone": "b"})
    assert new.overdue_at == new.created_at + timedelta(seconds=5 + 2)
    assert list(new.transitions.values_list("to_state", "actor")) == [("spawning", "registry:test")]
    assert not AgentToken.objects.filter(agent=new).exists()
    assert len(callbacks) == 1  # one invalidation of the updated agents


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad", "key", "says"),
    [
        ({"id": "sync-s", "state": "idle"}, "sync-s", "state: Not a registry field"),
        ({"id": "sync-b", "capabilities": ["BAD"]}, "sync-b", "capabilities:"),
        ({"id": "sync-c", "name": "no role"}, "sync-c", "role:"),
        ({"id": "Bad Id", "role": "worker"}, "Bad Id", "id:"),
        ({"id": "sync-a", "role": "worker"}, "sync-a", "more than once"),
        ({"role": "worker"}, "records[1]", "needs an agent id"),
        ("sync-a", "records[1]", "must be a mapping"),
    ],
)
def test_sync_stores_nothing_when_any_record_is_invalid(bad, key, says):
    from django.core.exceptions import ValidationError

    from monitoring.registry import sync_registry

    register_agent("sync-a", "worker", owner="old")
    before = list(Agent.objects.values())

    with pytest.raises(ValidationError) as refused:
        sync_registry(
            [{"id": "sync-a", "owner": "new"}, bad, {"id": "sync-z", "role": "worker"}],
            actor="test",
        )

    messages = refused.value.message_dict
    assert list(messages) == [key]
    assert says in " ".join(messages[key])
    assert list(Agent.objects.values()) == before


@pytest.mark.django_db
def test_sync_moves_deadlines_when_a_role_changes_the_interval(thresholds):
    from monitoring.registry import sync_registry

    agent, _ = register_agent("sync-role", "worker")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="running")
        beat_at = timezone.now()
        sync_registry([{"id": agent.id, "role": "scheduler"}], actor="test")
        clock.shift(7.5)  # overdue for a worker, not for a scheduler
        assert check_heartbeats() == 0
    assert stored(agent.id).overdue_at == beat_at + timedelta(seconds=32)


@pytest.mark.postgres
@pytest.mark.django_db
def test_sync_spends_as_many_statements_on_three_hundred_records_as_on_three():
    from monitoring.registry import sync_registry

    def statements(size: int, prefix: str) -> int:
        for n in range(size):
            register_agent(f"{prefix}-old-{n}", "worker")
        records = [{"id": f"{prefix}-old-{n}", "owner": "o"} for n in range(size)]
        records += [{"id": f"{prefix}-new-{n}", "role": "worker"} for n in range(size)]
        with CaptureQueriesContext(connection) as queries:
            result = sync_registry(records, actor="test")
        assert (len(result.created), len(result.updated)) == (size, size)
        return len(queries)

    assert statements(3, "small") == statements(300, "large")
