"""Safety guards: kill switch, storm guard, budgets, capacity floor, breaker, selection."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from alerting.models import Alert
from monitoring.models import AgentCommand, AgentState, CommandKind
from monitoring.services import record_heartbeat, register_agent
from omoi_console.models import Event
from watchdog import guards, services
from watchdog.builtins import RESTART_POLICY
from watchdog.models import (
    ActionStatus,
    RemediationAction,
    RemediationPolicy,
    RestartBackoff,
    SkipReason,
    StormState,
    Trigger,
    WatchdogSwitch,
)
from watchdog.selection import SelectionRefused, select_agents

# Guards a test does not exercise stay out of its way.
QUIET = {
    "WATCHDOG_BUDGET_PER_MINUTE": 0,
    "WATCHDOG_POLICY_PER_MINUTE": 0,
    "WATCHDOG_STORM_MIN_AGENTS": 1000,
}


def events(name):
    return Event.objects.filter(name=name)


def restarts():
    return AgentCommand.objects.filter(kind=CommandKind.RESTART)


def skipped(reason):
    return RemediationAction.objects.filter(status=ActionStatus.SKIPPED, skip_reason=reason)


def fleet(count, role="worker", prefix="w"):
    agents = []
    for number in range(1, count + 1):
        agent, _ = register_agent(f"{prefix}-{number:02d}", role, heartbeat_interval=5.0)
        record_heartbeat(agent, state="running")
        agents.append(agent)
    return agents


def heal(agent):
    """Back to idle, obeying whatever restart it was handed on the way."""
    handed = record_heartbeat(agent, state="failed")
    record_heartbeat(agent, state="idle", acks=[command.pk for command in handed.commands])
    agent.refresh_from_db()
    assert agent.state == AgentState.IDLE


def alert_on(agent, number=1):
    return {
        "alert_id": number,
        "rule": "pull-out",
        "severity": "critical",
        "fingerprint": f"fp{number}",
        "labels": {"agent_id": agent.pk},
    }


# --- kill switch -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_acts_on_nothing_while_the_kill_switch_is_on(registered_agent):
    agent, _ = registered_agent
    record_heartbeat(agent, state="running")
    guards.set_kill_switch(True, by="user:alice", reason="incident 7: hands off")

    record_heartbeat(agent, state="failed")
    services.advance_due(timezone.now() + timedelta(hours=1))

    action = RemediationAction.objects.get()
    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.DRY_RUN)
    assert action.dry_run is True
    assert "kill switch on by user:alice: incident 7" in action.outcome
    assert "would restart worker-01" in action.outcome
    assert not AgentCommand.objects.exists()
    assert not RestartBackoff.objects.exists()
    assert events("watchdog.action.skipped").get().payload["reason"] == "dry_run"
    assert events("watchdog.escalated").exists()  # nobody acts: a person is told
    changed = events("watchdog.switch.changed").get()
    assert changed.payload == {
        "dry_run": True,
        "by": "user:alice",
        "reason": "incident 7: hands off",
    }

    guards.set_kill_switch(False, by="user:alice", reason="over")
    record_heartbeat(agent, state="idle")
    record_heartbeat(agent, state="failed")
    assert restarts().count() == 1  # acting again


@pytest.mark.django_db(transaction=True)
def test_the_kill_switch_stops_an_action_already_under_way(registered_agent):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(
        steps=[
            {"kind": "restart_worker", "after": 0, "verify": 30},
            {"kind": "drain", "after": 0, "verify": 30},
        ]
    )
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        record_heartbeat(agent, state="failed")
        assert restarts().count() == 1
        guards.set_kill_switch(True, by="user:alice", reason="hands off")
        clock.shift(31)
        services.advance_due()

    action = RemediationAction.objects.get()
    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.DRY_RUN)
    assert not AgentCommand.objects.filter(kind=CommandKind.DRAIN).exists()


@pytest.mark.django_db(transaction=True)
def test_admins_flip_the_kill_switch_in_the_admin_and_the_console_says_so(admin_client, seeded):
    url = "/admin/watchdog/watchdogswitch/add/"
    refused = admin_client.post(url, {"dry_run": "on", "reason": "  "})
    assert refused.status_code == 200 and b"say why" in refused.content
    assert not WatchdogSwitch.objects.exists()

    saved = admin_client.post(url, {"dry_run": "on", "reason": "partition on rack 3"})
    assert saved.status_code == 302, saved.content
    switch = WatchdogSwitch.objects.get()
    assert switch.dry_run and switch.changed_by == "user:admin" and switch.changed_at
    assert events("watchdog.switch.changed").get().payload["by"] == "user:admin"
    assert admin_client.get(url).status_code == 403  # one switch only

    state = admin_client.get("/console/state").json()["watchdog"]
    assert state["dry_run"] is True and state["switched_by"] == "user:admin"
    page = admin_client.get("/").content.decode()
    assert 'id="watchdog-banner"' in page and "partition on rack 3" in page

    admin_client.post(
        f"/admin/watchdog/watchdogswitch/{switch.pk}/change/", {"reason": "rack 3 is back"}
    )
    assert admin_client.get("/console/state").json()["watchdog"]["warnings"] == []
    assert events("watchdog.switch.changed").count() == 2


# --- storm guard -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(WATCHDOG_BUDGET_PER_MINUTE=0, WATCHDOG_POLICY_PER_MINUTE=0)
def test_a_storm_pauses_a_roles_restarts_with_one_alert_and_they_resume_on_recovery(seeded):
    RemediationPolicy.objects.create(
        name="restart-failed-monitor", trigger=Trigger.AGENT_FAILED, agent_role="monitor"
    )
    with time_machine.travel(timezone.now(), tick=False) as clock:
        workers = fleet(10)
        [monitor] = fleet(1, role="monitor", prefix="m")
        for worker in workers[:4]:
            record_heartbeat(worker, state="failed")
            clock.shift(2)
        assert restarts().count() == 4

        for worker in workers[4:6]:  # the fifth of ten within the window: a storm
            record_heartbeat(worker, state="failed")
        assert restarts().count() == 4
        assert skipped(SkipReason.STORM_GUARD).count() == 2
        assert events("watchdog.action.skipped").filter(payload__reason="storm_guard").count() == 2
        storm = events("watchdog.storm.started").get()
        assert storm.payload == {
            "role": "worker",
            "unhealthy": 5,
            "total": 10,
            "window_seconds": 60.0,
        }
        [alert] = Alert.objects.filter(rule__name="watchdog-storm")
        assert (alert.status, alert.severity, alert.labels["role"]) == (
            "firing",
            "critical",
            "worker",
        )
        assert alert.summary.startswith("5 of 10 workers failed at once")
        # One alert for the storm, not one per refused agent.
        assert not Alert.objects.filter(rule__name="remediation-failed").exists()
        assert StormState.objects.get(role="worker").paused

        record_heartbeat(monitor, state="failed")  # another role: unaffected
        assert restarts().filter(agent=monitor).count() == 1

        for worker in workers[:4]:
            heal(worker)
        assert StormState.objects.get(role="worker").paused  # 2 of 10: not under 20 % yet
        heal(workers[4])
        state = StormState.objects.get(role="worker")
        assert not state.paused and state.resumed_at == timezone.now()
        alert.refresh_from_db()
        assert alert.status == "resolved"
        assert events("watchdog.storm.ended").get().payload["unhealthy"] == 1

        clock.shift(2)
        record_heartbeat(workers[7], state="failed")
    assert restarts().filter(agent=workers[7]).count() == 1  # restarts resumed
    assert events("watchdog.storm.started").count() == 1


@pytest.mark.django_db(transaction=True)
@override_settings(WATCHDOG_BUDGET_PER_MINUTE=0, WATCHDOG_POLICY_PER_MINUTE=0)
def test_failures_spread_wider_than_the_window_or_too_few_are_no_storm(seeded):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        pair = fleet(2, prefix="p")
        for agent in pair:  # 2 of 2 is all of them, but under the minimum of 3
            record_heartbeat(agent, state="failed")
        workers = fleet(8)
        for worker in workers[:3]:
            clock.shift(61)
            record_heartbeat(worker, state="failed")
    assert restarts().count() == 5
    assert not events("watchdog.storm.started").exists()


@pytest.mark.django_db(transaction=True)
@override_settings(WATCHDOG_BUDGET_PER_MINUTE=0, WATCHDOG_POLICY_PER_MINUTE=0)
def test_agents_that_only_missed_a_heartbeat_are_no_storm(seeded):
    from monitoring.models import Agent

    with time_machine.travel(timezone.now(), tick=False):
        workers = fleet(4)
        # A slow network: three of four late by a heartbeat, which is DEGRADED, not failed.
        late = [worker.pk for worker in workers[:3]]
        Agent.objects.filter(pk__in=late).update(
            state=AgentState.DEGRADED, unhealthy_since=timezone.now()
        )
        record_heartbeat(workers[3], state="failed")

    assert restarts().count() == 1
    assert not events("watchdog.storm.started").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@override_settings(WATCHDOG_BUDGET_PER_MINUTE=0, WATCHDOG_POLICY_PER_MINUTE=0)
def test_two_workers_seeing_one_storm_at_once_pause_it_once(seeded):
    with override_settings(WATCHDOG_MODE="off"):
        workers = fleet(10)
        for worker in workers[:6]:
            record_heartbeat(worker, state="failed")
    StormState.objects.create(role="worker")  # evaluated before, when all was well
    start = threading.Barrier(2)
    errors = []

    def worker_process(agent):
        try:
            start.wait(10)
            services.open_remediation(Trigger.AGENT_FAILED, agent.pk)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker_process, args=(w,)) for w in workers[4:6]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert skipped(SkipReason.STORM_GUARD).count() == 2
    assert events("watchdog.storm.started").count() == 1
    assert Alert.objects.filter(rule__name="watchdog-storm").count() == 1


# --- budgets ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(
    WATCHDOG_BUDGET_PER_MINUTE=3, WATCHDOG_POLICY_PER_MINUTE=0, WATCHDOG_STORM_MIN_AGENTS=1000
)
def test_the_fleet_wide_budget_refuses_acts_past_it_until_the_next_minute(seeded):
    start = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=False) as clock:
        workers = fleet(6)
        for worker in workers[:5]:
            record_heartbeat(worker, state="failed")
        assert restarts().count() == 3
        refused = skipped(SkipReason.BUDGET)
        assert refused.count() == 2
        assert "budget of 3 acts a minute" in refused.first().outcome
        assert events("watchdog.escalated").count() == 2  # left unhealed: a person is told

        clock.shift(60)
        record_heartbeat(workers[5], state="failed")
    assert restarts().count() == 4


@pytest.mark.django_db(transaction=True)
@override_settings(
    WATCHDOG_BUDGET_PER_MINUTE=0, WATCHDOG_POLICY_PER_MINUTE=2, WATCHDOG_STORM_MIN_AGENTS=1000
)
def test_a_policy_acts_at_most_its_rate_a_minute(seeded):
    with time_machine.travel(timezone.now(), tick=False):
        for worker in fleet(3):
            record_heartbeat(worker, state="failed")
    assert restarts().count() == 2
    assert skipped(SkipReason.POLICY_RATE).get().outcome.endswith(f"{RESTART_POLICY} acted 2 times")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@override_settings(
    WATCHDOG_BUDGET_PER_MINUTE=4, WATCHDOG_POLICY_PER_MINUTE=0, WATCHDOG_STORM_MIN_AGENTS=1000
)
def test_two_workers_never_spend_more_than_the_budget_together(seeded):
    RemediationPolicy.objects.create(
        name="restart-failed-monitor", trigger=Trigger.AGENT_FAILED, agent_role="monitor"
    )
    # Two roles: each worker process contends on the budget alone, not on a role's storm row.
    with override_settings(WATCHDOG_MODE="off"):
        halves = [fleet(6), fleet(6, role="monitor", prefix="m")]
        for agent in halves[0] + halves[1]:
            record_heartbeat(agent, state="failed")
    start = threading.Barrier(2)
    errors = []

    def worker_process(agents):
        try:
            start.wait(10)
            for agent in agents:
                services.open_remediation(Trigger.AGENT_FAILED, agent.pk)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker_process, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert RemediationAction.objects.count() == 12
    assert restarts().count() == 4
    assert skipped(SkipReason.BUDGET).count() == 8


# --- capacity floor --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(
    WATCHDOG_MIN_HEALTHY_BY_ROLE={"worker": 2, "monitor": 0, "scheduler": 0}, **QUIET
)
def test_it_never_takes_out_an_agent_that_leaves_fewer_healthy_than_the_floor(seeded):
    RemediationPolicy.objects.create(
        name="quarantine-on-pull-out",
        trigger=Trigger.ALERT,
        alert_rule="pull-out",
        steps=[{"kind": "quarantine", "after": 0, "verify": 0}],
    )
    first, second, third = fleet(3)

    services.open_remediation(Trigger.ALERT, first.pk, alert=alert_on(first, 1))
    first.refresh_from_db()
    assert first.state == AgentState.QUARANTINED  # two healthy remain: at the floor

    action = services.open_remediation(Trigger.ALERT, second.pk, alert=alert_on(second, 2))
    second.refresh_from_db()
    assert second.state == AgentState.RUNNING
    assert (action.status, action.skip_reason) == (
        ActionStatus.SKIPPED,
        SkipReason.CAPACITY_FLOOR,
    )
    assert "only 1 healthy worker(s) would remain, the floor is 2" in action.outcome
    assert events("watchdog.action.skipped").get().payload["reason"] == "capacity_floor"
    # A person decides, though the agent is healthy.
    assert events("watchdog.escalated").filter(payload__agent_id=second.pk).count() == 1

    # Restarting an agent that is already down takes nothing out: the floor lets it through.
    record_heartbeat(third, state="failed")
    assert restarts().filter(agent=third).count() == 1


# --- circuit breaker -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(WATCHDOG_BREAKER_FAILURES=2, WATCHDOG_BREAKER_OPEN_SECONDS=600, **QUIET)
def test_a_policy_that_keeps_failing_opens_its_breaker_then_tries_again(seeded):
    workers = fleet(5)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for worker in workers[:2]:  # restarted, never healthy again
            record_heartbeat(worker, state="failed")
            clock.shift(61)
            services.advance_due()
        opened = events("watchdog.breaker.opened").get()
        assert opened.payload["policy"] == RESTART_POLICY and opened.payload["failures"] == 2
        last = RemediationAction.objects.get(agent=workers[1])
        assert last.status == ActionStatus.ESCALATED
        assert f"policy {RESTART_POLICY} paused until" in last.outcome

        record_heartbeat(workers[2], state="failed")
        refused = skipped(SkipReason.BREAKER_OPEN).get()
        assert refused.agent_id == workers[2].pk
        assert restarts().count() == 2

        clock.shift(601)  # open long enough: it tries once more, and heals this time
        record_heartbeat(workers[3], state="failed")
        assert restarts().count() == 3
        heal(workers[3])
        record_heartbeat(workers[4], state="failed")
    assert restarts().count() == 4
    assert events("watchdog.breaker.opened").count() == 1


# --- selections ------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(WATCHDOG_MAX_SELECTION_SHARE=0.25)
def test_it_refuses_an_empty_selector_and_one_that_takes_too_much_of_the_fleet(seeded):
    for number in range(8):
        register_agent(f"w-{number}", "worker", labels={"rack": "r1" if number < 2 else "r2"})
    register_agent("m-0", "monitor")
    register_agent("m-1", "monitor", labels={"rack": "r3"})

    with pytest.raises(SelectionRefused, match="empty selector selects every agent"):
        select_agents()
    with pytest.raises(SelectionRefused, match="takes 8 of 10 agents, more than 25%"):
        select_agents(role="worker")
    with pytest.raises(SelectionRefused, match="takes 6 of 10"):
        select_agents(matchers=["rack=r2"])
    with pytest.raises(SelectionRefused) as bad:
        select_agents(matchers=["rack=~("])
    assert bad.value.field == "matchers"

    assert {agent.pk for agent in select_agents(matchers=["rack=r1"])} == {"w-0", "w-1"}
    assert [agent.pk for agent in select_agents(role="monitor", matchers=["rack=r3"])] == ["m-1"]
    assert select_agents(matchers=["rack=r9"]) == []


@pytest.mark.django_db
def test_an_alert_policy_that_names_nothing_is_refused(admin_client, seeded):
    response = admin_client.post(
        "/api/v1/remediation-policies",
        {"name": "everything", "trigger": "alert", "steps": [{"kind": "drain"}]},
        content_type="application/json",
    )
    assert response.status_code == 422, response.content
    assert "must say what it acts on" in str(response.json())
    assert not RemediationPolicy.objects.filter(name="everything").exists()

    by_role = admin_client.post(
        "/api/v1/remediation-policies",
        {
            "name": "any-worker-alert",
            "trigger": "alert",
            "agent_role": "worker",
            "steps": [{"kind": "drain"}],
        },
        content_type="application/json",
    )
    assert by_role.status_code == 201, by_role.content
