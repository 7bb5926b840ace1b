"""Retention: what outlived its retention goes, in bounded batches; unfinished work never does."""

import io
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.module_loading import import_string

from alerting.models import (
    Alert,
    AlertRule,
    AlertStatus,
    Notification,
    NotificationStatus,
    Receiver,
)
from monitoring.models import AgentState, AgentTransition, MetricSeries, MonitorAnomaly
from omoi_console.foundation.events import bus
from omoi_console.foundation.retention import (
    CallableRetention,
    Pruned,
    RowRetention,
    days_kept,
    policies,
    register,
    unregister,
)
from omoi_console.foundation.retention.service import prune, would_prune
from omoi_console.models import Event, EventReceipt, EventStatus
from omoi_console.top.schedule import PERIODIC_JOBS
from watchdog.models import (
    OPEN_ACTION_STATUSES,
    ActionStatus,
    RemediationAction,
    RemediationPolicy,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture(autouse=True)
def retention(settings):
    """The documented defaults, whatever the environment running the tests says."""
    settings.RETAIN_PROCESSED_EVENTS_DAYS = 7
    settings.RETAIN_DEAD_EVENTS_DAYS = 30
    settings.RETAIN_TRANSITIONS_DAYS = 30
    settings.RETAIN_NOTIFICATIONS_DAYS = 30
    settings.RETAIN_REMEDIATIONS_DAYS = 90
    settings.RETAIN_ANOMALIES_DAYS = 90
    settings.RETENTION_BATCH_SIZE = 1000
    settings.RETENTION_MAX_BATCHES = 20
    settings.RETENTION_RUN_SECONDS = 30
    return settings


def event(status: str, age: timedelta, *, receipts: int = 2, key: str | None = None) -> Event:
    row = Event.objects.create(
        name="monitor.agent.heartbeat_lost",
        payload={"agent_id": "worker-01", "role": "worker", "last_heartbeat_at": None, "missed": 3},
        occurred_at=NOW - age,
        dispatch_after=NOW - age,
        status=status,
        key=key,
        processed_at=NOW - age if status == EventStatus.PROCESSED else None,
    )
    EventReceipt.objects.bulk_create(
        EventReceipt(event=row, handler=f"test.handler-{n}", handled_at=NOW - age)
        for n in range(receipts)
    )
    return row


def transitions(agent, ages: list[timedelta]) -> list[AgentTransition]:
    return AgentTransition.objects.bulk_create(
        AgentTransition(
            agent=agent,
            from_state=AgentState.IDLE,
            to_state=AgentState.RUNNING,
            reason="test",
            actor="test",
            at=NOW - age,
        )
        for age in ages
    )


def deleted_tables(queries) -> list[str]:
    """The table of every DELETE captured, in order."""
    return [
        q["sql"].split('"')[1] for q in queries.captured_queries if q["sql"].startswith("DELETE")
    ]


def deletes_from(queries, table: str) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("DELETE") and q["sql"].split('"')[1] == table
    ]


# --- events -----------------------------------------------------------------------


@pytest.mark.django_db
def test_it_prunes_old_processed_events_with_their_receipts_and_keeps_pending_ones_of_any_age():
    old = event(EventStatus.PROCESSED, 8 * DAY)
    recent = event(EventStatus.PROCESSED, 6 * DAY)
    ancient_pending = event(EventStatus.PENDING, 400 * DAY)

    reports = prune()

    assert set(Event.objects.values_list("pk", flat=True)) == {recent.pk, ancient_pending.pk}
    assert not EventReceipt.objects.filter(event_id=old.pk).exists()
    assert EventReceipt.objects.filter(event_id=ancient_pending.pk).count() == 2
    assert reports["events.processed"].removed == {"events": 1, "event receipts": 2}


@pytest.mark.django_db
def test_it_keeps_dead_events_for_their_own_retention(clock):
    processed = event(EventStatus.PROCESSED, 10 * DAY)
    dead = event(EventStatus.DEAD, 10 * DAY)

    prune()
    assert list(Event.objects.values_list("pk", flat=True)) == [dead.pk]
    assert not Event.objects.filter(pk=processed.pk).exists()

    clock.shift(21 * DAY)
    prune()
    assert not Event.objects.exists()
    assert not EventReceipt.objects.exists()


@pytest.mark.django_db
def test_it_never_prunes_an_event_inside_the_dedup_window(settings):
    # A thousand attempts keep an event pending for days; its key must outlive that.
    settings.EVENT_MAX_ATTEMPTS = 1000
    settings.RETAIN_PROCESSED_EVENTS_DAYS = 1
    assert bus.dedup_window() > 3 * DAY
    keyed = event(EventStatus.PROCESSED, 3 * DAY, key="alert.triggered:1")

    prune()

    assert Event.objects.filter(pk=keyed.pk).exists()
    # So a repeated publish of the key is still recognised as the same event.
    again = bus.publish(
        "monitor.alert.triggered",
        {
            "alert_id": 1,
            "rule": "r",
            "severity": "critical",
            "fingerprint": "f",
            "labels": {},
            "summary": "s",
        },
        key="alert.triggered:1",
    )
    assert again.pk == keyed.pk


@pytest.mark.django_db
def test_it_deletes_an_events_receipts_first_in_statements_bounded_by_the_batch():
    for _ in range(5):
        event(EventStatus.PROCESSED, 10 * DAY, receipts=3)

    with CaptureQueriesContext(connection) as queries:
        report = prune(kinds=["events.processed"], batch_size=2)["events.processed"]

    assert report.batches == 3
    assert report.removed == {"events": 5, "event receipts": 15}
    event_deletes = deletes_from(queries, "omoi_console_event")
    receipt_deletes = deletes_from(queries, "omoi_console_eventreceipt")
    assert len(event_deletes) == len(receipt_deletes) == 3
    assert deleted_tables(queries) == ["omoi_console_eventreceipt", "omoi_console_event"] * 3
    # Every statement that picks rows is limited to the batch.
    picks = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert picks and all("LIMIT 2" in sql for sql in picks)


# --- batches and runs -----------------------------------------------------------------


@pytest.mark.django_db
def test_it_takes_one_statement_per_batch_of_the_configured_size(registered_agent):
    agent, _ = registered_agent
    transitions(agent, [40 * DAY] * 5)

    with CaptureQueriesContext(connection) as queries:
        report = prune(kinds=["agent.transitions"], batch_size=2)["agent.transitions"]

    assert report.batches == 3
    assert report.removed == {"agent transitions": 5}
    assert not report.more
    statements = deletes_from(queries, "monitoring_agenttransition")
    assert len(statements) == 3
    assert all("LIMIT 2" in sql for sql in statements)
    # The registration's own transition is younger than the retention.
    assert AgentTransition.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
def test_it_prunes_oldest_first_and_stops_after_its_batches_until_the_next_run(registered_agent):
    agent, _ = registered_agent
    rows = transitions(agent, [31 * DAY, 35 * DAY, 33 * DAY, 40 * DAY, 32 * DAY])

    report = prune(kinds=["agent.transitions"], batch_size=2, max_batches=1)["agent.transitions"]

    assert report.batches == 1
    assert report.more
    left = set(AgentTransition.objects.filter(at__lt=NOW - DAY).values_list("pk", flat=True))
    assert left == {rows[0].pk, rows[2].pk, rows[4].pk}  # 40 and 35 days old went first

    report = prune(kinds=["agent.transitions"], batch_size=2, max_batches=5)["agent.transitions"]
    assert report.removed == {"agent transitions": 3}
    assert not report.more


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_batches_it_finished_when_stopped_midway(seeded, monkeypatch):
    from monitoring.services import register_agent

    agent, _ = register_agent("worker-01", "worker")
    transitions(agent, [40 * DAY] * 5)
    real = RowRetention.prune_batch
    calls = []

    def stopped_at_third(self, now, batch_size):
        calls.append(self.name)
        if len(calls) == 3:
            raise SystemExit("worker shut down")  # escapes the run, as a killed worker does
        return real(self, now, batch_size)

    monkeypatch.setattr(RowRetention, "prune_batch", stopped_at_third)
    with pytest.raises(SystemExit):
        prune(kinds=["agent.transitions"], batch_size=2)

    # Each batch committed on its own: nothing waited on one long transaction.
    assert AgentTransition.objects.count() == 2
    monkeypatch.setattr(RowRetention, "prune_batch", real)
    report = prune(kinds=["agent.transitions"])["agent.transitions"]
    assert report.removed == {"agent transitions": 1}


@pytest.mark.django_db
def test_it_shares_a_run_between_kinds_a_batch_at_a_time(registered_agent):
    agent, _ = registered_agent
    transitions(agent, [40 * DAY] * 6)
    for _ in range(6):
        event(EventStatus.PROCESSED, 10 * DAY, receipts=0)

    with CaptureQueriesContext(connection) as queries:
        prune(kinds=["events.processed", "agent.transitions"], batch_size=2)

    tables = [table for table in deleted_tables(queries) if table != "omoi_console_eventreceipt"]
    # Taking turns: a backlog of one kind does not hold up the other.
    assert tables[:4] == [
        "omoi_console_event",
        "monitoring_agenttransition",
        "omoi_console_event",
        "monitoring_agenttransition",
    ]


@pytest.mark.django_db
def test_it_keeps_a_kind_forever_when_its_retention_is_zero(settings, registered_agent):
    settings.RETAIN_TRANSITIONS_DAYS = 0
    agent, _ = registered_agent
    transitions(agent, [3650 * DAY])

    assert prune()["agent.transitions"].removed == {}
    assert would_prune()["agent.transitions"] == {}
    assert AgentTransition.objects.count() == 2


# --- notifications and actions -----------------------------------------------------------


def alert(status: str) -> Alert:
    return Alert.objects.create(
        rule=AlertRule.objects.get(name="agent-heartbeat"),
        fingerprint=f"fp-{Alert.objects.count()}",
        labels={},
        severity="critical",
        summary="test",
        status=status,
        started_at=NOW - 60 * DAY,
    )


def notification(for_alert: Alert, status: str, channel: str) -> Notification:
    receiver, _ = Receiver.objects.get_or_create(name=channel, defaults={"kind": channel})
    return Notification.objects.create(
        alert=for_alert,
        kind="firing",
        receiver=receiver,
        channel=channel,
        status=status,
        created_at=NOW - 60 * DAY,
    )


@pytest.mark.django_db
def test_it_keeps_notifications_still_retrying_or_of_an_open_alert(seeded):
    resolved = alert(AlertStatus.RESOLVED)
    sent = notification(resolved, NotificationStatus.SENT, "console")
    failed = notification(resolved, NotificationStatus.DEAD, "email")
    open_alert = alert(AlertStatus.FIRING)
    of_open = notification(open_alert, NotificationStatus.SENT, "console")
    retrying_alert = alert(AlertStatus.RESOLVED)
    retrying = notification(retrying_alert, NotificationStatus.PENDING, "email")
    Notification.objects.filter(pk=retrying.pk).update(attempts=3)

    report = prune()["alert.notifications"]

    assert report.removed == {"notifications": 2}
    left = set(Notification.objects.values_list("pk", flat=True))
    assert left == {of_open.pk, retrying.pk}
    assert not left & {sent.pk, failed.pk}
    assert Alert.objects.count() == 3  # alerts themselves are not this kind's


def action(agent, policy, status: str, age: timedelta) -> RemediationAction:
    return RemediationAction.objects.create(
        policy=policy,
        agent=agent,
        step=policy.steps[0]["kind"],
        status=status,
        idempotency_key=f"{policy.pk}:{status}:{age}",
        reason="test",
        started_at=NOW - age - DAY,
        finished_at=None if status in OPEN_ACTION_STATUSES else NOW - age,
    )


@pytest.mark.django_db
def test_it_keeps_remediation_actions_that_are_not_finished(registered_agent):
    agent, _ = registered_agent
    policy = RemediationPolicy.objects.get()
    running = [action(agent, policy, status, 400 * DAY) for status in OPEN_ACTION_STATUSES]
    for status in ActionStatus:
        if status not in OPEN_ACTION_STATUSES:
            action(agent, policy, status, 100 * DAY)

    report = prune()["watchdog.actions"]

    finished = len(ActionStatus) - len(OPEN_ACTION_STATUSES)
    assert report.removed == {"remediation actions": finished}
    assert set(RemediationAction.objects.values_list("pk", flat=True)) == {a.pk for a in running}


@pytest.mark.django_db
def test_it_keeps_actions_a_policys_cooldown_still_reads(settings, registered_agent):
    settings.RETAIN_REMEDIATIONS_DAYS = 7
    agent, _ = registered_agent
    policy = RemediationPolicy.objects.get()
    policy.cooldown_seconds = int((30 * DAY).total_seconds())
    policy.save()
    done = action(agent, policy, ActionStatus.SUCCEEDED, 10 * DAY)

    prune()

    assert RemediationAction.objects.filter(pk=done.pk).exists()


# --- the seam ----------------------------------------------------------------------


@pytest.fixture
def custom():
    """A policy that is not rows: it drops 'partitions' from a list, one per batch."""
    partitions = ["2026-01", "2026-02", "2026-03"]

    def drop(now, batch_size):
        if not partitions:
            return Pruned()
        partitions.pop(0)
        return Pruned({"partitions": 1}, more=bool(partitions))

    policy = register(
        CallableRetention("test.partitions", drop, lambda now: {"partitions": len(partitions)})
    )
    yield partitions
    unregister(policy.name)


@pytest.mark.django_db
def test_it_runs_a_custom_policy_through_the_same_seam(custom):
    assert would_prune(kinds=["test.partitions"]) == {"test.partitions": {"partitions": 3}}

    report = prune(kinds=["test.partitions"], max_batches=2)["test.partitions"]

    assert report.removed == {"partitions": 2}
    assert report.more
    assert custom == ["2026-03"]


@pytest.mark.django_db
def test_it_goes_on_with_the_other_kinds_when_one_fails(registered_agent):
    def broken(now, batch_size):
        raise RuntimeError("storage unavailable")

    register(CallableRetention("test.broken", broken, lambda now: {}))
    try:
        agent, _ = registered_agent
        transitions(agent, [40 * DAY])
        reports = prune()
    finally:
        unregister("test.broken")

    assert reports["test.broken"].failed
    assert reports["agent.transitions"].removed == {"agent transitions": 1}


def test_it_refuses_a_policy_on_rows_that_something_protects():
    with pytest.raises(ValueError, match="protects RemediationPolicy"):
        register(
            RowRetention(
                "test.policies", RemediationPolicy, "id", keep=days_kept("RETAIN_TRANSITIONS_DAYS")
            )
        )
    assert "test.policies" not in {policy.name for policy in policies()}


def test_it_refuses_a_second_policy_under_a_taken_name():
    taken = policies()[0]
    with pytest.raises(ValueError, match="already registered"):
        register(CallableRetention(taken.name, lambda now, size: Pruned(), lambda now: {}))


def test_it_registers_every_kind_that_grows_without_bound():
    assert {policy.name for policy in policies()} >= {
        "events.processed",
        "events.dead",
        "agent.transitions",
        "alert.notifications",
        "watchdog.actions",
    }


# --- schedule and command -------------------------------------------------------------


def test_it_schedules_the_prune_job_every_minute_or_so():
    jobs = [job for job in PERIODIC_JOBS if job.task.endswith(".prune_expired")]
    assert len(jobs) == 1
    assert 30 <= jobs[0].every_seconds <= 300
    task = import_string(jobs[0].task)
    assert task.name == jobs[0].task  # beat sends it by this name; a worker knows it by it


@pytest.mark.django_db
def test_it_runs_the_scheduled_task_as_a_prune(registered_agent):
    agent, _ = registered_agent
    transitions(agent, [40 * DAY])
    job = next(job for job in PERIODIC_JOBS if job.task.endswith(".prune_expired"))

    import_string(job.task).delay()

    assert AgentTransition.objects.count() == 1


@pytest.mark.django_db
def test_it_prints_what_would_go_on_a_dry_run_and_changes_nothing(registered_agent):
    agent, _ = registered_agent
    transitions(agent, [40 * DAY] * 3)
    event(EventStatus.PROCESSED, 10 * DAY, receipts=4)
    event(EventStatus.PENDING, 10 * DAY)
    out = io.StringIO()

    call_command("prune", "--dry-run", stdout=out)

    text = out.getvalue()
    assert "events.processed: 1 events, 4 event receipts" in text
    assert "agent.transitions: 3 agent transitions" in text
    assert "watchdog.actions: nothing" in text
    assert AgentTransition.objects.count() == 4
    assert Event.objects.count() == 2
    assert EventReceipt.objects.count() == 6


@pytest.mark.django_db
def test_it_prunes_every_backlog_from_the_command_in_bounded_batches(registered_agent):
    agent, _ = registered_agent
    transitions(agent, [40 * DAY] * 7)
    out = io.StringIO()

    with CaptureQueriesContext(connection) as queries:
        call_command("prune", "--batch-size", "2", stdout=out)

    assert "agent.transitions: 7 agent transitions" in out.getvalue()
    assert AgentTransition.objects.count() == 1
    assert len(deletes_from(queries, "monitoring_agenttransition")) == 4


@pytest.mark.django_db
def test_it_refuses_an_unknown_kind_or_batch_size_from_the_command():
    with pytest.raises(CommandError, match="unknown retention kind nope"):
        call_command("prune", "--kind", "nope", stdout=io.StringIO())
    with pytest.raises(CommandError, match="at least 1"):
        call_command("prune", "--batch-size", "0", stdout=io.StringIO())


# --- plans ---------------------------------------------------------------------------

INDEXES = {
    "events.processed": "event_status_age_idx",
    "events.dead": "event_status_age_idx",
    "agent.transitions": "transition_at_idx",
    "alert.notifications": "notification_created_idx",
    "watchdog.actions": "action_finished_idx",
}


def batch_plan(policy) -> str:
    sql, params = policy.oldest(NOW, 1000).query.get_compiler(using="default").as_sql()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A test's tables are tiny, where scanning and sorting is cheapest: forbid
            # both, so the plan shows whether an index can hand over the batch in
            # order, as it must on a full table (a sort stays if none can).
            for knob in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                cursor.execute(f"SET LOCAL {knob} = off")
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return "\n".join(str(row) for row in cursor.fetchall())


@pytest.mark.django_db
@pytest.mark.parametrize("kind", sorted(INDEXES))
def test_it_finds_each_batch_through_an_index_in_age_order(kind):
    policy = next(policy for policy in policies() if policy.name == kind)

    plan = batch_plan(policy)

    assert INDEXES[kind] in plan, plan
    # No sort of the candidates: the index hands them over oldest first.
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    assert f"Seq Scan on {policy.model._meta.db_table}" not in plan, plan


@pytest.mark.django_db
def test_it_prunes_anomalies_long_over_and_keeps_open_ones_of_any_age():
    series = MetricSeries.objects.create(metric="queue_depth", labels={}, fingerprint="q")

    def anomaly(started_days_ago: int, ended_days_ago: int | None) -> MonitorAnomaly:
        ended = None if ended_days_ago is None else NOW - ended_days_ago * DAY
        return MonitorAnomaly.objects.create(
            series=series,
            metric="queue_depth",
            started_at=NOW - started_days_ago * DAY,
            ended_at=ended,
            peak_score=0.9,
            direction="up",
            detector="robust_seasonal",
        )

    old = anomaly(200, 120)
    kept = [anomaly(200, 80), anomaly(10, 1)]
    # An excursion that never ended stays, however long ago it started.
    still_open = MonitorAnomaly.objects.create(
        series=MetricSeries.objects.create(
            metric="queue_depth", labels={"q": "b"}, fingerprint="b"
        ),
        metric="queue_depth",
        started_at=NOW - 300 * DAY,
        peak_score=0.7,
        direction="down",
        detector="robust_seasonal",
    )

    report = prune(kinds=["monitor.anomalies"])["monitor.anomalies"]

    assert sum(report.removed.values()) == 1
    assert not MonitorAnomaly.objects.filter(pk=old.pk).exists()
    assert set(MonitorAnomaly.objects.values_list("pk", flat=True)) == {
        *[a.pk for a in kept],
        still_open.pk,
    }
