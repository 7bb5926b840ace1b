"""The alert lifecycle by hand and by sweep: history, acknowledgement with expiry, resolve."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from alerting import evaluator, lifecycle
from alerting.models import Alert, AlertRule, AlertStatus
from monitoring.models import Agent, AgentState
from omoi_console.models import Event
from tests.conftest import bearer

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LOST = {"agent_id": "w-1", "role": "worker"}


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def firing(seeded):
    Agent.objects.create(id="w-1", role="worker", state=AgentState.FAILED, missed_heartbeats=3)
    (alert,) = lifecycle.fire_heartbeat_alerts(LOST)
    return alert


@pytest.fixture
def operator(make_operator):
    user, token = make_operator("operator")
    return user, bearer(token)


def history(alert: Alert) -> list[tuple[str, str]]:
    return list(alert.history.values_list("change", "actor"))


@pytest.mark.django_db
def test_it_keeps_a_history_row_for_every_change(firing, operator, api):
    user, auth = operator
    url = f"/api/v1/alerts/{firing.pk}"
    for action, body in [
        ("acknowledge", {"comment": "on it"}),
        ("unacknowledge", {}),
        ("resolve", {"comment": "host replaced"}),
    ]:
        assert api.post(f"{url}/{action}", body, format="json", **auth).status_code == 200

    firing.refresh_from_db()
    assert history(firing) == [
        ("firing", "alerting"),
        ("acknowledged", f"user:{user.username}"),
        ("unacknowledged", f"user:{user.username}"),
        ("resolved", f"user:{user.username}"),
    ]
    assert firing.history.get(change="acknowledged").detail == "on it"
    assert firing.resolution == f"resolved by {user.username}: host replaced"
    assert firing.status == AlertStatus.RESOLVED


@pytest.mark.django_db
def test_an_acknowledgement_that_expires_fires_the_alert_again(firing, operator, api, frozen):
    _, auth = operator
    response = api.post(
        f"/api/v1/alerts/{firing.pk}/acknowledge",
        {"comment": "looking", "expires_in": "30m"},
        format="json",
        **auth,
    )
    assert response.status_code == 200
    assert response.json()["ack_expires_at"] == "2026-11-20T12:30:00Z"

    frozen.shift(timedelta(minutes=29))
    evaluator.sweep(NOW + timedelta(minutes=29))
    firing.refresh_from_db()
    assert firing.status == AlertStatus.ACKNOWLEDGED

    frozen.shift(timedelta(minutes=1))
    evaluator.sweep(NOW + timedelta(minutes=30))
    firing.refresh_from_db()
    assert firing.status == AlertStatus.FIRING
    assert firing.acknowledged_by is None and firing.ack_expires_at is None
    (event,) = Event.objects.filter(name="monitor.alert.unacknowledged")
    assert event.payload["by"] == "expiry"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [({"expires_in": "10s"}, "expires_in"), ({"expires_in": "soon"}, "expires_in")],
)
def test_it_refuses_a_bad_acknowledgement(firing, operator, api, body, field):
    _, auth = operator
    response = api.post(f"/api/v1/alerts/{firing.pk}/acknowledge", body, format="json", **auth)
    assert response.status_code == 422
    assert {error["field"] for error in response.json()["errors"]} == {field}
    firing.refresh_from_db()
    assert firing.status == AlertStatus.FIRING


@pytest.mark.django_db
def test_it_resolves_by_hand_only_with_a_reason_and_the_permission(firing, api, make_operator):
    _, viewer = make_operator("viewer")
    _, token = make_operator("operator")
    url = f"/api/v1/alerts/{firing.pk}/resolve"

    def post(body, auth):
        return api.post(url, body, format="json", **bearer(auth)).status_code

    assert post({"comment": "x"}, viewer) == 403
    assert post({}, token) == 422
    assert post({"comment": "gone"}, token) == 200
    assert post({"comment": "again"}, token) == 409
    assert api.post(f"/api/v1/alerts/{firing.pk}/unacknowledge", **bearer(token)).status_code == 409
    assert Event.objects.filter(name="monitor.alert.resolved").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("fate, reason", [("delete", "agent deleted"), ("retire", "agent retired")])
def test_it_resolves_alerts_about_agents_that_are_gone(firing, fate, reason):
    agent = Agent.objects.get(pk="w-1")
    if fate == "delete":
        agent.delete()
    else:
        Agent.objects.filter(pk="w-1").update(state=AgentState.TERMINATED)

    assert evaluator.sweep(NOW) == 1

    firing.refresh_from_db()
    assert (firing.status, firing.resolution) == (AlertStatus.RESOLVED, reason)


@pytest.mark.django_db
def test_it_resolves_alerts_of_a_rule_disabled_by_any_path(firing):
    AlertRule.objects.filter(pk=firing.rule_id).update(enabled=False)  # as a rule file would

    evaluator.sweep(NOW)

    firing.refresh_from_db()
    assert (firing.status, firing.resolution) == (AlertStatus.RESOLVED, "rule disabled")
    assert evaluator.sweep(NOW) == 0


@pytest.mark.django_db
def test_an_unacknowledged_critical_alert_escalates_a_level_per_delay(firing, settings):
    settings.ALERT_ESCALATE_AFTER = {"critical": 300, "error": 0, "warning": 0, "info": 0}
    settings.ALERT_MAX_ESCALATION = 2
    assert firing.severity == "critical"

    def level_at(seconds: int) -> int:
        evaluator.sweep(NOW + timedelta(seconds=seconds))
        firing.refresh_from_db()
        return firing.escalation_level

    assert level_at(299) == 0
    assert level_at(300) == 1
    assert level_at(599) == 1
    assert level_at(600) == 2
    assert level_at(900) == 2  # the highest level
    levels = [e.payload["level"] for e in Event.objects.filter(name="monitor.alert.escalated")]
    assert sorted(levels) == [1, 2]
    assert firing.history.filter(change="escalated").count() == 2


@pytest.mark.django_db
def test_an_acknowledged_alert_does_not_escalate(firing, operator, settings):
    settings.ALERT_ESCALATE_AFTER = {"critical": 300, "error": 0, "warning": 0, "info": 0}
    user, _ = operator
    lifecycle.acknowledge_alert(firing, user)

    evaluator.sweep(NOW + timedelta(hours=1))

    firing.refresh_from_db()
    assert firing.escalation_level == 0
    assert not Event.objects.filter(name="monitor.alert.escalated").exists()


@pytest.mark.django_db
def test_an_alert_taken_again_after_it_was_given_back_publishes_again(firing, operator, frozen):
    user, _ = operator
    lifecycle.acknowledge_alert(firing, user)
    lifecycle.unacknowledge_alert(firing, f"user:{user.username}")
    frozen.shift(timedelta(seconds=5))

    lifecycle.acknowledge_alert(firing, user)

    assert Event.objects.filter(name="monitor.alert.acknowledged").count() == 2


@pytest.mark.django_db
def test_it_resolves_metric_alerts_about_an_agent_that_was_retired(seeded):
    rule = AlertRule.objects.get(name="queue-depth-high")
    Agent.objects.create(id="w-9", role="worker", state=AgentState.TERMINATED)
    alert = lifecycle.fire_alert(rule, {"agent": "w-9", "queue": "inbox"}, value=2000.0)

    evaluator.sweep(NOW)

    alert.refresh_from_db()
    assert (alert.status, alert.resolution) == (AlertStatus.RESOLVED, "agent retired")


@pytest.mark.django_db
def test_each_escalation_level_tells_that_levels_receivers_of_the_alerts_route(
    firing, settings, django_capture_on_commit_callbacks
):
    from alerting.models import Notification, Receiver, Route

    settings.ALERT_ESCALATE_AFTER = {"critical": 300, "error": 0, "warning": 0, "info": 0}
    settings.ALERT_MAX_ESCALATION = 3
    for name in ("oncall", "secondary", "lead"):
        Receiver.objects.create(name=name, kind="console")
    team = Route.objects.create(
        name="workers", matchers=["role=worker"], escalation=[["secondary"], ["lead"]]
    )
    team.receivers.set(Receiver.objects.filter(name="oncall"))
    Route.objects.create(name="workers-child", parent=team, matchers=["agent_id=~.+"])

    def told_at(seconds: int) -> list[str]:
        with django_capture_on_commit_callbacks(execute=True):
            evaluator.sweep(NOW + timedelta(seconds=seconds))
        escalated = Notification.objects.filter(alert=firing, kind="escalated")
        return sorted(escalated.values_list("receiver__name", flat=True))

    assert told_at(299) == []
    assert told_at(300) == ["secondary"]  # inherited by the child route that delivers it
    assert told_at(600) == ["lead", "secondary"]
    assert told_at(900) == ["lead", "secondary"]  # no third level: nobody more to tell
    assert Notification.objects.get(alert=firing, receiver__name="lead").status == "sent"


@pytest.mark.django_db
def test_alerts_no_route_takes_escalate_to_the_configured_receivers(
    firing, settings, django_capture_on_commit_callbacks
):
    from alerting.models import Notification, Receiver

    settings.ALERT_ESCALATE_AFTER = {"critical": 300, "error": 0, "warning": 0, "info": 0}
    settings.ALERT_ESCALATE_TO = ["secondary"]
    Receiver.objects.create(name="secondary", kind="console")

    with django_capture_on_commit_callbacks(execute=True):
        evaluator.sweep(NOW + timedelta(seconds=300))

    [told] = Notification.objects.filter(alert=firing, kind="escalated")
    assert told.receiver.name == "secondary"


@pytest.mark.django_db
def test_a_route_refuses_escalation_to_receivers_that_do_not_exist(seeded):
    from django.core.exceptions import ValidationError

    from alerting.models import Route

    for escalation, message in [
        ([["nobody"]], "No receiver named nobody"),
        ([["console"], []], "A list of levels"),
        ("console", "A list of levels"),
    ]:
        with pytest.raises(ValidationError) as caught:
            Route(name="r", escalation=escalation).full_clean()
        assert message in str(caught.value.message_dict["escalation"])


@pytest.mark.django_db
def test_escalation_counts_from_when_people_were_last_asked_to_act(firing, operator, settings):
    settings.ALERT_ESCALATE_AFTER = {"critical": 300, "error": 0, "warning": 0, "info": 0}
    user, _ = operator
    with time_machine.travel(NOW + timedelta(seconds=100), tick=False):
        lifecycle.acknowledge_alert(firing, user)
    with time_machine.travel(NOW + timedelta(hours=1), tick=False):
        lifecycle.unacknowledge_alert(firing, f"user:{user.username}")

    def level_at(seconds: int) -> int:
        evaluator.sweep(NOW + timedelta(hours=1, seconds=seconds))
        firing.refresh_from_db()
        return firing.escalation_level

    # Given back after an hour: nobody has been asked for 300 s yet.
    assert level_at(1) == 0
    assert level_at(299) == 0
    assert level_at(300) == 1
