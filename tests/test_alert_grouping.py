"""Grouping as Alertmanager does it: group_by, group_wait, group_interval and
repeat_interval, per route and receiver, against a local webhook receiver."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from alerting import delivery, lifecycle
from alerting.models import (
    Alert,
    AlertGroup,
    AlertRule,
    Notification,
    NotificationKind,
    NotificationStatus,
    Receiver,
    Route,
)
from alerting.routing import destinations
from tests.conftest import bearer
from tests.delivery_receivers import HttpReceiver

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def grouped(settings, seeded):
    """Alertmanager's defaults at the top of the tree; only the test's webhook hears."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.ALERT_GROUP_BY = ["alertname"]
    settings.ALERT_GROUP_WAIT_SECONDS = 30
    settings.ALERT_GROUP_INTERVAL_SECONDS = 300
    settings.ALERT_REPEAT_INTERVAL_SECONDS = 3600
    Receiver.objects.update(default=False)


@pytest.fixture
def hook():
    with HttpReceiver() as receiver:
        Receiver.objects.create(
            name="hook", kind="webhook", default=True, config={"url": receiver.url}
        )
        yield receiver


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def at(clock, django_capture_on_commit_callbacks):
    """Move the clock to T0 + seconds and run what is due then, as the periodic job does."""

    def move(seconds: float) -> None:
        clock.move_to(T0 + timedelta(seconds=seconds))
        with django_capture_on_commit_callbacks(execute=True):
            delivery.deliver_due_notifications()

    return move


@pytest.fixture
def fire(django_capture_on_commit_callbacks):
    def fire(agent: str, **labels) -> Alert:
        rule = AlertRule.objects.get(name="agent-heartbeat")
        with django_capture_on_commit_callbacks(execute=True):
            return lifecycle.fire_alert(rule, {"agent_id": agent, "role": "worker", **labels})

    return fire


@pytest.fixture
def resolve(django_capture_on_commit_callbacks):
    def resolve(alert: Alert) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            lifecycle.resolve_alert(alert, reason="recovered")

    return resolve


def told(request) -> list[tuple[str, str]]:
    """(agent, status) of each alert in one webhook payload."""
    return [(a["labels"]["agent_id"], a["status"]) for a in request.json()["alerts"]]


@pytest.mark.django_db
def test_it_waits_group_wait_then_sends_the_groups_alerts_in_one_notification(
    hook, clock, at, fire
):
    fire("worker-01")
    at(10)
    fire("worker-02")
    at(29)
    assert hook.requests == []

    at(30)

    [request] = hook.requests
    assert sorted(told(request)) == [("worker-01", "firing"), ("worker-02", "firing")]
    payload = request.json()
    assert payload["groupLabels"] == {"alertname": "agent-heartbeat"}
    assert payload["commonLabels"]["role"] == "worker"
    assert "agent_id" not in payload["commonLabels"]
    assert payload["groupKey"] == '{}:{alertname="agent-heartbeat"}'
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.django_db
def test_alerts_that_changed_together_plan_their_group_once_and_go_out_together(
    hook, clock, at, fire, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(lifecycle, "notify_many", lambda alerts, kind, **options: [])
    alerts = [fire(f"worker-{n:02}") for n in range(5)]
    monkeypatch.undo()

    with django_capture_on_commit_callbacks() as handed_over:
        created = delivery.notify_many(alerts, NotificationKind.FIRING)

    assert len(created) == 5
    assert AlertGroup.objects.count() == 1
    assert {(n.group_id, n.next_attempt_at) for n in created} == {
        (AlertGroup.objects.get().pk, T0 + timedelta(seconds=30))
    }
    assert len(handed_over) == 1  # the task takes the group's due mates with it
    assert delivery.notify_many(alerts, NotificationKind.FIRING) == []
    at(30)
    [request] = hook.requests
    assert sorted(told(request)) == [(f"worker-{n:02}", "firing") for n in range(5)]


@pytest.mark.django_db
def test_it_never_tells_of_an_alert_that_resolved_within_group_wait(hook, clock, at, fire, resolve):
    alert = fire("worker-01")
    at(10)
    resolve(alert)
    at(60)
    at(400)

    assert hook.requests == []
    [notification] = Notification.objects.all()
    assert notification.kind == NotificationKind.FIRING
    assert notification.status == NotificationStatus.CANCELLED


@pytest.mark.django_db
def test_it_holds_changes_to_a_notified_group_until_its_next_interval(
    hook, clock, at, fire, resolve
):
    first = fire("worker-01")
    at(30)
    fire("worker-02")
    at(60)
    resolve(first)
    at(329)
    assert len(hook.requests) == 1

    at(330)

    assert len(hook.requests) == 2
    assert sorted(told(hook.requests[1])) == [("worker-01", "resolved"), ("worker-02", "firing")]
    assert hook.requests[1].json()["status"] == "firing"


@pytest.mark.django_db
def test_it_sends_the_whole_firing_group_with_each_change(hook, clock, at, fire):
    fire("worker-01")
    at(30)
    fire("worker-02")
    at(330)

    # worker-01 was told already; it still fires, so it rides along with worker-02.
    assert sorted(told(hook.requests[1])) == [("worker-01", "firing"), ("worker-02", "firing")]
    kinds = Notification.objects.filter(alert__labels__agent_id="worker-01")
    assert kinds.count() == 1


@pytest.mark.django_db
def test_a_group_whose_alerts_all_ended_starts_over_with_group_wait(hook, clock, at, fire, resolve):
    alert = fire("worker-01")
    at(30)
    resolve(alert)
    at(330)
    assert [r.json()["status"] for r in hook.requests] == ["firing", "resolved"]

    at(1000)
    fire("worker-01")
    at(1029)
    assert len(hook.requests) == 2
    at(1030)
    assert len(hook.requests) == 3


@pytest.mark.django_db
def test_it_repeats_firing_alerts_on_the_repeat_interval_but_not_acknowledged_ones(
    hook, clock, at, fire, admin_user
):
    fire("worker-01")
    quiet = fire("worker-02")
    at(30)
    lifecycle.acknowledge_alert(quiet, admin_user)
    at(30 + 3599)
    assert len(hook.requests) == 1

    at(30 + 3600)

    assert len(hook.requests) == 2
    repeat = hook.requests[1]
    assert told(repeat) == [("worker-01", "firing")]
    assert Notification.objects.filter(kind=NotificationKind.REPEAT).count() == 1
    at(30 + 7200)
    assert len(hook.requests) == 3


@pytest.mark.django_db
def test_the_repeat_interval_counts_in_whole_group_intervals(settings, hook, clock, at, fire):
    settings.ALERT_REPEAT_INTERVAL_SECONDS = 420  # 7 minutes; the interval is 5
    fire("worker-01")
    at(30)
    at(30 + 599)
    assert len(hook.requests) == 1
    at(30 + 600)
    assert len(hook.requests) == 2


@pytest.mark.django_db
def test_a_routes_own_grouping_overrides_the_top_and_its_children_inherit_it(hook, clock):
    team = Route.objects.create(
        name="team-a",
        matchers=["owner=team-a"],
        group_by=["owner"],
        group_wait=timedelta(seconds=5),
    )
    team.receivers.set([Receiver.objects.get(name="hook")])
    Route.objects.create(name="team-a-db", parent=team, matchers=["role=database"])

    [own] = destinations({"owner": "team-a", "role": "worker"})
    [child] = destinations({"owner": "team-a", "role": "database"})

    assert own.grouping.group_by == ("owner",)
    assert own.grouping.group_wait == timedelta(seconds=5)
    assert own.grouping.group_interval == timedelta(seconds=300)
    assert child.route.name == "team-a-db"
    assert child.grouping == own.grouping


@pytest.mark.django_db
def test_alerts_of_two_teams_go_out_in_two_groups(hook, clock, at, fire):
    route = Route.objects.create(
        name="by-owner", group_by=["owner"], group_wait=timedelta(seconds=5)
    )
    route.receivers.set([Receiver.objects.get(name="hook")])

    fire("worker-01", owner="team-a")
    fire("worker-02", owner="team-b")
    fire("worker-03", owner="team-a")
    at(5)

    groups = sorted(tuple(sorted(agent for agent, _ in told(r))) for r in hook.requests)
    assert groups == [("worker-01", "worker-03"), ("worker-02",)]
    assert sorted(r.json()["groupLabels"]["owner"] for r in hook.requests) == ["team-a", "team-b"]
    assert AlertGroup.objects.count() == 2


@pytest.mark.django_db
def test_a_grouped_notification_taken_with_its_group_is_not_sent_twice(hook, clock, at, fire):
    fire("worker-01")
    fire("worker-02")
    clock.move_to(T0 + timedelta(seconds=30))
    first, second = Notification.objects.order_by("pk")

    assert delivery.deliver_notification(second.pk) == NotificationStatus.SENT
    assert delivery.deliver_notification(first.pk) is None

    [request] = hook.requests
    assert len(told(request)) == 2


@pytest.mark.django_db
def test_the_console_and_alertmanager_channels_do_not_wait_for_groups(clock, fire):
    console = Receiver.objects.get(kind="console")
    console.default = True
    console.save()

    fire("worker-01")

    assert Notification.objects.get(receiver=console).status == NotificationStatus.SENT


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"group_by": ["owner", "bad label"]}, "group_by"),
        ({"group_by": ["...", "owner"]}, "group_by"),
        ({"group_by": "owner"}, "group_by"),
        ({"group_wait": "soon"}, "group_wait"),
        ({"group_interval": "0s"}, "group_interval"),
        ({"group_interval": "5m", "repeat_interval": "1m"}, "repeat_interval"),
    ],
)
def test_the_api_refuses_bad_grouping_by_field(api, make_operator, body, field):
    _, token = make_operator("admin")
    response = api.post("/api/v1/routes", {"name": "r", **body}, format="json", **bearer(token))

    assert response.status_code == 422, response.content
    assert field in {error["field"] for error in response.json()["errors"]}
    assert not Route.objects.exists()


@pytest.mark.django_db
def test_the_api_takes_grouping_as_text_and_gives_it_back(api, make_operator):
    _, token = make_operator("admin")
    response = api.post(
        "/api/v1/routes",
        {
            "name": "r",
            "group_by": ["owner"],
            "group_wait": "10s",
            "group_interval": "2m",
            "repeat_interval": "3h",
        },
        format="json",
        **bearer(token),
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["group_wait"], body["group_interval"], body["repeat_interval"]) == (
        "10s",
        "2m",
        "3h",
    )
    assert Route.objects.get().group_interval == timedelta(minutes=2)


@pytest.mark.django_db
def test_retention_drops_idle_groups_but_keeps_those_with_work_or_records(
    settings, hook, clock, at, fire
):
    from alerting.retention import ALERT_GROUPS

    settings.RETAIN_NOTIFICATIONS_DAYS = 1
    fire("worker-01")
    at(30)
    receiver = Receiver.objects.get(name="hook")
    idle = AlertGroup.objects.create(key="i" * 64, receiver=receiver, created_at=T0)
    waiting = AlertGroup.objects.create(
        key="w" * 64, receiver=receiver, created_at=T0, flush_at=T0 + timedelta(days=9)
    )
    clock.move_to(T0 + timedelta(days=2))

    ALERT_GROUPS.prune_batch(T0 + timedelta(days=2), 100)

    left = set(AlertGroup.objects.values_list("pk", flat=True))
    assert idle.pk not in left
    assert waiting.pk in left
    assert len(left) == 2  # the fired alert's group keeps its notification's record
