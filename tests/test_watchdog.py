import threading

import pytest
import time_machine
from django.db import connections
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from alerting.models import Alert
from monitoring.models import AgentCommand, AgentState, CommandStatus
from monitoring.services import check_heartbeats, record_heartbeat
from omoi_console.models import Event
from tests.conftest import bearer
from tests.row_locks import held_by_another_worker
from watchdog import services
from watchdog.builtins import RESTART_POLICY
from watchdog.models import ActionStatus, RemediationAction, RemediationPolicy, SkipReason, Trigger


def fail(agent, clock):
    """Heartbeat, then miss three intervals: the agent is declared FAILED."""
    record_heartbeat(agent, state="running")
    clock.shift(18)
    check_heartbeats()
    agent.refresh_from_db()
    assert agent.state == AgentState.FAILED


def events(name):
    return Event.objects.filter(name=name)


def set_steps(*steps, **fields):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(steps=list(steps), **fields)


@pytest.mark.django_db(transaction=True)
def test_heartbeat_loss_leads_to_a_restart_verified_by_recovery(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        action = RemediationAction.objects.get()
        assert action.status == ActionStatus.VERIFYING
        assert action.before_state == AgentState.FAILED
        assert action.command.kind == "restart"
        assert action.command.params == {"graceful_stop_seconds": 10}
        assert action.command.serves == f"remediation:{action.pk}"
        assert action.context["state"] == AgentState.FAILED
        assert action.context["missed_heartbeats"] == 3

        clock.shift(3)
        first = record_heartbeat(agent, state="running")
        assert [c.kind for c in first.commands] == ["restart"]
        assert first.commands[0].generation == 1
        assert first.agent.state == AgentState.RESTARTING

        clock.shift(1)
        record_heartbeat(agent, state="idle", acks=[first.commands[0].pk], generation=1)

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert action.after_state == AgentState.IDLE
    assert action.next_step_at is None
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
    assert action.status == ActionStatus.VERIFYING
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
    assert RemediationAction.objects.get().status == ActionStatus.VERIFYING


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
def test_it_only_records_what_it_would_do_in_dry_run_and_says_so(registered_agent):
    agent, _ = registered_agent
    with (
        override_settings(WATCHDOG_MODE="dry-run"),
        time_machine.travel(timezone.now(), tick=False) as clock,
    ):
        fail(agent, clock)
    action = RemediationAction.objects.get()
    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.DRY_RUN)
    assert action.outcome.startswith("dry_run: would restart worker-01")
    assert not AgentCommand.objects.exists()
    assert events("watchdog.action.started").get().payload["dry_run"] is True
    assert events("watchdog.action.skipped").get().payload["reason"] == "dry_run"
    # Nobody acts on the agent: a person is told.
    assert events("watchdog.escalated").exists()


@pytest.mark.django_db(transaction=True)
def test_it_escalates_to_a_firing_alert_when_the_agent_does_not_recover(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        clock.shift(59)
        assert services.advance_due() == []
        clock.shift(2)
        [action] = services.advance_due()

    assert action.status == ActionStatus.ESCALATED
    assert events("watchdog.action.failed").count() == 1
    escalated = events("watchdog.escalated").get()
    assert escalated.payload["reason"].startswith("agent not healthy within 60s")
    alert = Alert.objects.get(rule__name="remediation-failed")
    assert alert.status == "firing"
    assert alert.labels["agent_id"] == agent.pk
    assert alert.labels["policy"] == RESTART_POLICY

    # Healthy again, by whatever means: the alert resolves.
    record_heartbeat(agent, state="failed")
    record_heartbeat(agent, state="idle")
    alert.refresh_from_db()
    assert alert.status == "resolved"


@pytest.mark.django_db(transaction=True)
def test_a_command_is_never_delivered_after_its_action_failed(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)  # restart queued; the agent stays silent
        clock.shift(61)
        [action] = services.advance_due()
        assert action.status == ActionStatus.ESCALATED
        command = AgentCommand.objects.get()
        assert command.status == CommandStatus.CANCELLED

        late = record_heartbeat(agent, state="failed")

    assert late.commands == []
    command.refresh_from_db()
    assert command.status == CommandStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_command_left_queued_past_its_expiry_is_never_delivered(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        clock.shift(60.5)  # past the command's expiry, before the job ran
        late = record_heartbeat(agent, state="failed")
    assert late.commands == []
    assert AgentCommand.objects.get().status == CommandStatus.EXPIRED


@pytest.mark.django_db(transaction=True)
def test_duplicate_events_about_one_failure_open_one_action(registered_agent):
    from watchdog import handlers

    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        lost = events("monitor.agent.heartbeat_lost").get()
        # Delivered again (at least once), twice in one batch, and told another way.
        handlers.on_heartbeat_lost([lost, lost])
        clock.shift(1)
        handlers.on_heartbeat_lost([lost])
        services.open_remediation(Trigger.AGENT_FAILED, agent.pk)

    assert RemediationAction.objects.count() == 1
    assert AgentCommand.objects.count() == 1
    assert events("watchdog.action.started").count() == 1


@pytest.mark.django_db(transaction=True)
def test_failed_verification_moves_to_the_next_step_and_then_escalates(registered_agent):
    set_steps(
        {"kind": "restart_worker", "after": 0, "verify": 30},
        {"kind": "quarantine", "after": 120, "verify": 0},
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        action = RemediationAction.objects.get()
        assert (action.step_index, action.status) == (0, ActionStatus.VERIFYING)

        clock.shift(31)
        services.advance_due()
        action.refresh_from_db()
        agent.refresh_from_db()
        assert (action.step_index, action.step) == (1, "quarantine")
        assert action.status == ActionStatus.RUNNING
        assert agent.state == AgentState.QUARANTINED
        assert AgentCommand.objects.get().status == CommandStatus.QUEUED  # still its action's

        clock.shift(119)
        assert services.advance_due() == []
        clock.shift(2)
        services.advance_due()

    action.refresh_from_db()
    assert action.status == ActionStatus.ESCALATED
    assert [entry["kind"] for entry in action.history] == [
        "restart_worker",
        "restart_worker",
        "quarantine",
        "quarantine",
    ]
    assert events("watchdog.action.step").get().payload["kind"] == "quarantine"
    assert AgentCommand.objects.get().status == CommandStatus.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_token_recycle_revokes_the_old_token(registered_agent):
    set_steps({"kind": "recycle_token", "after": 0, "verify": 30})
    agent, old = registered_agent
    api = APIClient()
    url = f"/api/v1/agents/{agent.pk}/heartbeat"
    assert api.post(url, {"state": "running"}, format="json", **bearer(old)).status_code == 200

    reported = api.post(url, {"state": "failed"}, format="json", **bearer(old))
    assert reported.status_code == 200
    handed = api.post(url, {"state": "failed"}, format="json", **bearer(old))
    [command] = handed.json()["commands"]
    assert command["kind"] == "recycle_token"
    new = command["params"]["token"]
    assert new != old

    refused = api.post(url, {"state": "failed"}, format="json", **bearer(old))
    assert refused.status_code == 401
    back = api.post(url, {"state": "idle", "acks": [command["id"]]}, format="json", **bearer(new))
    assert back.status_code == 200
    assert RemediationAction.objects.get().status == ActionStatus.SUCCEEDED
    assert AgentCommand.objects.get().params == {}  # the plaintext was never stored


@pytest.mark.django_db(transaction=True)
def test_a_failure_reported_before_the_restart_does_not_count_against_it(registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="running", generation=0)
    record_heartbeat(agent, state="failed", generation=0)  # restart queued, generation 1
    handed = record_heartbeat(agent, state="failed", generation=0)
    assert handed.agent.state == AgentState.RESTARTING

    for _ in range(5):  # copies of the old report still in flight
        stale = record_heartbeat(agent, state="failed", generation=0)
        assert stale.agent.state == AgentState.RESTARTING

    assert RemediationAction.objects.count() == 1
    assert AgentCommand.objects.count() == 1
    # After the restart, a failure of the new generation counts.
    record_heartbeat(agent, state="idle", acks=[handed.commands[0].pk], generation=1)
    again = record_heartbeat(agent, state="failed", generation=1)
    assert again.agent.state == AgentState.FAILED


@pytest.mark.django_db(transaction=True)
def test_an_old_client_without_generations_keeps_todays_behaviour(registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="failed")
    handed = record_heartbeat(agent, state="failed")
    assert handed.agent.state == AgentState.RESTARTING
    assert record_heartbeat(agent, state="failed").agent.state == AgentState.FAILED


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_many_concurrent_copies_of_one_stale_failed_heartbeat(registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="running", generation=0)
    record_heartbeat(agent, state="failed", generation=0)  # restart queued
    start = threading.Barrier(20)
    results, errors = [], []

    def copy():
        try:
            start.wait(10)
            results.append(record_heartbeat(agent, state="failed", generation=0))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=copy) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sum(len(result.commands) for result in results) == 1  # the restart went out once
    agent.refresh_from_db()
    assert agent.state == AgentState.RESTARTING
    assert RemediationAction.objects.count() == 1
    assert not RemediationAction.objects.filter(status=ActionStatus.SKIPPED).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_never_advance_one_action_twice(registered_agent):
    set_steps(
        {"kind": "restart_worker", "after": 0, "verify": 30},
        {"kind": "drain", "after": 0, "verify": 30},
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        action = RemediationAction.objects.get()
        clock.shift(31)
        # While another worker holds the action, this one takes nothing.
        with held_by_another_worker(RemediationAction.objects.filter(pk=action.pk)):
            assert services.advance_due() == []

        start = threading.Barrier(2)
        claimed, errors = [], []

        def worker():
            try:
                start.wait(10)
                claimed.append(len(services.advance_due()))
            except Exception as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert errors == []
    assert sorted(claimed) == [0, 1]
    assert AgentCommand.objects.filter(kind="drain").count() == 1
    action.refresh_from_db()
    assert action.step_index == 1


@pytest.mark.django_db(transaction=True)
def test_it_leaves_monitors_alone_under_the_worker_policy(seeded):
    from monitoring.services import register_agent

    agent, _ = register_agent("monitor-01", "monitor")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
    assert not RemediationAction.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_alert_policy_acts_on_the_agent_its_alert_names(registered_agent):
    RemediationPolicy.objects.create(
        name="restart-on-heartbeat-alert",
        trigger=Trigger.ALERT,
        alert_rule="agent-heartbeat",
        severity="critical",
        matchers=["role=worker"],
        steps=[{"kind": "drain", "after": 0, "verify": 30}],
        priority=10,
    )
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(enabled=False)
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)

    action = RemediationAction.objects.get()
    assert action.policy.name == "restart-on-heartbeat-alert"
    assert action.trigger == Trigger.ALERT
    assert action.alert_fingerprint
    assert action.context["alert"]["rule"] == "agent-heartbeat"
    assert AgentCommand.objects.get().kind == "drain"


def test_the_lean_heartbeat_path_takes_a_generation_and_leaves_failures_to_django():
    from monitoring.ingest.validation import routine_report

    assert routine_report(b'{"state": "running", "generation": 3}').state == "running"
    assert routine_report(b'{"state": "idle", "generation": null}').state == "idle"
    assert routine_report(b'{"state": "idle", "generation": -1}') is None
    assert routine_report(b'{"state": "idle", "generation": "3"}') is None
    assert routine_report(b'{"state": "failed", "generation": 3}') is None


def test_the_client_reads_a_commands_generation_and_params_and_old_replies_alike():
    from omoi_client.results import Command

    new = Command.from_json(
        {
            "id": 7,
            "kind": "restart",
            "reason": "r",
            "issued_at": "2026-12-07T12:00:00Z",
            "generation": 2,
            "params": {"graceful_stop_seconds": 10},
        }
    )
    assert (new.generation, new.params) == (2, {"graceful_stop_seconds": 10})
    old = Command.from_json(
        {"id": 7, "kind": "restart", "reason": "r", "issued_at": "2026-12-07T12:00:00Z"}
    )
    assert (old.generation, old.params) == (None, {})
