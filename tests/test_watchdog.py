import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone

from monitoring.models import AgentCommand, AgentState, CommandStatus
from monitoring.services import check_heartbeats, record_heartbeat
from omoi_console.models import Event
from watchdog.models import ActionStatus, RemediationAction


def fail(agent, clock):
    """Heartbeat, then miss three intervals: the agent is declared FAILED."""
    record_heartbeat(agent, state="running")
    clock.shift(18)
    check_heartbeats()
    agent.refresh_from_db()
    assert agent.state == AgentState.FAILED


def events(name):
    return Event.objects.filter(name=name)


@pytest.mark.django_db(transaction=True)
def test_it_restarts_a_failed_worker_and_verifies_recovery(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        action = RemediationAction.objects.get()
        assert action.status == ActionStatus.STARTED
        assert action.before_state == AgentState.FAILED
        assert action.command.kind == "restart"

        clock.shift(3)
        first = record_heartbeat(agent, state="running")
        assert [c.kind for c in first.commands] == ["restart"]
        assert first.agent.state == AgentState.RESTARTING

        clock.shift(1)
        record_heartbeat(agent, state="idle", acks=[first.commands[0].pk])

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert action.after_state == AgentState.IDLE
    assert AgentCommand.objects.get().status == CommandStatus.ACKED
    lost = events("monitor.agent.heartbeat_lost").get()
    started = events("watchdog.action.started").get()
    succeeded = events("watchdog.action.succeeded").get()
    assert started.trace_id == lost.trace_id  # one trace for the loss chain
    assert succeeded.payload["seconds"] == pytest.approx(4, abs=0.01)


@pytest.mark.django_db(transaction=True)
def test_it_restarts_a_worker_that_reports_its_own_failure(registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="running")

    reported = record_heartbeat(agent, state="failed")

    assert reported.agent.state == AgentState.FAILED
    action = RemediationAction.objects.get()
    assert action.status == ActionStatus.STARTED
    assert not events("monitor.agent.heartbeat_lost").exists()  # it never went silent
    following = record_heartbeat(agent, state="failed")
    assert [c.kind for c in following.commands] == ["restart"]
    assert following.agent.state == AgentState.RESTARTING


@pytest.mark.django_db(transaction=True)
def test_it_restarts_an_agent_that_still_reports_failure(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        clock.shift(3)
        wedged = record_heartbeat(agent, state="failed")
        assert [c.kind for c in wedged.commands] == ["restart"]
        assert wedged.agent.state == AgentState.RESTARTING

        clock.shift(1)
        back = record_heartbeat(agent, state="idle", acks=[wedged.commands[0].pk])

    assert back.agent.state == AgentState.IDLE
    assert RemediationAction.objects.get().status == ActionStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_it_stays_restarting_until_the_agent_acknowledges(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        record_heartbeat(agent, state="running")
        clock.shift(1)
        again = record_heartbeat(agent, state="running")  # no ack

    assert again.agent.state == AgentState.RESTARTING
    assert again.commands == []  # delivered once only
    assert RemediationAction.objects.get().status == ActionStatus.STARTED


@pytest.mark.django_db(transaction=True)
def test_it_does_nothing_when_switched_off(registered_agent):
    agent, _ = registered_agent
    with (
        override_settings(WATCHDOG_MODE="off"),
        time_machine.travel(timezone.now(), tick=False) as clock,
    ):
        fail(agent, clock)
    assert not RemediationAction.objects.exists()
    assert not AgentCommand.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_only_records_what_it_would_do_in_dry_run(registered_agent):
    agent, _ = registered_agent
    with (
        override_settings(WATCHDOG_MODE="dry-run"),
        time_machine.travel(timezone.now(), tick=False) as clock,
    ):
        fail(agent, clock)
    action = RemediationAction.objects.get()
    assert action.status == ActionStatus.DRY_RUN
    assert not AgentCommand.objects.exists()
    assert events("watchdog.action.started").get().payload["dry_run"] is True


@pytest.mark.django_db(transaction=True)
def test_it_fails_and_escalates_when_the_agent_does_not_recover(registered_agent):
    from watchdog.services import expire_unverified

    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        clock.shift(59)
        assert expire_unverified() == []
        clock.shift(2)
        expired = expire_unverified()

    assert [a.status for a in expired] == [ActionStatus.FAILED]
    assert events("watchdog.action.failed").count() == 1
    assert events("watchdog.escalated").get().payload["reason"].startswith("agent not healthy")


@pytest.mark.django_db(transaction=True)
def test_it_skips_a_second_restart_within_the_cooldown(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        first = record_heartbeat(agent, state="running")
        record_heartbeat(agent, state="idle", acks=[first.commands[0].pk])
        clock.shift(5)
        fail(agent, clock)

    statuses = list(
        RemediationAction.objects.order_by("started_at").values_list("status", "outcome")
    )
    assert statuses == [
        (ActionStatus.SUCCEEDED, "agent healthy again"),
        (ActionStatus.SKIPPED, "cooldown of 300s"),
    ]
    assert AgentCommand.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_leaves_monitors_alone_under_the_worker_policy(seeded):
    from monitoring.services import register_agent

    agent, _ = register_agent("monitor-01", "monitor")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
    assert not RemediationAction.objects.exists()
