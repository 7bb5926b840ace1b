"""Escalation chains through the API: read by viewers, written by admins."""

import pytest

from alerting.models import Receiver
from tests.conftest import bearer
from watchdog.builtins import RESTART_POLICY
from watchdog.models import EscalationChain, RemediationPolicy

CHAINS = "/api/v1/escalation-chains"
LEVELS = [
    {"receivers": ["oncall"], "after": 0},
    {"receivers": ["lead"], "after": 600},
    {"receivers": [], "guardian": True, "after": 1800},
]


@pytest.fixture
def chain(seeded, settings):
    settings.WATCHDOG_GUARDIAN_RECEIVER = "guardian"
    for name in ("oncall", "lead", "guardian"):
        Receiver.objects.create(name=name, kind="console")
    workers = EscalationChain.objects.create(name="workers", levels=LEVELS)
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(escalation_chain=workers)
    EscalationChain.objects.create(name="spare", levels=[{"receivers": ["lead"], "after": 0}])
    return workers


@pytest.mark.django_db
def test_it_lists_and_shows_chains_to_viewers(api, chain, make_operator):
    _, viewer = make_operator("viewer", "vic")

    listed = api.get(CHAINS, **bearer(viewer))
    shown = api.get(f"{CHAINS}/workers", **bearer(viewer))
    unknown = api.get(f"{CHAINS}/nobody", **bearer(viewer))
    anonymous = api.get(CHAINS)

    assert listed.status_code == 200
    assert listed.json()["count"] == 2
    assert [c["name"] for c in listed.json()["results"]] == ["spare", "workers"]
    assert shown.json() == {
        "id": chain.pk,
        "name": "workers",
        "levels": LEVELS,
        "policies": [RESTART_POLICY],
    }
    assert unknown.status_code == 404
    assert anonymous.status_code == 401


@pytest.mark.django_db
def test_admins_write_chains_checked_as_policy_files_are(api, chain, make_operator):
    _, admin = make_operator("admin", "ada")
    _, operator = make_operator("operator", "olga")
    body = {"name": "monitors", "levels": [{"receivers": ["oncall"], "after": 60}]}

    by_operator = api.post(CHAINS, body, format="json", **bearer(operator))
    created = api.post(CHAINS, body, format="json", **bearer(admin))
    unknown_receiver = api.post(
        CHAINS,
        {"name": "bad", "levels": [{"receivers": ["nobody"], "after": 8 * 86400}]},
        format="json",
        **bearer(admin),
    )
    not_a_slug = api.post(CHAINS, {**body, "name": "two words"}, format="json", **bearer(admin))
    edited = api.patch(
        f"{CHAINS}/monitors",
        {"levels": [{"receivers": ["lead"], "after": 0}]},
        format="json",
        **bearer(admin),
    )
    half_bad = api.patch(
        f"{CHAINS}/monitors",
        {"levels": [{"receivers": ["lead"], "after": 0}, {"after": 5}]},
        format="json",
        **bearer(admin),
    )

    assert by_operator.status_code == 403
    assert created.status_code == 201
    assert unknown_receiver.status_code == 422
    problems = [e["detail"] for e in unknown_receiver.json()["errors"]]
    assert "level 1: after is whole seconds from 0 to 604800" in problems
    assert "no receiver named nobody" in problems
    assert not_a_slug.status_code == 422
    assert edited.status_code == 200
    assert half_bad.status_code == 422
    assert EscalationChain.objects.get(name="monitors").levels == [
        {"receivers": ["lead"], "after": 0}
    ]
    assert not EscalationChain.objects.filter(name__in=["bad", "two words"]).exists()


@pytest.mark.django_db
def test_a_chain_a_policy_names_is_not_deleted(api, chain, make_operator):
    _, admin = make_operator("admin", "ada")

    in_use = api.delete(f"{CHAINS}/workers", **bearer(admin))
    unused = api.delete(f"{CHAINS}/spare", **bearer(admin))

    assert in_use.status_code == 409
    assert (
        in_use.json()["detail"] == f"Escalation chain workers is named by policy {RESTART_POLICY}."
    )
    assert unused.status_code == 204
    assert list(EscalationChain.objects.values_list("name", flat=True)) == ["workers"]
