"""Rule kinds, their checks, label matchers and the evaluator's alert lifecycle."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection
from structlog.testing import capture_logs

from alerting import evaluator, matchers, routing
from alerting.models import Alert, AlertRule, AlertStatus, Notification
from alerting.rules import KINDS
from monitoring.models import Agent, AgentState, MetricSeries, MonitorAnomaly
from omoi_console.models import Event
from tests.rollup_rows import make_series, write_rollups
from tests.row_locks import held_by_another_worker

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
START = NOW - timedelta(minutes=10)


def rule(**fields) -> AlertRule:
    defaults = {
        "name": "queue-deep",
        "kind": "threshold",
        "summary": "Queue {queue} of {agent} is {value} deep",
        "metric": "queue_depth",
        "aggregation": "avg",
        "window": timedelta(minutes=5),
        "group_by": ["agent", "queue"],
        "operator": ">",
        "threshold": 100.0,
    }
    defaults.update(fields)
    return AlertRule(**defaults)


def saved(**fields) -> AlertRule:
    made = rule(**fields)
    made.full_clean()
    made.save()
    return made


def problems(**fields) -> dict:
    with pytest.raises(ValidationError) as caught:
        rule(**fields).full_clean()
    return caught.value.message_dict


def depth(values_per_minute: list[float], **labels) -> MetricSeries:
    """queue_depth of one queue: one value per minute for the ten minutes before NOW."""
    series = make_series("queue_depth", **(labels or {"agent": "a-1", "queue": "inbox"}))
    write_rollups(series, START, {m: [v] for m, v in enumerate(values_per_minute)})
    return series


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def evaluate(target: AlertRule, at: datetime | None = None) -> list[Alert]:
    evaluator.evaluate_rule(target, at or NOW)
    target.refresh_from_db()
    assert target.last_error == ""
    return list(Alert.objects.filter(rule=target).order_by("id"))


# --- kinds and checks ---------------------------------------------------------------


def test_it_offers_exactly_the_kinds_some_module_evaluates():
    field = AlertRule._meta.get_field("kind")
    assert {value for value, _ in field.choices} == set(KINDS)
    assert {"heartbeat", "threshold", "anomaly", "absent", "agent"} <= set(KINDS)
    for kind in KINDS.values():
        assert kind.event_driven or type(kind).evaluate is not type(kind).__mro__[-2].evaluate


@pytest.mark.django_db
def test_it_accepts_a_complete_threshold_rule():
    rule().full_clean()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"kind": "magic"}, "kind", "Unknown kind"),
        ({"metric": "no_such_metric"}, "metric", "not a metric"),
        ({"metric": ""}, "metric", "need metric"),
        ({"threshold": None}, "threshold", "need threshold"),
        ({"matchers": ["queue"]}, "matchers", "not a matcher"),
        ({"matchers": ["queue=~("]}, "matchers", "not a regular expression"),
        ({"matchers": ["colour=red"]}, "matchers", "no label colour"),
        ({"matchers": "queue=inbox"}, "matchers", "a list"),
        ({"group_by": ["colour"]}, "group_by", "no label colour"),
        ({"group_by": ["agent", "agent"]}, "group_by", "named twice"),
        ({"window": timedelta(seconds=20)}, "window", "1 minute"),
        ({"for_duration": timedelta(seconds=-1)}, "for_duration", "0 to 7 days"),
        ({"summary": "Queue {queue"}, "summary", "unbalanced brace"),
        ({"summary": "Queue {colour} is deep"}, "summary", "unknown placeholder {colour}"),
        ({"annotations": {"description": "see {nothing}"}}, "annotations", "{nothing}"),
        ({"params": {"lookback": 60}}, "params", "no parameter 'lookback'"),
    ],
)
def test_it_names_the_field_that_is_wrong(fields, field, words):
    found = problems(**fields)
    assert field in found, found
    assert any(words in message for message in found[field]), found[field]


@pytest.mark.django_db
def test_it_refuses_fields_the_kind_does_not_use():
    found = problems(kind="heartbeat", summary="Agent {agent_id} is down")
    for field in ("metric", "aggregation", "window", "operator", "threshold", "group_by"):
        assert "do not use" in found[field][0]


@pytest.mark.django_db
def test_it_checks_the_parameters_of_agent_rules():
    base = {
        "kind": "agent",
        "metric": "",
        "aggregation": "",
        "window": None,
        "group_by": [],
        "operator": "",
        "threshold": None,
        "summary": "Agent {agent_id} of {owner} failed",
    }
    assert "Give states" in problems(**base)["params"][0]
    assert "agent states" in problems(**base, params={"states": ["asleep"]})["params"][0]
    rule(**base, params={"states": ["failed"], "reported": True}).full_clean()


# --- matchers -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "text",
    ["queue=inbox", "queue!=inbox", "queue=~in.*", "queue!~in.*", "queue=", "queue!=", "queue=~"],
)
def test_it_matches_in_the_database_exactly_as_in_python(text):
    label_sets = [{"queue": "inbox"}, {"queue": "outbox"}, {"queue": ""}, {"other": "x"}]
    for n, labels in enumerate(label_sets):
        MetricSeries.objects.create(metric="queue_depth", labels=labels, fingerprint=str(n))
    matcher = matchers.parse(text)

    in_sql = set(
        MetricSeries.objects.filter(matcher.q("labels")).values_list("fingerprint", flat=True)
    )

    in_python = {str(n) for n, labels in enumerate(label_sets) if matcher.matches(labels)}
    assert in_sql == in_python


def test_it_anchors_regular_expressions_and_treats_a_missing_label_as_empty():
    assert matchers.parse("queue=~in").matches({"queue": "inbox"}) is False
    assert matchers.parse('queue="inbox"').value == "inbox"
    assert matchers.parse("queue=").matches({}) is True
    assert matchers.parse("queue!=inbox").matches({}) is True


# --- the evaluator -------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "operator, fires",
    [(">", False), (">=", True), ("<", False), ("<=", True), ("==", True), ("!=", False)],
)
def test_it_compares_at_the_boundary(operator, fires):
    depth([100.0] * 10)  # the average over the window is exactly the threshold
    target = saved(operator=operator)

    alerts = evaluate(target)

    assert bool(alerts) is fires
    if fires:
        assert alerts[0].value == 100.0
        assert alerts[0].labels == {"agent": "a-1", "queue": "inbox"}


@pytest.mark.django_db
def test_it_groups_by_labels_and_alerts_per_group():
    depth([150.0] * 10, agent="a-1", queue="inbox")
    depth([50.0] * 10, agent="a-1", queue="outbox")
    depth([300.0] * 10, agent="a-2", queue="inbox")
    target = saved()

    alerts = evaluate(target)

    assert sorted((a.labels["agent"], a.labels["queue"]) for a in alerts) == [
        ("a-1", "inbox"),
        ("a-2", "inbox"),
    ]
    assert {a.status for a in alerts} == {AlertStatus.FIRING}
    assert alerts[0].summary == "Queue inbox of a-1 is 150 deep"


@pytest.mark.django_db
def test_alerts_grouped_by_agent_carry_its_owner_and_role():
    Agent.objects.create(id="a-1", role="worker", owner="team-a")
    depth([150.0] * 10)
    target = saved(summary="Queue {queue} of {owner}'s {role} {agent} is deep")

    (alert,) = evaluate(target)

    assert alert.labels == {"agent": "a-1", "queue": "inbox", "owner": "team-a", "role": "worker"}
    assert alert.summary == "Queue inbox of team-a's worker a-1 is deep"


@pytest.mark.django_db
def test_it_reduces_the_window_as_asked():
    # Minutes 0..9 before NOW; a 5 minute window sees minutes 5..9 only.
    depth([1000.0] * 5 + [10.0, 20.0, 30.0, 40.0, 50.0])
    expected = {"avg": 30.0, "max": 50.0, "min": 10.0, "sum": 150.0, "count": 5.0}
    for aggregation, value in expected.items():
        target = saved(name=f"q-{aggregation}", aggregation=aggregation, operator=">=", threshold=0)
        (alert,) = evaluate(target)
        assert alert.value == pytest.approx(value), aggregation


@pytest.mark.django_db
def test_it_merges_sketches_for_percentiles_and_sums_rates_per_group():
    series = make_series("task_latency_seconds", agent="a-1", task_kind="build")
    write_rollups(series, START, {m: [float(v) for v in range(1, 101)] for m in range(10)})
    p95 = saved(
        name="latency",
        metric="task_latency_seconds",
        aggregation="p95",
        group_by=["agent"],
        summary="p95 of {agent} is {value}",
        threshold=90,
    )
    (alert,) = evaluate(p95)
    assert alert.value == pytest.approx(95.0, rel=0.02)

    for n in range(2):
        counter = make_series("task_failures_total", agent="a-1", task_kind="k", reason=str(n))
        write_rollups(counter, START, {m: [float(m * 60)] for m in range(10)})
    rate = saved(
        name="failing",
        metric="task_failures_total",
        aggregation="rate",
        group_by=["agent"],
        summary="{agent} fails",
        threshold=1.0,
    )
    (alert,) = evaluate(rate)
    # Each counter grows 60 per minute: over minutes 5..9 that is 240 in 300 s, twice.
    assert alert.value == pytest.approx(2 * 240 / 300)


@pytest.mark.django_db
def test_it_keeps_an_alert_pending_for_the_rules_for_then_fires_it(frozen):
    depth([150.0] * 10)
    target = saved(for_duration=timedelta(minutes=2))

    (alert,) = evaluate(target)
    assert alert.status == AlertStatus.PENDING
    assert not Event.objects.filter(name="monitor.alert.triggered").exists()
    assert not Notification.objects.exists()

    (alert,) = evaluate(target, NOW + timedelta(seconds=119))
    assert alert.status == AlertStatus.PENDING

    (alert,) = evaluate(target, NOW + timedelta(seconds=120))
    assert alert.status == AlertStatus.FIRING
    assert Event.objects.filter(name="monitor.alert.triggered").count() == 1
    assert Notification.objects.filter(alert=alert).exists()


@pytest.mark.django_db
def test_a_rule_without_for_writes_its_new_alerts_firing_without_a_pending_step():
    depth([150.0] * 10, agent="a-1", queue="inbox")
    depth([150.0] * 10, agent="a-2", queue="inbox")
    target = saved()

    alerts = evaluate(target)

    assert [a.status for a in alerts] == [AlertStatus.FIRING] * 2
    assert {(a.fired_at, a.announced_at) for a in alerts} == {(NOW, NOW)}
    for alert in alerts:
        assert list(alert.history.values_list("change", flat=True)) == ["firing"]
        assert Notification.objects.filter(alert=alert).exists()
    assert Event.objects.filter(name="monitor.alert.triggered").count() == 2


@pytest.mark.django_db
def test_a_firing_alert_that_still_matches_is_written_only_when_its_value_moves():
    from django.test.utils import CaptureQueriesContext

    series = depth([150.0] * 10)
    target = saved()
    (alert,) = evaluate(target)
    assert (alert.value, alert.summary) == (150.0, "Queue inbox of a-1 is 150 deep")

    with CaptureQueriesContext(connection) as seen:
        (alert,) = evaluate(target, NOW + timedelta(seconds=15))
    writes = [q["sql"] for q in seen.captured_queries if q["sql"].startswith("UPDATE")]
    assert not [sql for sql in writes if '"alerting_alert"' in sql.split("SET")[0]], writes
    assert (alert.status, alert.value) == (AlertStatus.FIRING, 150.0)

    with connection.cursor() as cursor:
        cursor.execute("UPDATE monitor_rollups SET sum = 300 WHERE series_id = %s", [series.pk])
    (alert,) = evaluate(target, NOW + timedelta(seconds=30))
    assert (alert.status, alert.value) == (AlertStatus.FIRING, 300.0)
    assert alert.summary == "Queue inbox of a-1 is 300 deep"


@pytest.mark.django_db
def test_it_drops_a_pending_alert_silently_when_the_condition_clears():
    series = depth([150.0] * 10)
    target = saved(for_duration=timedelta(minutes=5))
    evaluate(target)

    with connection.cursor() as cursor:
        cursor.execute("UPDATE monitor_rollups SET sum = 1 WHERE series_id = %s", [series.pk])
    (alert,) = evaluate(target, NOW + timedelta(seconds=30))

    assert alert.status == AlertStatus.RESOLVED
    assert not Notification.objects.exists()
    assert not Event.objects.filter(name__startswith="monitor.alert.").exists()


@pytest.mark.django_db
def test_it_keeps_firing_for_a_while_from_the_first_evaluation_that_found_it_cleared():
    series = depth([150.0] * 10)
    target = saved(keep_firing_for=timedelta(minutes=1))
    evaluate(target)

    def set_sum(value: float) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE monitor_rollups SET sum = %s WHERE series_id = %s", [value, series.pk]
            )

    set_sum(1)
    (alert,) = evaluate(target, NOW + timedelta(seconds=15))
    assert (alert.status, alert.cleared_at) == (AlertStatus.FIRING, NOW + timedelta(seconds=15))
    # Back before the minute is over: the count starts again at the next clearing.
    set_sum(150)
    (alert,) = evaluate(target, NOW + timedelta(seconds=30))
    assert (alert.status, alert.cleared_at) == (AlertStatus.FIRING, None)

    set_sum(1)
    evaluate(target, NOW + timedelta(seconds=45))
    (alert,) = evaluate(target, NOW + timedelta(seconds=104))
    assert (alert.status, alert.cleared_at) == (AlertStatus.FIRING, NOW + timedelta(seconds=45))
    (alert,) = evaluate(target, NOW + timedelta(seconds=105))
    assert alert.status == AlertStatus.RESOLVED
    assert Event.objects.filter(name="monitor.alert.resolved").count() == 1


@pytest.mark.django_db
def test_it_resolves_at_once_without_keep_firing_for():
    series = depth([150.0] * 10)
    target = saved()
    evaluate(target)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE monitor_rollups SET sum = 1 WHERE series_id = %s", [series.pk])

    (alert,) = evaluate(target, NOW + timedelta(seconds=15))

    assert alert.status == AlertStatus.RESOLVED


@pytest.mark.django_db
def test_it_alerts_on_a_group_that_went_silent():
    depth([5.0] * 10, agent="a-1", queue="inbox")
    depth([5.0] * 4, agent="a-2", queue="inbox")  # nothing in the last six minutes
    target = saved(
        name="silent",
        kind="absent",
        aggregation="",
        operator="",
        threshold=None,
        group_by=["agent"],
        window=timedelta(minutes=3),
        summary="{agent} sends no queue depth",
    )

    (alert,) = evaluate(target)

    assert alert.labels == {"agent": "a-2"}
    assert alert.value == 7 * 60.0  # its last minute began seven minutes ago


@pytest.mark.django_db
def test_it_alerts_on_open_anomalies_and_agents_that_reported_failure(seeded):
    series = depth([5.0] * 10)
    MonitorAnomaly.objects.create(
        series=series,
        metric="queue_depth",
        agent_id="a-1",
        started_at=NOW - timedelta(minutes=3),
        peak_score=0.9,
        direction="up",
        detector="robust_seasonal",
        severity="error",
    )
    anomalies = saved(
        name="anomalous",
        kind="anomaly",
        aggregation="",
        operator="",
        threshold=None,
        window=None,
        group_by=["agent"],
        params={"min_severity": "error"},
        summary="{agent} is anomalous",
    )
    (alert,) = evaluate(anomalies)
    assert (alert.labels, alert.value) == ({"agent": "a-1"}, 0.9)

    Agent.objects.create(id="w-1", role="worker", owner="team-a", state=AgentState.FAILED)
    Agent.objects.create(
        id="w-2", role="worker", state=AgentState.FAILED, missed_heartbeats=3
    )  # went silent: the heartbeat rule's business
    reported = saved(
        name="reported-failed",
        kind="agent",
        metric="",
        aggregation="",
        operator="",
        threshold=None,
        window=None,
        group_by=[],
        params={"states": ["failed"], "reported": True},
        summary="Agent {agent_id} of {owner} reported failure",
    )
    (alert,) = evaluate(reported)
    assert alert.labels == {"agent_id": "w-1", "role": "worker", "owner": "team-a"}


@pytest.mark.django_db
def test_it_records_a_broken_rule_and_goes_on_with_the_others(monkeypatch):
    depth([150.0] * 10)
    broken, fine = saved(name="broken"), saved(name="fine")
    real = KINDS["threshold"].evaluate

    def explode(self_rule, now):
        if self_rule.name == "broken":
            raise RuntimeError("boom")
        return real(self_rule, now)

    def explode_together(rules, now):
        raise RuntimeError("boom")

    monkeypatch.setattr(KINDS["threshold"], "evaluate", explode)
    # The two share their read; failing together, each is evaluated alone.
    monkeypatch.setattr(KINDS["threshold"], "evaluate_many", explode_together)

    assert evaluator.evaluate_due(NOW) == 2

    broken.refresh_from_db()
    assert "boom" in broken.last_error
    assert Alert.objects.filter(rule=fine).count() == 1
    assert broken.next_evaluation_at == NOW + broken.evaluate_every
    assert AlertRule.objects.get(name="fine").last_evaluated_at == NOW

    # Mended, its next turn clears the error.
    monkeypatch.undo()
    later = NOW + broken.evaluate_every
    assert evaluator.evaluate_due(later) == 2
    assert set(
        AlertRule.objects.filter(pk__in=[broken.pk, fine.pk]).values_list(
            "last_evaluated_at", "last_error"
        )
    ) == {(later, "")}


@pytest.mark.django_db
def test_a_rule_whose_changes_break_the_batchs_is_evaluated_alone_and_the_others_go_on(
    monkeypatch,
):
    depth([150.0] * 10)
    broken, fine = saved(name="broken"), saved(name="fine")
    real = evaluator.Changes.plan

    def plan(self, rule, *args):
        if rule.name == "broken":
            raise RuntimeError("boom")
        return real(self, rule, *args)

    monkeypatch.setattr(evaluator.Changes, "plan", plan)

    assert evaluator.evaluate_due(NOW) == 2

    broken.refresh_from_db()
    assert "boom" in broken.last_error
    assert not Alert.objects.filter(rule=broken).exists()
    (alert,) = Alert.objects.filter(rule=fine)
    assert alert.status == AlertStatus.FIRING
    assert Event.objects.filter(name="monitor.alert.triggered").count() == 1


@pytest.mark.django_db
def test_rules_that_change_together_are_written_in_statements_that_do_not_grow_with_them(
    django_capture_on_commit_callbacks,
):
    from django.test.utils import CaptureQueriesContext

    depth([150.0] * 10)
    Agent.objects.create(id="a-1", role="worker", owner="team-a")

    def statements(count: int, at: datetime) -> int:
        AlertRule.objects.update(next_evaluation_at=at + timedelta(days=1))  # not due
        for n in range(count):
            saved(name=f"deep-{count}-{n}", next_evaluation_at=at)
        with (
            django_capture_on_commit_callbacks(),
            CaptureQueriesContext(connection) as seen,
        ):
            assert evaluator.evaluate_due(at) == count
        return len(seen.captured_queries)

    few, many = statements(2, NOW), statements(12, NOW)

    assert Alert.objects.filter(status=AlertStatus.FIRING).count() == 14
    assert many - few <= 4, (few, many)


@pytest.mark.django_db
def test_it_evaluates_a_rule_again_only_when_it_is_due():
    depth([150.0] * 10)
    saved(evaluate_every=timedelta(seconds=30))

    assert evaluator.evaluate_due(NOW) == 1
    assert evaluator.evaluate_due(NOW + timedelta(seconds=29)) == 0
    assert evaluator.evaluate_due(NOW + timedelta(seconds=30)) == 1


@pytest.mark.django_db(transaction=True)
def test_it_leaves_a_rule_another_worker_has_claimed():
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    taken, free = saved(name="taken"), saved(name="free")

    with held_by_another_worker(AlertRule.objects.filter(pk=taken.pk)):
        claimed = evaluator.claim(NOW)

    assert [r.name for r in claimed] == [free.name]


# --- defaults, files and the API ------------------------------------------------------


@pytest.mark.django_db
def test_it_ships_default_rules_that_pass_their_own_checks_with_runbooks(seeded):
    from pathlib import Path

    from alerting.builtins import DEFAULT_RULES

    names = {document["name"] for document in DEFAULT_RULES}
    assert names <= set(AlertRule.objects.values_list("name", flat=True))
    root = Path(__file__).resolve().parent.parent
    for stored in AlertRule.objects.filter(name__in=names):
        stored.full_clean()
        assert (root / stored.annotations["runbook_url"]).is_file(), stored.name


@pytest.mark.django_db
def test_it_round_trips_rules_through_yaml_without_loss(seeded):
    from alerting import rule_files

    saved(
        name="custom",
        matchers=["queue=~in.*", "agent!=a-9"],
        for_duration=timedelta(minutes=2, seconds=30),
        keep_firing_for=timedelta(hours=1),
        threshold=0.1 + 0.2,  # a float that only repr keeps exactly
        labels={"team": "core"},
        annotations={"description": "Queue {queue} is deep"},
    )
    exported = rule_files.dump()

    AlertRule.objects.all().delete()
    result = rule_files.load(exported)

    assert "custom" in result.created
    assert rule_files.dump() == exported
    again = rule_files.load(exported)
    assert again.created == again.updated == []
    assert AlertRule.objects.get(name="custom").threshold == 0.1 + 0.2


@pytest.mark.django_db
def test_it_imports_all_or_nothing_and_names_every_problem():
    from alerting import rule_files

    text = """
rules:
  - name: fine
    kind: threshold
    summary: deep
    metric: queue_depth
    aggregation: avg
    window: 5m
    condition: "> 1"
  - name: broken
    kind: threshold
    summary: "{nope}"
    metric: queue_depth
    aggregation: avg
    window: 5 minutes
    condition: "greater than 1"
"""
    with pytest.raises(rule_files.RuleFileError) as caught:
        rule_files.load(text)

    reported = "\n".join(caught.value.problems)
    assert "rule 'broken': window:" in reported
    assert "rule 'broken': condition: Cannot parse" in reported
    assert not AlertRule.objects.filter(name__in=["fine", "broken"]).exists()
    for bad, words in [
        ("rules: [", "not YAML"),
        ("- a list", "a mapping"),
        ("rules:\n  - {name: a, colour: red}", "unknown field 'colour'"),
        ("rules:\n  - {name: a}\n  - {name: a}", "twice"),
    ]:
        with pytest.raises(rule_files.RuleFileError) as caught:
            rule_files.load(bad)
        assert words in caught.value.problems[0]


@pytest.mark.django_db
def test_it_imports_and_exports_from_the_command_line(tmp_path, seeded):
    from django.core.management import CommandError, call_command

    target = tmp_path / "rules.yaml"
    call_command("rules", "export", "--output", str(target))
    assert "agent-heartbeat" in target.read_text()
    call_command("rules", "import", str(target), "--dry-run")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, kind: threshold, summary: s}\n")
    with pytest.raises(CommandError, match="nothing imported"):
        call_command("rules", "import", str(bad))
    with pytest.raises(CommandError, match="cannot read"):
        call_command("rules", "import", str(tmp_path / "missing.yaml"))


@pytest.fixture
def admin_token(make_operator):
    from tests.conftest import bearer

    return bearer(make_operator("admin")[1])


@pytest.mark.django_db
def test_it_creates_edits_and_refuses_rules_over_the_api(api, admin_token):
    body = {
        "name": "deep",
        "kind": "threshold",
        "summary": "Queue {queue} is {value}",
        "metric": "queue_depth",
        "aggregation": "max",
        "window": "10m",
        "group_by": ["queue"],
        "condition": ">= 5",
        "for": "1m",
    }
    created = api.post("/api/v1/alert-rules", body, format="json", **admin_token)
    assert created.status_code == 201, created.content
    data = created.json()
    assert (data["window"], data["for"], data["condition"]) == ("10m", "1m", ">= 5.0")

    for change, wrong in [
        ({"window": "forever", "condition": "~ 3"}, {"window", "condition"}),
        ({"summary": "{nope}", "group_by": ["colour"]}, {"summary", "group_by"}),
        ({"for": "-5m"}, {"for"}),
    ]:
        refused = api.patch(
            f"/api/v1/alert-rules/{data['id']}", change, format="json", **admin_token
        )
        assert refused.status_code == 422
        assert {error["field"] for error in refused.json()["errors"]} == wrong
    assert AlertRule.objects.get(name="deep").window == timedelta(minutes=10)

    heartbeat_shaped = api.post(
        "/api/v1/alert-rules",
        {**body, "name": "hb", "kind": "heartbeat"},
        format="json",
        **admin_token,
    )
    assert heartbeat_shaped.status_code == 422
    assert "metric" in {error["field"] for error in heartbeat_shaped.json()["errors"]}


@pytest.mark.django_db
def test_it_resolves_the_alerts_of_a_disabled_rule_and_keeps_rules_with_alerts(api, admin_token):
    depth([150.0] * 10)
    target = saved()
    (alert,) = evaluate(target)

    response = api.patch(
        f"/api/v1/alert-rules/{target.pk}", {"enabled": False}, format="json", **admin_token
    )

    assert response.status_code == 200
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED
    deleted = api.delete(f"/api/v1/alert-rules/{target.pk}", **admin_token)
    assert deleted.status_code == 409
    assert AlertRule.objects.filter(pk=target.pk).exists()
    unused = saved(name="unused")
    assert api.delete(f"/api/v1/alert-rules/{unused.pk}", **admin_token).status_code == 204


@pytest.mark.django_db
def test_it_lets_viewers_read_rules_but_not_write_them(api, make_operator):
    from tests.conftest import bearer

    viewer = bearer(make_operator("viewer")[1])
    assert api.get("/api/v1/alert-rules", **viewer).status_code == 200
    response = api.post("/api/v1/alert-rules", {"name": "x"}, format="json", **viewer)
    assert response.status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("aggregation", ["avg", "max", "sum", "count", "rate", "p50", "p95"])
def test_rules_that_share_a_read_find_what_each_finds_alone(aggregation):
    depth([10.0, 50.0, 150.0, 200.0, 90.0] * 2)
    depth([120.0, 130.0, 0.0, 400.0, 110.0] * 2, agent="a-2", queue="inbox")
    depth([5.0] * 10, agent="a-3", queue="outbox")
    rules = [
        saved(name=f"r{n}", aggregation=aggregation, operator=operator, threshold=threshold)
        for n, (operator, threshold) in enumerate(
            [
                (">", 0.0),
                (">=", 100.0),
                ("<", 100.0),
                ("!=", 1.0),
                ("==", 0.0),
                # At the values themselves: a-1's mean is 100, a-3's every reduction 5.
                (">", 100.0),
                ("<=", 100.0),
                ("==", 5.0),
                ("!=", 5.0),
            ]
        )
    ]
    kind = KINDS["threshold"]

    together = kind.evaluate_many(rules, NOW)

    for rule in rules:
        alone = kind.evaluate(rule, NOW)
        assert sorted((m.labels["agent"], m.value) for m in together[rule.pk]) == sorted(
            (m.labels["agent"], m.value) for m in alone
        ), rule.name
    assert any(together[rule.pk] for rule in rules)


@pytest.mark.django_db
def test_it_merges_only_the_sketches_that_could_meet_a_percentile_rule(monkeypatch):
    import math
    import random

    from alerting.rules import threshold

    rng = random.Random(3)
    groups = [(1, 10), (50, 400), (-30, -2), (0, 0), (90, 110), (7, 7), (101, 101), (-55, -55)]
    for n, (low, high) in enumerate(groups):
        series = make_series("queue_depth", agent=f"a-{n}", queue="inbox")
        minutes = {m: [rng.uniform(low, high) for _ in range(12)] for m in range(10)}
        write_rollups(series, START, minutes)
    kind = KINDS["threshold"]
    # Thresholds at and beside each group's answers, which may lie just outside the
    # window's min and max (a sketch answers within its accuracy), and beyond them.
    rules = []
    for agg in ("p50", "p95", "p99"):
        probe = saved(name=f"probe-{agg}", aggregation=agg, operator=">", threshold=-1e9)
        answers = [m.value for m in kind.evaluate(probe, NOW)]
        assert len(answers) == len(groups)
        edges = {
            t
            for v in answers
            for t in (v, math.nextafter(v, -math.inf), math.nextafter(v, math.inf))
        }
        for op in (">", ">=", "<", "<="):
            for t in sorted(edges | {-31.0, 0.0, 1e6}):
                rules.append(
                    saved(name=f"p-{len(rules)}", aggregation=agg, operator=op, threshold=t)
                )
    merged = []
    real_sketches = kind._sketches

    def counting(*args, **kwargs):
        found = real_sketches(*args, **kwargs)
        merged.append(len(found))
        return found

    monkeypatch.setattr(kind, "_sketches", counting)
    pruned = {rule.pk: kind.evaluate(rule, NOW) for rule in rules}
    together = kind.evaluate_many(rules, NOW)
    pruned_merges = list(merged)
    monkeypatch.setattr(threshold, "could_meet", lambda rules: None)
    merged.clear()
    everything = {rule.pk: kind.evaluate(rule, NOW) for rule in rules}

    def key(matches):
        return sorted((m.labels["agent"], m.value) for m in matches)

    for rule in rules:
        assert key(pruned[rule.pk]) == key(everything[rule.pk]), (rule.operator, rule.threshold)
        assert key(together[rule.pk]) == key(everything[rule.pk]), (rule.operator, rule.threshold)
    assert any(everything.values())
    assert set(merged) == {len(groups)}
    assert min(pruned_merges) == 0 and sum(pruned_merges) < sum(merged)


@pytest.mark.django_db
def test_it_writes_a_fleet_wide_breach_in_statements_that_do_not_grow_with_the_fleet(
    django_capture_on_commit_callbacks,
):
    from django.test.utils import CaptureQueriesContext

    def fleet(tag: str, size: int) -> AlertRule:
        for n in range(size):
            depth([500.0] * 10, agent=f"{tag}-{n}", queue="inbox")
        return saved(name=f"deep-{tag}", matchers=[f"agent=~{tag}-.*"])

    def statements(target: AlertRule, at: datetime) -> int:
        """The evaluation's own (the route tree held, as a tick holds it); the deliveries
        it hands over run after it, uncounted."""
        with (
            routing.tree_held(),
            django_capture_on_commit_callbacks() as handed_over,
            CaptureQueriesContext(connection) as seen,
        ):
            evaluator.evaluate_rule(target, at)
        for callback in handed_over:
            callback()
        return len(seen.captured_queries)

    small, large = fleet("s", 2), fleet("l", 12)
    with capture_logs() as lines:
        fired = {target: statements(target, NOW) for target in (small, large)}
    # A few alerts are logged one by one; a fleet's in one line that counts them.
    assert [line["event"] for line in lines if line["event"].startswith("alert.")] == [
        "alert.fired",
        "alert.fired",
        "alert.fired_many",
    ]
    (many,) = [line for line in lines if line["event"] == "alert.fired_many"]
    assert (many["count"], len(many["alert_ids"]), many["rules"]) == (12, 12, ["deep-l"])
    firing = Alert.objects.filter(rule=large, status=AlertStatus.FIRING)
    assert firing.count() == 12
    assert Notification.objects.filter(alert__rule=large).count() >= 12
    assert Event.objects.filter(name="monitor.alert.triggered").count() == 14

    MetricSeries.objects.all().delete()  # the condition clears everywhere
    later = NOW + timedelta(minutes=1)
    with capture_logs() as lines:
        resolved = {target: statements(target, later) for target in (small, large)}
    assert [line.get("count") for line in lines if line["event"] == "alert.resolved_many"] == [12]

    assert Alert.objects.filter(status=AlertStatus.RESOLVED).count() == 14
    assert fired[large] - fired[small] <= 4, fired
    assert resolved[large] - resolved[small] <= 4, resolved


@pytest.mark.django_db
def test_a_rule_without_group_by_reduces_its_whole_selection_and_missing_labels_group_as_empty():
    depth([10.0] * 10, agent="a-1", queue="inbox")
    depth([30.0] * 10, agent="a-2", queue="inbox")
    depth([50.0] * 10, agent="a-3", queue="")
    depth([70.0] * 10, agent="a-4")
    kind = KINDS["threshold"]

    whole = kind.evaluate(saved(name="fleet", group_by=[], summary="{value}", threshold=0.0), NOW)
    by_queue = kind.evaluate(
        saved(name="by-queue", group_by=["queue"], summary="{queue}", threshold=0.0), NOW
    )

    assert [(m.labels, m.value) for m in whole] == [({}, 40.0)]
    assert sorted((m.labels["queue"], m.value) for m in by_queue) == [("", 60.0), ("inbox", 20.0)]


@pytest.mark.django_db
def test_a_worker_reads_a_series_labels_once_and_again_for_another_series_of_that_id(
    monkeypatch,
):
    from django.test.utils import CaptureQueriesContext

    from alerting.rules import series_window

    monkeypatch.setattr(series_window, "_known_labels", {})
    series = make_series("queue_depth", agent="a-1", queue="inbox")

    def read(fingerprint: str) -> tuple[dict, int]:
        with CaptureQueriesContext(connection) as seen:
            found = series_window.labels_of({series.pk: fingerprint})
        return found, len(seen.captured_queries)

    assert read(series.fingerprint) == ({series.pk: {"agent": "a-1", "queue": "inbox"}}, 1)
    assert read(series.fingerprint) == ({series.pk: {"agent": "a-1", "queue": "inbox"}}, 0)
    MetricSeries.objects.filter(pk=series.pk).update(
        fingerprint="another", labels={"agent": "a-2", "queue": "outbox"}
    )
    assert read("another") == ({series.pk: {"agent": "a-2", "queue": "outbox"}}, 1)


@pytest.mark.django_db
def test_a_worker_keeps_a_windows_selections_while_its_series_stay_the_same(monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from alerting.rules import series_window

    monkeypatch.setattr(series_window, "_known_labels", {})
    monkeypatch.setattr(series_window, "_layouts", {})
    for agent in ("a-1", "a-2"):
        write_rollups(make_series("queue_depth", agent=agent, queue="inbox"), START, {0: [1.0]})
    inbox = rule(matchers=["queue=inbox"], group_by=["agent"])

    def groups(at: datetime) -> tuple[list, int]:
        with CaptureQueriesContext(connection) as seen:
            made = series_window.SeriesWindow("queue_depth", at - timedelta(minutes=30), at)
            found = made.groups(inbox)
        return found, len(seen.captured_queries)

    first, reads = groups(NOW)
    assert sorted(labels["agent"] for labels, _ in first) == ["a-1", "a-2"]
    assert reads == 2  # the window, then the series' labels
    again, reads = groups(NOW + timedelta(seconds=15))
    assert (again is first, reads) == (True, 1)

    third = make_series("queue_depth", agent="a-3", queue="inbox")
    write_rollups(third, START, {0: [1.0]})
    later, reads = groups(NOW + timedelta(seconds=30))
    assert sorted(labels["agent"] for labels, _ in later) == ["a-1", "a-2", "a-3"]
    assert reads == 2  # only the new series' labels are read


@pytest.mark.django_db
def test_a_metric_read_whole_for_many_selections_finds_what_each_rule_finds_alone(monkeypatch):
    from alerting.rules import series_window

    fleet = [
        {"agent": "a-0", "queue": "inbox"},
        {"agent": "a-1", "queue": "inbox"},
        {"agent": "a-1", "queue": "outbox"},
        {"agent": "a-2", "queue": ""},
        {"agent": "a-3"},
        {"agent": "a-4", "queue": "outbox"},
        {"agent": "a-5", "queue": "inbox"},
        {"queue": "inbox"},
    ]
    for n, labels in enumerate(fleet):
        series = make_series("queue_depth", **labels)
        minutes = {m: [float((n * 7 + m * 3) % 11), float(n + m)] for m in range(10)}
        write_rollups(series, START, minutes)
    selections = [
        (["queue=inbox"], ["agent", "queue"]),
        (["queue!=inbox"], ["agent"]),
        (["agent=~a-[0-2]"], ["queue"]),
        (["queue!~out.*", "agent!=a-1"], []),
        ([], ["queue"]),
        (["queue="], ["agent"]),
        (["agent="], ["queue"]),
    ]
    cases = [(">", 4.0), ("<=", 6.0), ("==", 5.0), ("!=", 7.0)]
    rules = [
        saved(
            name=f"w-{n}-{agg}-{m}",
            summary="{value}",
            matchers=found,
            group_by=by,
            aggregation=agg,
            operator=op,
            threshold=t,
        )
        for n, (found, by) in enumerate(selections)
        for agg in ("avg", "max", "min", "sum", "count", "rate", "p50", "p95")
        for m, (op, t) in enumerate(cases)
    ]
    reads = []
    real = series_window.SeriesWindow.__init__

    def counted(self, *args):
        reads.append(args)
        real(self, *args)

    monkeypatch.setattr(series_window.SeriesWindow, "__init__", counted)
    kind = KINDS["threshold"]

    together = kind.evaluate_many(rules, NOW)

    assert len(reads) == 1
    for rule in rules:
        alone = kind.evaluate(rule, NOW)
        assert sorted(sorted(m.labels.items()) for m in together[rule.pk]) == sorted(
            sorted(m.labels.items()) for m in alone
        ), (rule.matchers, rule.group_by, rule.aggregation, rule.operator, together[rule.pk], alone)
        values = {tuple(sorted(m.labels.items())): m.value for m in alone}
        for match in together[rule.pk]:
            assert match.value == pytest.approx(values[tuple(sorted(match.labels.items()))])
    assert sum(bool(found) for found in together.values()) > len(rules) / 3


@pytest.fixture
def staff(client, make_operator):
    user, _ = make_operator("admin")
    client.force_login(user)
    return client


ADMIN_RULES = "/admin/alerting/alertrule/"


@pytest.mark.django_db
def test_the_admin_form_takes_rows_lines_and_durations_as_operators_write_them(staff):
    response = staff.post(
        f"{ADMIN_RULES}add/",
        {
            "name": "queue-deep",
            "kind": "threshold",
            "severity": "warning",
            "enabled": "on",
            "summary": "Queue {queue} of {agent} is {value} deep",
            "metric": "queue_depth",
            "matchers": "queue=inbox\nagent=~a-.*\n",
            "aggregation": "avg",
            "window": "5m",
            "group_by": "agent\nqueue",
            "operator": ">",
            "threshold": "100",
            "for_duration": "2m",
            "keep_firing_for": "0s",
            "evaluate_every": "15s",
            "labels__key": ["team", ""],
            "labels__value": ["core", ""],
            "annotations__key": ["runbook_url", "description"],
            "annotations__value": ["https://runbooks.example.org/q", "Deep {queue}"],
            "params__key": [""],
            "params__value": [""],
        },
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    made = AlertRule.objects.get(name="queue-deep")
    assert made.matchers == ["queue=inbox", "agent=~a-.*"]
    assert made.group_by == ["agent", "queue"]
    assert (made.window, made.for_duration) == (timedelta(minutes=5), timedelta(minutes=2))
    assert made.labels == {"team": "core"}
    assert made.annotations["description"] == "Deep {queue}"


@pytest.mark.django_db
def test_the_admin_form_names_each_bad_row_and_duration(staff):
    rule = saved()
    response = staff.post(
        f"{ADMIN_RULES}{rule.pk}/change/",
        {
            "name": rule.name,
            "kind": "threshold",
            "severity": "warning",
            "summary": rule.summary,
            "metric": "queue_depth",
            "aggregation": "avg",
            "window": "five minutes",
            "group_by": "agent",
            "operator": ">",
            "threshold": "100",
            "for_duration": "0s",
            "keep_firing_for": "0s",
            "evaluate_every": "15s",
            "labels__key": ["team", "team", ""],
            "labels__value": ["a", "b", "orphan"],
        },
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "is not a duration" in errors["window"][0]
    assert "appears twice" in " ".join(errors["labels"])
    assert "has no key" in " ".join(errors["labels"])
    rule.refresh_from_db()
    assert rule.window == timedelta(minutes=5)


@pytest.mark.django_db
def test_the_admin_shows_each_kinds_fields_and_a_preview_of_what_it_matches(staff):
    depth([150.0] * 10)
    depth([5.0] * 10, agent="a-2", queue="inbox")
    rule = saved()

    page = staff.get(f"{ADMIN_RULES}{rule.pk}/change/").content.decode()

    assert 'name="labels__key"' in page
    assert "admin/alerting/rule_form.js" in page
    assert "data-kind-fields" in page
    assert "agent=a-1, queue=inbox" in page  # the preview: a-1 is over 100 now
    assert "agent=a-2" not in page
    assert "lookback:" in page  # the parameters of each kind are explained


@pytest.mark.django_db
def test_the_admin_preview_of_an_event_driven_rule_counts_its_open_alerts(staff, seeded):
    rule = AlertRule.objects.get(name="agent-heartbeat")

    page = staff.get(f"{ADMIN_RULES}{rule.pk}/change/").content.decode()

    assert "Evaluated as its events arrive; 0 alert(s) open now." in page
