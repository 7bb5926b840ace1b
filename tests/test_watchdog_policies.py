"""Policies: cooldown, hourly cap, backoff, escalation timers, dry run, validation."""

import itertools
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.utils import timezone

from alerting.models import Alert
from monitoring.models import AgentCommand, AgentState, CommandKind
from monitoring.services import record_heartbeat
from omoi_console.models import Event
from watchdog import services
from watchdog.builtins import RESTART_POLICY
from watchdog.models import (
    ActionStatus,
    RemediationAction,
    RemediationPolicy,
    RestartBackoff,
    SkipReason,
    Trigger,
)


def policy():
    return RemediationPolicy.objects.get(name=RESTART_POLICY)


def restarts():
    return AgentCommand.objects.filter(kind=CommandKind.RESTART).order_by("pk")


def events(name):
    return Event.objects.filter(name=name)


def heal(agent):
    """The agent obeys its restart and comes back idle."""
    handed = record_heartbeat(agent, state="failed")
    acks = [c.pk for c in handed.commands]
    record_heartbeat(agent, state="idle", acks=acks)
    agent.refresh_from_db()
    assert agent.state == AgentState.IDLE


def test_the_default_policy_has_todays_defaults(seeded):
    default = policy()
    assert default.cooldown_seconds == 60
    assert default.max_per_hour == 3
    assert default.graceful_stop_seconds == 10
    assert default.steps == [{"kind": "restart_worker", "after": 0, "verify": 60}]
    default.full_clean()


@pytest.mark.django_db(transaction=True)
def test_a_second_failure_within_the_cooldown_waits_for_it_then_restarts(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="failed")  # restart 1 at t0
        t0 = restarts().get().created_at
        heal(agent)
        clock.shift(5)
        record_heartbeat(agent, state="failed")

        second = RemediationAction.objects.order_by("-pk").first()
        assert second.status == ActionStatus.PLANNED
        assert second.next_step_at == t0 + timedelta(seconds=60)
        assert restarts().count() == 1
        deferred = events("watchdog.action.deferred").get()
        assert deferred.payload["reason"] == "cooldown"

        clock.move_to(t0 + timedelta(seconds=59))
        assert services.advance_due() == []
        clock.move_to(t0 + timedelta(seconds=60))
        services.advance_due()

    second.refresh_from_db()
    assert second.status == ActionStatus.VERIFYING
    assert restarts().count() == 2


@pytest.mark.django_db(transaction=True)
def test_three_restarts_an_hour_then_escalation(registered_agent):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(3):
            record_heartbeat(agent, state="failed")
            services.advance_due()
            heal(agent)
            clock.shift(61)
            services.advance_due()
        assert restarts().count() == 3

        record_heartbeat(agent, state="failed")  # the fourth failure within the hour
        services.advance_due()

    fourth = RemediationAction.objects.order_by("-pk").first()
    assert fourth.status == ActionStatus.SKIPPED
    assert fourth.skip_reason == SkipReason.HOURLY_CAP
    assert restarts().count() == 3
    assert events("watchdog.action.skipped").get().payload["reason"] == "hourly_cap"
    assert events("watchdog.escalated").get().payload["agent_id"] == agent.pk
    assert Alert.objects.get(rule__name="remediation-failed").status == "firing"


@pytest.mark.django_db(transaction=True)
def test_escalation_timers_run_on_the_clock(registered_agent):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(
        steps=[
            {"kind": "restart_worker", "after": 0, "verify": 30},
            {"kind": "drain", "after": 60, "verify": 0},
            {"kind": "escalate", "after": 0, "verify": 0},
        ]
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="failed")
        action = RemediationAction.objects.get()
        t0 = action.started_at
        assert action.next_step_at == t0 + timedelta(seconds=30)

        clock.move_to(t0 + timedelta(seconds=29.9))
        assert services.advance_due() == []
        clock.move_to(t0 + timedelta(seconds=30))
        services.advance_due()
        action.refresh_from_db()
        assert (action.step, action.status) == ("drain", ActionStatus.RUNNING)
        assert action.next_step_at == t0 + timedelta(seconds=90)

        clock.move_to(t0 + timedelta(seconds=89.9))
        assert services.advance_due() == []
        assert not events("watchdog.escalated").exists()
        clock.move_to(t0 + timedelta(seconds=90))
        services.advance_due()

    action.refresh_from_db()
    assert (action.step, action.status) == ("escalate", ActionStatus.ESCALATED)
    assert action.finished_at == t0 + timedelta(seconds=90)
    assert events("watchdog.escalated").get().payload["reason"].startswith("escalated by step 3")


@pytest.mark.django_db(transaction=True)
def test_pending_steps_survive_a_restart_of_the_console(registered_agent):
    """Everything is in the database: a fresh process picks the due step up."""
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(
        steps=[
            {"kind": "restart_worker", "after": 0, "verify": 30},
            {"kind": "drain", "after": 0, "verify": 30},
        ]
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="failed")
        clock.shift(31)
        # No in-memory state: only the row says what comes next.
        from django.db import connections

        connections.close_all()
        services.advance_due()
    assert AgentCommand.objects.filter(kind="drain").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_policy_changes_nothing(registered_agent):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(dry_run=True)
    agent, _ = registered_agent
    record_heartbeat(agent, state="running")
    before = agent.__class__.objects.values().get(pk=agent.pk)

    record_heartbeat(agent, state="failed")
    services.advance_due(timezone.now() + timedelta(hours=1))

    action = RemediationAction.objects.get()
    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.DRY_RUN)
    assert action.dry_run is True
    assert not AgentCommand.objects.exists()
    assert not RestartBackoff.objects.exists()
    after = agent.__class__.objects.values().get(pk=agent.pk)
    assert after["state"] == AgentState.FAILED  # as the agent said: nobody touched it
    assert after["restart_generation"] == before["restart_generation"] == 0


def test_backoff_doubles_from_ten_seconds_to_a_five_minute_cap():
    delays = [services.backoff_delay(streak) for streak in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


@pytest.mark.django_db(transaction=True)
def test_restart_backoff_gates_restarts_and_resets_after_ten_clean_minutes(registered_agent):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(
        cooldown_seconds=0, max_per_hour=100
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(6):  # a crash loop: fails again as soon as it is back
            record_heartbeat(agent, state="failed")
            action = RemediationAction.objects.order_by("-pk").first()
            if action.status == ActionStatus.PLANNED:  # held back by the backoff
                clock.move_to(action.next_step_at)
                services.advance_due()
            heal(agent)
            clock.shift(1)
        times = [command.created_at for command in restarts()]
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
        assert gaps == [10, 20, 40, 80, 160]
        assert events("watchdog.action.deferred").first().payload["reason"] == "backoff"
        assert RestartBackoff.objects.get().streak == 6

        clock.shift(601)  # ten minutes of clean running
        record_heartbeat(agent, state="failed")

    action = RemediationAction.objects.order_by("-pk").first()
    assert action.status == ActionStatus.VERIFYING  # restarted at once
    assert RestartBackoff.objects.get().streak == 1


@pytest.mark.django_db
def test_an_invalid_policy_is_refused_naming_the_field(seeded):
    bad = RemediationPolicy(
        name="bad",
        trigger=Trigger.AGENT_FAILED,
        steps=[{"kind": "reboot_the_world", "after": -1}],
        severity="critical",
    )
    with pytest.raises(ValidationError) as refused:
        bad.full_clean()
    assert set(refused.value.message_dict) == {"steps", "severity"}
    assert "reboot_the_world" in refused.value.message_dict["steps"][0]


@pytest.mark.django_db
def test_the_api_refuses_an_invalid_policy_with_422_and_saves_nothing(admin_client):
    url = "/api/v1/remediation-policies"
    response = admin_client.post(
        url,
        {
            "name": "alert-drain",
            "trigger": "alert",
            "matchers": ["queue=~("],
            "steps": [{"kind": "drain", "verify": "soon"}],
        },
        content_type="application/json",
    )
    assert response.status_code == 422, response.content
    body = response.json()
    assert "steps" in str(body) and "matchers" in str(body)
    assert not RemediationPolicy.objects.filter(name="alert-drain").exists()

    good = admin_client.post(
        url,
        {
            "name": "alert-drain",
            "trigger": "alert",
            "alert_rule": "queue-depth-high",
            "matchers": ["queue=~in.*"],
            "steps": [{"kind": "drain", "after": 0, "verify": 120}],
        },
        content_type="application/json",
    )
    assert good.status_code == 201, good.content
    assert good.json()["cooldown_seconds"] == 60


@pytest.mark.django_db(transaction=True)
def test_the_api_lists_actions_with_their_steps_and_context(admin_client, registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="failed")

    listed = admin_client.get(f"/api/v1/remediation-actions?agent={agent.pk}&status=verifying")
    assert listed.status_code == 200, listed.content
    [row] = listed.json()["results"]
    assert row["policy"] == RESTART_POLICY
    assert (row["step"], row["step_index"], row["status"]) == ("restart_worker", 0, "verifying")
    assert row["context"]["state"] == "failed"
    assert row["history"][0]["detail"] == "restart queued (generation 1)"
    assert row["next_step_at"] and row["idempotency_key"].endswith(row["episode"])
    detail = admin_client.get(f"/api/v1/remediation-actions/{row['id']}").json()
    assert detail["steps"] == policy().steps
    assert admin_client.get("/api/v1/remediation-actions?status=skipped").json()["results"] == []
    shown = admin_client.get(f"/api/v1/remediation-policies/{policy().pk}").json()
    assert shown["steps"] == policy().steps and shown["graceful_stop_seconds"] == 10
