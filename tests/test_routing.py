"""The routing tree: each team's alerts to its own receivers, everything else to the defaults."""

import pytest

from alerting.delivery import receivers_for
from alerting.models import Alert, Receiver, Route
from alerting.routing import route
from tests.conftest import bearer


@pytest.fixture
def hooks(db):
    def make(name: str) -> Receiver:
        return Receiver.objects.create(
            name=name, kind="webhook", config={"url": f"https://{name}.example.org/hook"}
        )

    return {name: make(name) for name in ("team-a", "team-b", "databases", "oncall")}


def names(receivers) -> list[str]:
    return sorted(receiver.name for receiver in receivers)


def add(name, *, receivers=(), parent=None, position=0, matchers=(), **fields) -> Route:
    node = Route.objects.create(
        name=name, parent=parent, position=position, matchers=list(matchers), **fields
    )
    node.receivers.set(receivers)
    return node


@pytest.mark.django_db
def test_the_first_matching_route_takes_the_alert(hooks):
    add("a", receivers=[hooks["team-a"]], matchers=["owner=team-a"])
    add("b", receivers=[hooks["team-b"]], matchers=["owner=~team-.*"], position=1)

    assert names(route({"owner": "team-a"})) == ["team-a"]
    assert names(route({"owner": "team-b"})) == ["team-b"]
    assert route({"owner": "nobody"}) is None


@pytest.mark.django_db
def test_continue_matching_lets_later_siblings_take_it_too(hooks):
    add("a", receivers=[hooks["team-a"]], matchers=["owner=team-a"], continue_matching=True)
    add("all", receivers=[hooks["oncall"]], position=1)

    assert names(route({"owner": "team-a"})) == ["oncall", "team-a"]
    assert names(route({"owner": "team-b"})) == ["oncall"]


@pytest.mark.django_db
def test_a_child_without_receivers_delivers_to_its_parents(hooks):
    team = add("a", receivers=[hooks["team-a"]], matchers=["owner=team-a"])
    add("a-db", parent=team, receivers=[hooks["databases"]], matchers=["role=database"])
    add("a-workers", parent=team, matchers=["role=worker"], position=1)

    assert names(route({"owner": "team-a", "role": "database"})) == ["databases"]
    assert names(route({"owner": "team-a", "role": "worker"})) == ["team-a"]
    assert names(route({"owner": "team-a", "role": "monitor"})) == ["team-a"]


@pytest.mark.django_db
def test_an_alert_no_route_takes_goes_to_the_default_receivers(hooks, seeded):
    add("a", receivers=[hooks["team-a"]], matchers=["owner=team-a"])
    add("off", receivers=[hooks["team-b"]], enabled=False)

    mine = receivers_for(Alert(labels={"owner": "team-a"}))
    others = receivers_for(Alert(labels={"owner": "team-z"}))

    assert names(mine) == ["team-a"]
    assert "console" in names(others)  # the built-in default receiver
    assert not {"team-a", "team-b"} & set(names(others))


@pytest.mark.django_db
def test_admins_edit_the_tree_over_the_api_and_bad_routes_are_refused(api, make_operator, hooks):
    _, token = make_operator("admin")
    auth = bearer(token)

    made = api.post(
        "/api/v1/routes",
        {"name": "team-a", "matchers": ["owner=team-a"], "receivers": ["team-a"]},
        format="json",
        **auth,
    )
    assert made.status_code == 201, made.content
    child = api.post(
        "/api/v1/routes",
        {"name": "team-a-db", "parent": "team-a", "matchers": ["role=database"]},
        format="json",
        **auth,
    )
    assert child.status_code == 201
    cycle = api.patch(
        f"/api/v1/routes/{made.json()['id']}", {"parent": "team-a-db"}, format="json", **auth
    )
    assert cycle.status_code == 422
    assert {e["field"] for e in cycle.json()["errors"]} == {"parent"}
    for body, field in [
        ({"name": "x", "matchers": ["owner"]}, "matchers"),
        ({"name": "x", "receivers": ["nowhere"]}, "receivers"),
        ({"name": "x", "parent": "nowhere"}, "parent"),
    ]:
        response = api.post("/api/v1/routes", body, format="json", **auth)
        assert response.status_code == 422
        assert field in {e["field"] for e in response.json()["errors"]}
    assert Route.objects.count() == 2
    _, viewer = make_operator("viewer", "watcher")
    assert api.get("/api/v1/routes", **bearer(viewer)).status_code == 200
    refused = api.post("/api/v1/routes", {"name": "y"}, format="json", **bearer(viewer))
    assert refused.status_code == 403


@pytest.mark.django_db
def test_inside_a_tick_the_tree_is_read_once_and_edits_apply_from_the_next(hooks):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from alerting.routing import tree_held

    add("a", receivers=[hooks["team-a"]], matchers=["owner=team-a"])
    with CaptureQueriesContext(connection) as alone:
        route({"owner": "team-a"})
    with tree_held():
        assert names(route({"owner": "team-a"})) == ["team-a"]
        add("b", receivers=[hooks["team-b"]], matchers=["owner=team-b"])
        with CaptureQueriesContext(connection) as held:
            for _ in range(5):
                assert route({"owner": "team-b"}) is None

    assert len(alone) >= 1
    assert len(held) == 0
    assert names(route({"owner": "team-b"})) == ["team-b"]
