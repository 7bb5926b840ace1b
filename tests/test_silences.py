"""Silences and inhibition hold back notifications, never alerts, and release them when over."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from alerting import evaluator, lifecycle
from alerting.models import Alert, AlertRule, InhibitRule, Notification, NotificationKind, Silence
from monitoring.models import Agent, AgentState
from omoi_console.models import Event
from tests.conftest import bearer

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def lose(agent_id: str, owner: str = "") -> Alert:
    Agent.objects.get_or_create(
        id=agent_id,
        defaults={"role": "worker", "owner": owner, "state": AgentState.FAILED},
    )
    (alert,) = lifecycle.fire_heartbeat_alerts({"agent_id": agent_id, "role": "worker"})
    return alert


def notified(alert: Alert, kind: str = NotificationKind.FIRING) -> bool:
    return Notification.objects.filter(alert=alert, kind=kind).exists()


def silence(matchers, minutes: int = 30) -> Silence:
    return Silence.objects.create(
        matchers=matchers, ends_at=NOW + timedelta(minutes=minutes), comment="maintenance"
    )


@pytest.mark.django_db
def test_a_silence_holds_back_notifications_but_not_the_alert(seeded):
    silence(["agent_id=w-1"])

    held, other = lose("w-1"), lose("w-2")

    assert held.status == "firing"
    assert Event.objects.filter(name="monitor.alert.triggered").count() == 2
    held.refresh_from_db()
    assert held.suppressed_by.startswith("silence ")
    assert not notified(held)
    assert notified(other)


@pytest.mark.django_db
def test_a_held_alert_is_notified_when_its_silence_ends_and_still_fires(seeded, frozen):
    quiet = silence(["role=worker", "agent_id=~w-.*"], minutes=10)
    alert = lose("w-1")

    evaluator.sweep(NOW + timedelta(minutes=9))
    assert not notified(alert)

    frozen.shift(timedelta(minutes=10))
    evaluator.sweep(NOW + timedelta(minutes=10))
    alert.refresh_from_db()
    assert alert.suppressed_by == ""
    assert notified(alert)
    assert list(alert.history.values_list("change", flat=True)) == [
        "firing",
        "suppressed",
        "released",
    ]
    assert quiet.active_at(NOW + timedelta(minutes=10)) is False


@pytest.mark.django_db
def test_an_alert_never_notified_does_not_notify_its_resolution(seeded):
    silence(["agent_id=w-1"])
    alert = lose("w-1")

    lifecycle.resolve_alert(alert, reason="agent recovered")

    assert not Notification.objects.filter(alert=alert).exists()
    assert Event.objects.filter(name="monitor.alert.resolved").count() == 1


@pytest.mark.django_db
def test_an_alert_notified_before_a_silence_notifies_its_resolution(seeded):
    alert = lose("w-1")
    silence(["agent_id=w-1"])

    lifecycle.resolve_alert(alert, reason="agent recovered")

    assert notified(alert, NotificationKind.RESOLVED)


@pytest.mark.django_db
def test_inhibition_needs_a_firing_source_with_equal_labels(seeded):
    AlertRule.objects.create(
        name="owner-down",
        kind="agent",
        summary="team {owner} is down",
        params={"states": ["failed"]},
        enabled=False,
    )
    InhibitRule.objects.create(
        name="team-down-hides-agents",
        source_matchers=["agent_id=w-1"],
        target_matchers=["agent_id=~w-[2-9]"],
        equal=["owner"],
    )
    source = lose("w-1", owner="team-a")

    same_team, other_team = lose("w-2", owner="team-a"), lose("w-3", owner="team-b")

    same_team.refresh_from_db()
    other_team.refresh_from_db()
    assert same_team.suppressed_by == f"inhibited by alert {source.pk}"
    assert other_team.suppressed_by == ""
    source.refresh_from_db()
    assert source.suppressed_by == ""  # an alert never inhibits itself

    lifecycle.resolve_alert(source, reason="agent recovered")
    evaluator.sweep(NOW)
    same_team.refresh_from_db()
    assert same_team.suppressed_by == ""
    assert notified(same_team)


@pytest.mark.django_db
def test_a_missing_equal_label_counts_as_empty_on_both_sides(seeded):
    InhibitRule.objects.create(
        name="by-region",
        source_matchers=["agent_id=w-1"],
        target_matchers=["agent_id=w-2"],
        equal=["region"],  # neither alert has it
    )
    lose("w-1")

    target = lose("w-2")

    target.refresh_from_db()
    assert target.suppressed_by.startswith("inhibited by alert")


@pytest.mark.django_db
def test_operators_silence_and_expire_over_the_api(api, make_operator, seeded):
    _, token = make_operator("operator")
    auth = bearer(token)

    created = api.post(
        "/api/v1/silences",
        {"matchers": ["agent_id=w-1"], "duration": "2h", "comment": "replacing the host"},
        format="json",
        **auth,
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["ends_at"] == "2026-11-20T14:00:00Z"
    assert body["active"] is True and body["created_by"] == "operator-user"
    assert [s["id"] for s in api.get("/api/v1/silences?active=true", **auth).json()["results"]] == [
        body["id"]
    ]
    expired = api.post(f"/api/v1/silences/{body['id']}/expire", **auth)
    assert expired.json()["active"] is False
    assert api.get("/api/v1/silences?active=maybe", **auth).status_code == 422


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"matchers": [], "duration": "1h", "comment": "x"}, "matchers"),
        ({"matchers": ["agent_id"], "duration": "1h", "comment": "x"}, "matchers"),
        ({"matchers": ["agent_id=w-1"], "comment": "x"}, "ends_at"),
        ({"matchers": ["agent_id=w-1"], "duration": "90d", "comment": "x"}, "duration"),
        ({"matchers": ["agent_id=w-1"], "duration": "1h"}, "comment"),
        (
            {
                "matchers": ["a=b"],
                "starts_at": "2026-11-20T13:00:00Z",
                "ends_at": "2026-11-20T12:30:00Z",
                "comment": "x",
            },
            "ends_at",
        ),
    ],
)
def test_it_refuses_a_bad_silence_and_stores_nothing(api, make_operator, body, field):
    _, token = make_operator("operator")

    response = api.post("/api/v1/silences", body, format="json", **bearer(token))

    assert response.status_code == 422, response.content
    assert field in {error["field"] for error in response.json()["errors"]}
    assert not Silence.objects.exists()


@pytest.mark.django_db
def test_viewers_see_silences_but_cannot_make_them(api, make_operator):
    _, token = make_operator("viewer")
    assert api.get("/api/v1/silences", **bearer(token)).status_code == 200
    body = {"matchers": ["a=b"], "duration": "1h", "comment": "x"}
    response = api.post("/api/v1/silences", body, format="json", **bearer(token))
    assert response.status_code == 403


@pytest.mark.django_db
def test_a_flapping_alert_waits_until_it_calms_down(seeded, frozen, settings):
    settings.ALERT_FLAP_COUNT, settings.ALERT_FLAP_WINDOW_SECONDS = 3, 1800
    for n in range(3):
        alert = lose("w-1")
        assert alert.suppressed_by == "" and notified(alert), n
        frozen.shift(timedelta(minutes=2))
        lifecycle.resolve_alert(alert, reason="agent recovered")
        frozen.shift(timedelta(minutes=2))

    flapping = lose("w-1")  # the fourth time in twelve minutes

    flapping.refresh_from_db()
    assert flapping.suppressed_by.startswith("flapping: resolved 3 times")
    assert not notified(flapping)
    # The resolutions were at 2, 6 and 10 minutes: the window holds all three until 32.
    evaluator.sweep(NOW + timedelta(minutes=32))
    assert not notified(flapping)
    evaluator.sweep(NOW + timedelta(minutes=33))
    flapping.refresh_from_db()
    assert flapping.suppressed_by == ""
    assert notified(flapping)
