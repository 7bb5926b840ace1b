"""A batch of failures: opened together with shared reads, each action still gated and audited."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.models import AgentCommand, CommandKind
from monitoring.services import NewAgent, record_heartbeat, register_agents
from omoi_console.foundation.events import background
from omoi_console.models import Event, EventStatus
from watchdog import handlers, services
from watchdog.batch import opening_together
from watchdog.models import ActionStatus, RemediationAction, RestartBackoff, SkipReason, Trigger

# The guards a test does not exercise stay out of its way.
QUIET = {
    "WATCHDOG_BUDGET_PER_MINUTE": 0,
    "WATCHDOG_POLICY_PER_MINUTE": 0,
    "WATCHDOG_STORM_MIN_AGENTS": 1000,
}


def running_workers(count, prefix="w"):
    agents = [
        agent
        for agent, _ in register_agents(
            [NewAgent(f"{prefix}-{n:02d}", "worker", {}) for n in range(count)]
        )
    ]
    for agent in agents:
        record_heartbeat(agent, state="running")
    return agents


def reported_failures(agents):
    """Each agent reports ``failed``; the events the watchdog would get, not yet handled."""
    before = set(Event.objects.values_list("pk", flat=True))
    for agent in agents:
        record_heartbeat(agent, state="failed")
    return list(
        Event.objects.filter(name="monitor.agent.state_changed", payload__to_state="failed")
        .exclude(pk__in=before)
        .order_by("occurred_at")
    )


def handled_in_one_batch(events):
    """The watchdog's handler on one batch, inside a transaction, as the bus runs it."""
    with CaptureQueriesContext(connection) as statements, transaction.atomic():
        handlers.on_state_changed(events)
    return [query["sql"] for query in statements.captured_queries]


def watchdog_reads(statements):
    return [sql for sql in statements if sql.startswith("SELECT") and '"watchdog_' in sql]


# What one restart writes, and nothing else, each in a savepoint of its own within the
# opening's (2): its action (3), the agent's restart generation under a lock and the
# command (5), its backoff row (3), and the action's progress (1).
WRITES_OF_ONE_RESTART = 14


@pytest.mark.django_db
@override_settings(**QUIET)
def test_it_reads_as_much_for_twenty_failures_as_for_one(seeded):
    one = handled_in_one_batch(reported_failures(running_workers(1, prefix="one")))
    twenty = handled_in_one_batch(reported_failures(running_workers(20, prefix="many")))

    assert AgentCommand.objects.filter(kind=CommandKind.RESTART).count() == 21
    # What the watchdog reads of its own state does not grow with the batch ...
    assert len(watchdog_reads(twenty)) == len(watchdog_reads(one))
    # ... and a failure more costs its own writes, never its reads again.
    assert (len(twenty) - len(one)) / 19 <= WRITES_OF_ONE_RESTART


@pytest.mark.django_db
@override_settings(**QUIET)
def test_it_audits_every_action_of_a_batch_in_its_own_trace(seeded):
    agents = running_workers(5)
    failures = reported_failures(agents)

    with transaction.atomic():
        handlers.on_state_changed(failures)

    started = Event.objects.filter(name="watchdog.action.started")
    assert started.count() == 5
    # Written together at the end of the batch, each still in its own action's trace.
    traces = {event.payload["action_id"]: event.trace_id for event in started}
    for action in RemediationAction.objects.all():
        assert traces[action.pk] == action.trace_id != ""
    assert len(set(traces.values())) == 5
    assert set(RemediationAction.objects.values_list("status", flat=True)) == {
        ActionStatus.VERIFYING
    }


@pytest.mark.django_db
@override_settings(**QUIET)
def test_it_restarts_once_for_copies_of_a_failure_in_one_batch(seeded):
    [agent] = running_workers(1)
    [failure] = reported_failures([agent])

    with transaction.atomic():
        handlers.on_state_changed([failure, failure, failure])

    assert RemediationAction.objects.count() == 1
    assert AgentCommand.objects.filter(kind=CommandKind.RESTART).count() == 1
    assert Event.objects.filter(name="watchdog.action.started").count() == 1


@pytest.mark.django_db
@override_settings(**QUIET)
def test_it_counts_a_backoff_row_written_after_the_batch_read(seeded):
    [agent] = running_workers(1)
    record_heartbeat(agent, state="failed")
    now = timezone.now()
    with (
        time_machine.travel(now, tick=False),
        transaction.atomic(),
        opening_together([agent.pk]),
    ):
        # Another worker restarted the agent long ago, after this batch read no row.
        RestartBackoff.objects.create(
            agent=agent, streak=3, last_restart_at=now - timedelta(minutes=9)
        )
        action = services.open_remediation(Trigger.AGENT_FAILED, agent.pk)

    assert action.command is not None
    backoff = RestartBackoff.objects.get(agent=agent)
    assert backoff.streak == 4
    assert backoff.last_action_id == action.pk


@pytest.mark.django_db
@override_settings(WATCHDOG_BUDGET_PER_MINUTE=0, WATCHDOG_POLICY_PER_MINUTE=0)
def test_it_holds_a_whole_batch_in_a_storm_with_one_alert(seeded, settings):
    settings.WATCHDOG_STORM_MIN_AGENTS = 3
    settings.WATCHDOG_STORM_SHARE = 0.5
    agents = running_workers(6)
    failures = reported_failures(agents[:4])

    with transaction.atomic():
        handlers.on_state_changed(failures)

    assert AgentCommand.objects.filter(kind=CommandKind.RESTART).count() == 0
    refused = RemediationAction.objects.filter(skip_reason=SkipReason.STORM_GUARD)
    assert refused.count() == 4
    assert Event.objects.filter(name="watchdog.action.skipped").count() == 4
    assert Event.objects.filter(name="watchdog.storm.started").count() == 1


@pytest.mark.django_db
@override_settings(**QUIET)
def test_it_skips_every_action_of_a_batch_while_the_kill_switch_is_on(seeded):
    from watchdog.guards import set_kill_switch

    agents = running_workers(3)
    failures = reported_failures(agents)
    set_kill_switch(True, by="ops", reason="maintenance")

    with transaction.atomic():
        handlers.on_state_changed(failures)

    assert AgentCommand.objects.filter(kind=CommandKind.RESTART).count() == 0
    assert RemediationAction.objects.filter(skip_reason=SkipReason.DRY_RUN).count() == 3


def test_it_dispatches_together_what_waits_for_the_background_thread():
    calls, release, first_running = [], threading.Event(), threading.Event()

    def dispatch(ids):
        calls.append(list(ids))
        first_running.set()
        release.wait(10)

    # Whatever earlier tests handed to the thread is done first: "a" starts at once.
    background.drain()
    background.submit_batch(dispatch, ["a"], limit=10)
    assert first_running.wait(10)
    for ids in (["b"], ["c", "d"], ["e"]):
        background.submit_batch(dispatch, ids, limit=3)
    release.set()
    background.drain()

    assert calls == [["a"], ["b", "c", "d"], ["e"]]


@pytest.mark.django_db(transaction=True)
@override_settings(**QUIET)
def test_it_handles_every_event_of_a_burst_handed_to_the_background(seeded):
    agents = running_workers(10)
    with background.dispatch_in_background():
        for agent in agents:
            record_heartbeat(agent, state="failed")
    background.drain()

    assert not Event.objects.filter(status=EventStatus.PENDING).exists()
    assert AgentCommand.objects.filter(kind=CommandKind.RESTART).count() == 10
