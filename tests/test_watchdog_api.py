import threading
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connections
from django.utils import timezone

from alerting.models import Alert, AlertRule
from monitoring.models import AgentCommand, AgentState, CommandKind
from monitoring.services import record_heartbeat, register_agent, transition
from omoi_console.models import Event
from tests.conftest import bearer
from tests.test_events import other_backend_waits_on_a_lock
from watchdog import manual, services
from watchdog.builtins import RESTART_POLICY, manual_policy
from watchdog.models import ActionStatus, RemediationAction, RemediationPolicy, Trigger

EXPLAIN = "/api/v1/remediation-policies/explain"


def act(api, token, agent_id, kind, **body):
    return api.post(
        f"/api/v1/agents/{agent_id}/actions/{kind}", body, format="json", **bearer(token)
    )


@pytest.fixture
def operator(make_operator):
    return make_operator("operator", "olga")[1]


# --- explain ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_explains_which_policy_would_restart_a_failed_worker_without_acting(
    api, registered_agent, make_operator
):
    agent, _ = registered_agent
    transition(agent, AgentState.FAILED, reason="test", actor="test")
    manual_policy()  # operators acted before: never a candidate for events
    _, token = make_operator("viewer")

    answer = api.get(EXPLAIN, {"agent": agent.pk}, **bearer(token))

    assert answer.status_code == 200
    body = answer.json()
    assert body["policy"] == RESTART_POLICY
    assert body["would_act"] is True
    assert body["steps"][0]["kind"] == "restart_worker"
    assert body["steps"][0]["plan"] == "restart worker-01 (10s graceful stop)"
    assert body["steps"][0]["then"] == "if not healthy within 60s, escalate to a person"
    assert "manual" not in [c["policy"] for c in body["candidates"]]
    assert not RemediationAction.objects.exists()
    assert not AgentCommand.objects.exists()


@pytest.mark.django_db
def test_it_says_why_nothing_would_act(api, registered_agent, operator):
    agent, _ = registered_agent  # idle: not failed
    monitor, _ = register_agent("monitor-01", "monitor")

    healthy = api.get(EXPLAIN, {"agent": agent.pk}, **bearer(operator)).json()
    other_role = api.get(EXPLAIN, {"agent": monitor.pk}, **bearer(operator)).json()

    assert healthy["policy"] == RESTART_POLICY
    assert healthy["would_act"] is False
    assert healthy["held_by"].startswith("not_actionable")
    assert other_role["policy"] is None
    assert other_role["held_by"] == "no policy matches"
    [restart] = [c for c in other_role["candidates"] if c["policy"] == RESTART_POLICY]
    assert restart["why"] == "for worker agents; this one is a monitor"


@pytest.mark.django_db
def test_it_explains_an_alert_by_its_rule_and_labels(api, registered_agent, operator):
    agent, _ = registered_agent
    RemediationPolicy.objects.create(
        name="drain-on-errors",
        trigger=Trigger.ALERT,
        severity="critical",
        matchers=["queue=~in.*"],
        steps=[{"kind": "drain", "after": 30, "verify": 0}, {"kind": "quarantine"}],
        priority=1,
    )
    rule = AlertRule.objects.first()
    alert = Alert.objects.create(
        rule=rule,
        fingerprint="f" * 16,
        labels={"agent_id": agent.pk, "queue": "inbox"},
        severity="critical",
        status="firing",
    )

    body = api.get(EXPLAIN, {"alert": alert.pk}, **bearer(operator)).json()

    assert body["policy"] == "drain-on-errors"
    assert body["trigger"] == "alert"
    assert [s["kind"] for s in body["steps"]] == ["drain", "quarantine"]
    assert body["steps"][0]["then"] == "if not healthy within 30s, step 2"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "alert"),
        ({"alert": 1, "agent": "x"}, "alert"),
        ({"alert": "x"}, "alert"),
        ({"agent": "worker-01", "trigger": "manual"}, "trigger"),
    ],
)
def test_it_refuses_a_bad_explain_query_naming_the_field(
    api, registered_agent, operator, query, field
):
    answer = api.get(EXPLAIN, query, **bearer(operator))

    assert answer.status_code == 422
    assert field in [e["field"] for e in answer.json()["errors"]]


@pytest.mark.django_db
def test_it_answers_404_for_an_unknown_agent_or_alert(api, seeded, operator):
    assert api.get(EXPLAIN, {"agent": "nobody"}, **bearer(operator)).status_code == 404
    assert api.get(EXPLAIN, {"alert": 999}, **bearer(operator)).status_code == 404


# --- manual actions ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_operator_restarts_an_agent_audited_and_bypassing_the_cooldown(
    api, registered_agent, operator
):
    agent, _ = registered_agent
    with time_machine.travel(timezone.now(), tick=False) as clock:
        first = act(api, operator, agent.pk, "restart", reason="stuck on a lock")
        assert first.status_code == 201, first.json()
        action = RemediationAction.objects.get(pk=first.json()["id"])
        assert action.actor == "user:olga"
        assert action.trigger == Trigger.MANUAL
        assert action.status == ActionStatus.VERIFYING
        assert action.reason == "stuck on a lock"
        assert action.command.kind == CommandKind.RESTART
        assert action.command.issued_by == "user:olga"

        handed = record_heartbeat(agent, state="idle")
        assert [c.kind for c in handed.commands] == ["restart"]
        clock.shift(2)
        record_heartbeat(agent, state="idle", acks=[handed.commands[0].pk], generation=1)
        action.refresh_from_db()
        assert action.status == ActionStatus.SUCCEEDED

        # Seconds later: no cooldown or backoff holds an operator back.
        clock.shift(1)
        again = act(api, operator, agent.pk, "restart")
        assert again.status_code == 201
    started = Event.objects.filter(name="watchdog.action.started").first()
    assert started.payload["actor"] == "user:olga"


@pytest.mark.django_db
def test_quarantine_then_release_go_through_the_state_machine(api, registered_agent, operator):
    agent, _ = registered_agent

    quarantined = act(api, operator, agent.pk, "quarantine")
    restart = act(api, operator, agent.pk, "restart")
    released = act(api, operator, agent.pk, "release")
    again = act(api, operator, agent.pk, "release")

    assert quarantined.status_code == 201
    assert quarantined.json()["status"] == "succeeded"
    assert quarantined.json()["after_state"] == AgentState.QUARANTINED
    assert restart.status_code == 409
    assert "release it first" in restart.json()["detail"]
    assert released.status_code == 201
    assert released.json()["after_state"] == AgentState.IDLE
    assert again.status_code == 409
    agent.refresh_from_db()
    assert agent.state == AgentState.IDLE
    assert agent.transitions.filter(actor="user:olga").count() == 2


@pytest.mark.django_db
def test_drain_and_token_recycle_queue_commands_that_outlive_their_finished_action(
    api, registered_agent, operator
):
    agent, _ = registered_agent

    drained = act(api, operator, agent.pk, "drain")
    recycled = act(api, operator, agent.pk, "recycle-token")

    assert drained.status_code == recycled.status_code == 201
    assert [c.kind for c in record_heartbeat(agent, state="idle").commands] == [
        "drain",
        "recycle_token",
    ]


@pytest.mark.django_db
def test_it_refuses_with_409_when_an_action_already_runs_on_the_agent(
    api, registered_agent, operator
):
    agent, _ = registered_agent
    assert act(api, operator, agent.pk, "restart").status_code == 201

    second = act(api, operator, agent.pk, "drain")

    assert second.status_code == 409
    assert "already running" in second.json()["detail"]
    assert RemediationAction.objects.count() == 1


@pytest.mark.django_db
def test_it_refuses_unknown_terminated_and_bad_input(api, registered_agent, operator):
    agent, _ = registered_agent
    assert act(api, operator, "nobody", "restart").status_code == 404
    assert act(api, operator, agent.pk, "explode").status_code == 404
    bad = act(api, operator, agent.pk, "restart", reason="x" * 301)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "reason"
    transition(agent, AgentState.TERMINATED, reason="test", actor="test")
    assert act(api, operator, agent.pk, "restart").status_code == 409
    assert not RemediationAction.objects.exists()


@pytest.mark.django_db
def test_viewers_may_explain_but_not_act(api, registered_agent, make_operator):
    agent, _ = registered_agent
    _, viewer = make_operator("viewer")

    assert act(api, viewer, agent.pk, "restart").status_code == 403
    assert api.post(f"/api/v1/agents/{agent.pk}/actions/restart").status_code in (401, 403)
    assert not RemediationAction.objects.exists()


@pytest.mark.django_db
def test_the_manual_policy_is_not_edited_nor_chosen_as_a_trigger(api, seeded, make_operator):
    _, admin = make_operator("admin")
    manual = manual_policy()

    edited = api.patch(
        f"/api/v1/remediation-policies/{manual.pk}", {"priority": 1}, format="json", **bearer(admin)
    )
    created = api.post(
        "/api/v1/remediation-policies",
        {"name": "mine", "trigger": "manual"},
        format="json",
        **bearer(admin),
    )
    release_step = api.post(
        "/api/v1/remediation-policies",
        {"name": "mine", "trigger": "agent_failed", "steps": [{"kind": "release"}]},
        format="json",
        **bearer(admin),
    )

    assert edited.status_code == created.status_code == release_step.status_code == 422
    assert "trigger" in [e["field"] for e in created.json()["errors"]]
    assert any(e["field"].startswith("steps") for e in release_step.json()["errors"])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_operators_acting_at_once_on_one_agent_get_one_action_and_one_409(
    registered_agent, monkeypatch
):
    agent, _ = registered_agent
    entered = []
    context = services.monitoring_context

    def slow_context(*args, **kwargs):
        # Hold the first action's transaction open until the second operator either
        # came in here too or waits behind the agent's lock.
        entered.append(1)
        deadline = timezone.now() + timedelta(seconds=10)
        while (
            timezone.now() < deadline and len(entered) < 2 and not other_backend_waits_on_a_lock()
        ):
            time.sleep(0.01)  # polling another thread's progress, not waiting out a clock
        return context(*args, **kwargs)

    monkeypatch.setattr(services, "monitoring_context", slow_context)
    start = threading.Barrier(2)
    outcomes = []

    def operator(name):
        try:
            start.wait(10)
            manual.run_manual_action(agent.pk, "restart", actor=f"user:{name}")
            outcomes.append("acted")
        except manual.Conflict:
            outcomes.append("conflict")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=operator, args=(n,)) for n in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["acted", "conflict"]
    assert RemediationAction.objects.count() == 1
