"""A policy step that waits for an operator's approval before it acts."""

import threading
import time
from datetime import timedelta

import pytest
import time_machine
import yaml
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from alerting.models import Alert, AlertStatus
from monitoring.models import AgentCommand, AgentState
from monitoring.services import record_heartbeat
from omoi_console.models import Event
from tests.conftest import bearer
from tests.row_locks import held_by_another_worker
from tests.test_events import other_backend_waits_on_a_lock
from tests.test_watchdog import fail
from watchdog import approval, guards, policy_files, services
from watchdog.builtins import RESTART_POLICY
from watchdog.models import (
    ActionStatus,
    ApprovalDecision,
    RemediationAction,
    RemediationPolicy,
    SkipReason,
)
from watchdog.policies import MAX_APPROVAL_SECONDS, step_problems

ACTIONS = "/api/v1/remediation-actions"
TTL = 600


def ask_first(ttl: int = TTL, kind: str = "restart_worker") -> None:
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(
        steps=[{"kind": kind, "after": 0, "verify": 60, "approve": ttl}]
    )


def decide(api, token, action_id, decision, **body):
    return api.post(f"{ACTIONS}/{action_id}/{decision}", body, format="json", **bearer(token))


def events(name):
    return Event.objects.filter(name=name)


def approval_alerts():
    return Alert.objects.filter(rule__name="remediation-approval")


@pytest.fixture
def operator(make_operator):
    return make_operator("operator", "olga")[1]


@pytest.fixture
def waiting(registered_agent):
    """A failed worker whose restart waits for approval; yields (agent, action, clock)."""
    agent, _ = registered_agent
    ask_first()
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail(agent, clock)
        action = RemediationAction.objects.get()
        assert action.status == ActionStatus.AWAITING_APPROVAL
        yield agent, action, clock


# --- the policy's step -----------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_a_bad_approve_value_with_a_clear_message(api, seeded, make_operator):
    _, admin = make_operator("admin", "ada")
    bad = [-1, "600", True, 1.5, MAX_APPROVAL_SECONDS + 1]

    problems = [step_problems([{"kind": "restart_worker", "approve": value}]) for value in bad]
    on_escalate = step_problems([{"kind": "escalate", "approve": 60}])
    refused = api.post(
        "/api/v1/remediation-policies",
        {"name": "asks", "trigger": "agent_failed", "steps": [{"kind": "drain", "approve": -5}]},
        format="json",
        **bearer(admin),
    )

    for found in problems:
        assert found == [
            f"step 1: approve is whole seconds from 0 (no approval) to {MAX_APPROVAL_SECONDS}: "
            "how long the step waits for an operator"
        ]
    assert on_escalate == ["step 1: approve: a escalate step does nothing to the agent to approve"]
    assert step_problems([{"kind": "quarantine", "approve": MAX_APPROVAL_SECONDS}]) == []
    assert step_problems([{"kind": "restart_worker", "approve": 0}]) == []
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json()["errors"]] == ["steps"]
    assert not RemediationPolicy.objects.filter(name="asks").exists()


@pytest.mark.django_db
def test_it_carries_approve_through_the_policy_file_unchanged(seeded):
    ask_first(900)
    exported = policy_files.dump()
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(steps=[{"kind": "drain"}])

    policy_files.load(exported)

    assert policy_files.dump() == exported
    steps = yaml.safe_load(exported)["policies"][0]["steps"]
    assert steps == [{"kind": "restart_worker", "after": 0, "verify": 60, "approve": 900}]
    assert RemediationPolicy.objects.get(name=RESTART_POLICY).steps[0]["approve"] == 900


# --- waiting ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_waits_for_approval_instead_of_acting_and_tells_a_person(waiting):
    agent, action, _ = waiting
    now = timezone.now()

    assert action.approval_expires_at == action.next_step_at == now + timedelta(seconds=TTL)
    assert not AgentCommand.objects.exists()
    assert action.history[-1]["approval"] == "requested"
    assert "restart worker-01" in action.history[-1]["detail"]
    requested = events("watchdog.approval.requested").get()
    assert requested.payload["action_id"] == action.pk
    assert requested.payload["expires_at"] == action.approval_expires_at.isoformat()
    alert = approval_alerts().get()
    assert alert.status == AlertStatus.FIRING
    assert alert.labels["action_id"] == str(action.pk)
    assert alert.labels["agent_id"] == agent.pk
    assert alert.notifications.exists()  # delivered like every alert
    assert not events("watchdog.action.started").exists()


@pytest.mark.django_db(transaction=True)
def test_an_operator_approves_and_the_step_acts_audited(api, waiting, operator):
    _, action, clock = waiting
    clock.shift(30)

    answer = decide(api, operator, action.pk, "approve", reason="host checked")

    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == ActionStatus.VERIFYING
    assert body["approval_decision"] == "approved"
    assert body["approval_decided_by"] == "olga"
    assert body["approval_reason"] == "host checked"
    action.refresh_from_db()
    assert action.command.kind == "restart"
    # The restart carries the failure's trace, not the operator's request's.
    assert action.trace_id and action.command.trace_id == action.trace_id
    assert action.approval_decided_at == timezone.now()
    approved = [e for e in action.history if e.get("approval") == "approved"]
    assert approved == [
        {
            "step": 0,
            "kind": "restart_worker",
            "at": timezone.now().isoformat(),
            "detail": "approved by olga: host checked",
            "approval": "approved",
            "actor": "olga",
            "reason": "host checked",
        }
    ]
    decided = events("watchdog.approval.decided").get()
    assert (decided.payload["decision"], decided.payload["by"]) == ("approved", "olga")
    assert events("watchdog.action.started").count() == 1
    assert approval_alerts().get().status == AlertStatus.RESOLVED


@pytest.mark.django_db(transaction=True)
def test_an_approved_step_is_still_held_by_the_kill_switch_turned_on_meanwhile(
    api, waiting, operator
):
    _, action, _ = waiting
    guards.set_kill_switch(True, by="ada", reason="release freeze")

    answer = decide(api, operator, action.pk, "approve")

    assert answer.status_code == 200
    action.refresh_from_db()
    assert action.status == ActionStatus.SKIPPED
    assert action.skip_reason == SkipReason.DRY_RUN
    assert "release freeze" in action.outcome
    assert action.approval_decision == ApprovalDecision.APPROVED
    assert not AgentCommand.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_rejected_step_is_skipped_and_the_agent_escalated(api, waiting, operator):
    _, action, _ = waiting

    answer = decide(api, operator, action.pk, "reject", reason="holds a migration")

    assert answer.status_code == 200
    action.refresh_from_db()
    assert action.status == ActionStatus.SKIPPED
    assert action.skip_reason == SkipReason.REJECTED
    assert action.outcome == "rejected: rejected by olga: holds a migration"
    assert action.approval_decision == ApprovalDecision.REJECTED
    assert action.approval_expires_at is None
    assert not AgentCommand.objects.exists()
    escalated = events("watchdog.escalated").get()
    assert escalated.payload["reason"].startswith("remediation skipped (rejected)")
    assert Alert.objects.filter(rule__name="remediation-failed", status="firing").exists()
    assert approval_alerts().get().status == AlertStatus.RESOLVED


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_expires_an_undecided_approval_as_rejected(waiting):
    _, action, clock = waiting

    clock.shift(TTL - 1)
    services.advance_due()
    assert RemediationAction.objects.get().status == ActionStatus.AWAITING_APPROVAL
    clock.shift(1)
    # Read back from the rows alone, as a console restarted meanwhile would.
    services.advance_due()

    action.refresh_from_db()
    assert action.status == ActionStatus.SKIPPED
    assert action.skip_reason == SkipReason.REJECTED
    assert action.approval_decision == ApprovalDecision.EXPIRED
    assert action.approval_reason == "approval expired"
    assert action.approval_decided_by == "watchdog"
    assert action.outcome == (f"rejected: approval expired: nobody approved step 1 within {TTL}s")
    assert events("watchdog.approval.decided").get().payload["decision"] == "expired"
    assert events("watchdog.escalated").count() == 1
    assert not AgentCommand.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_decision_after_the_expiry_is_refused_and_expires_the_action(api, waiting, operator):
    _, action, clock = waiting
    clock.shift(TTL)

    answer = decide(api, operator, action.pk, "approve")

    assert answer.status_code == 409
    assert "expired" in answer.json()["detail"]
    action.refresh_from_db()
    assert (action.status, action.approval_decision) == (ActionStatus.SKIPPED, "expired")
    assert not AgentCommand.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_agent_that_recovers_while_it_waits_withdraws_the_request(waiting):
    agent, action, clock = waiting
    clock.shift(5)

    record_heartbeat(agent, state="idle")

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert action.approval_decision == ApprovalDecision.WITHDRAWN
    assert action.approval_expires_at is None
    assert events("watchdog.approval.decided").get().payload["decision"] == "withdrawn"
    assert approval_alerts().get().status == AlertStatus.RESOLVED


@pytest.mark.django_db(transaction=True)
def test_a_waiting_action_keeps_the_agent_busy_for_others(api, waiting, operator):
    agent, action, _ = waiting

    manual_restart = api.post(
        f"/api/v1/agents/{agent.pk}/actions/restart", {}, format="json", **bearer(operator)
    )

    assert manual_restart.status_code == 409
    assert f"action {action.pk}" in manual_restart.json()["detail"]
    assert RemediationAction.objects.count() == 1


# --- refusals --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_refuses_deciding_twice_or_what_does_not_wait_or_does_not_exist(api, waiting, operator):
    _, action, _ = waiting
    assert decide(api, operator, action.pk, "reject").status_code == 200

    twice = decide(api, operator, action.pk, "approve")
    other = RemediationAction.objects.create(
        policy=action.policy,
        agent=action.agent,
        step="restart_worker",
        status=ActionStatus.SUCCEEDED,
        idempotency_key="done",
        reason="earlier",
    )
    not_waiting = decide(api, operator, other.pk, "approve")
    unknown = decide(api, operator, 999999, "approve")
    huge = decide(api, operator, "99999999999999999999", "reject")
    word = decide(api, operator, "abc", "reject")

    assert twice.status_code == 409
    assert twice.json()["detail"].startswith(
        f"Action {action.pk} is not awaiting approval: it was rejected by olga at "
    )
    assert not_waiting.status_code == 409
    assert not_waiting.json()["detail"] == f"Action {other.pk} is succeeded, not awaiting approval."
    assert [r.status_code for r in (unknown, huge, word)] == [404, 404, 404]
    assert unknown.json()["detail"] == "No action 999999."


@pytest.mark.django_db(transaction=True)
def test_only_operators_decide_and_bad_bodies_are_refused(api, waiting, make_operator, operator):
    _, action, _ = waiting
    _, viewer = make_operator("viewer", "vic")

    as_viewer = decide(api, viewer, action.pk, "approve")
    anonymous = api.post(f"{ACTIONS}/{action.pk}/approve", {}, format="json")
    too_long = decide(api, operator, action.pk, "approve", reason="x" * 301)
    not_text = decide(api, operator, action.pk, "reject", reason={"a": 1})
    not_object = api.post(
        f"{ACTIONS}/{action.pk}/reject", [1, 2], format="json", **bearer(operator)
    )

    assert as_viewer.status_code == 403
    assert anonymous.status_code == 401
    assert [r.status_code for r in (too_long, not_text, not_object)] == [422, 422, 422]
    assert RemediationAction.objects.get().status == ActionStatus.AWAITING_APPROVAL


@pytest.mark.django_db
def test_explain_says_the_step_would_wait_for_approval(api, registered_agent, operator):
    agent, _ = registered_agent
    ask_first(300)
    agent.state = AgentState.FAILED
    agent.save(update_fields=["state"])

    body = api.get(
        f"/api/v1/remediation-policies/explain?agent={agent.pk}", **bearer(operator)
    ).json()

    assert body["would_act"] is True
    assert body["steps"][0]["approve"] == 300
    assert body["steps"][0]["approval"].startswith("waits up to 300s for an operator to approve it")
    assert not RemediationAction.objects.exists()


# --- concurrency (PostgreSQL) ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_approve_and_a_reject_at_once_give_one_decision(waiting, monkeypatch):
    _, action, _ = waiting
    entered = []
    close = approval.close

    def slow_close(*args, **kwargs):
        # Hold the first decision's transaction open until the second either came in
        # here too (no lock) or waits behind the action's row lock.
        entered.append(1)
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline and len(entered) < 2 and not other_backend_waits_on_a_lock()
        ):
            time.sleep(0.01)  # polling another thread's progress, not waiting out a clock
        return close(*args, **kwargs)

    monkeypatch.setattr(approval, "close", slow_close)
    start = threading.Barrier(2)
    outcomes = []

    def operator(decision, name):
        try:
            start.wait(10)
            approval.decide(action.pk, decision, by=name)
            outcomes.append(decision)
        except approval.Conflict:
            outcomes.append("conflict")
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=operator, args=args)
        for args in (("approved", "ann"), ("rejected", "bob"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) in (["approved", "conflict"], ["conflict", "rejected"])
    assert events("watchdog.approval.decided").count() == 1
    action.refresh_from_db()
    decided = [e for e in action.history if e.get("approval") in ("approved", "rejected")]
    assert len(decided) == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_skips_a_waiting_action_another_worker_holds(waiting):
    _, action, clock = waiting
    clock.shift(TTL)
    rows = RemediationAction.objects.filter(pk=action.pk)

    with held_by_another_worker(rows):
        assert services.advance_due() == []
        assert rows.get().status == ActionStatus.AWAITING_APPROVAL

    assert [a.pk for a in services.advance_due()] == [action.pk]
    assert rows.get().approval_decision == ApprovalDecision.EXPIRED
    assert services.advance_due() == []
    assert events("watchdog.approval.decided").count() == 1


# --- the console -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_action_page_offers_operators_the_decision_and_then_shows_it(
    client, api, waiting, make_operator, operator
):
    _, action, _ = waiting
    viewer, _ = make_operator("viewer", "vic")
    olga = get_user_model().objects.get(username="olga")

    client.force_login(olga)
    for_operator = client.get(f"/actions/{action.pk}").content.decode()
    front = client.get("/").content.decode()
    client.force_login(viewer)
    for_viewer = client.get(f"/actions/{action.pk}").content.decode()
    decide(api, operator, action.pk, "reject", reason="holds a migration")
    client.force_login(olga)
    decided = client.get(f"/actions/{action.pk}").content.decode()

    assert 'id="approval-form"' in for_operator
    assert 'value="approve">Approve</button>' in for_operator
    assert 'value="reject">Reject</button>' in for_operator
    assert 'name="csrfmiddlewaretoken"' in for_operator
    assert "console/approval.js" in for_operator
    assert "restart worker-01" in for_operator  # what the step would do
    assert 'id="approval-form"' not in for_viewer
    assert "Only operators may approve or reject it." in for_viewer
    assert ">1 awaiting approval</span>" in front
    assert 'id="approval-form"' not in decided
    assert "<strong>rejected</strong> by olga" in decided
    assert "(holds a migration)" in decided
    assert ">0 awaiting approval</span>" in client.get("/").content.decode()
