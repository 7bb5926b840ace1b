"""The failover and request_replacement steps: who gets a task, when, and what holds them."""

import contextlib
import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connections
from django.utils import timezone

from monitoring.models import Agent, AgentCommand, AgentState, CommandKind, CommandStatus
from monitoring.services import (
    check_heartbeats,
    queue_command,
    record_heartbeat,
    register_agent,
    transition,
)
from omoi_console.models import Event
from tests.conftest import bearer
from tests.delivery_receivers import Answer, HttpReceiver
from watchdog import guards, policy_files, services
from watchdog.builtins import RESTART_POLICY
from watchdog.models import (
    ActionStatus,
    RemediationAction,
    RemediationPolicy,
    SkipReason,
    StormState,
    Trigger,
)
from watchdog.selection import failover_candidates
from watchdog.steps import failover as failover_step

TOKEN = "registry-token-0123456789"
EXPLAIN = "/api/v1/remediation-policies/explain"


def events(name):
    return Event.objects.filter(name=name)


def take_task_commands():
    return AgentCommand.objects.filter(kind=CommandKind.TAKE_TASK)


def set_steps(*steps, **fields):
    RemediationPolicy.objects.filter(name=RESTART_POLICY).update(steps=list(steps), **fields)


def step(kind, verify=30, after=0):
    return {"kind": kind, "after": after, "verify": verify}


def worker(agent_id, state="idle", task=""):
    """A worker that heartbeated once, reporting ``state`` and ``task``."""
    agent, _ = register_agent(agent_id, "worker", heartbeat_interval=5.0)
    record_heartbeat(agent, state=state, task_id=task, progress=0.1 if task else None)
    agent.refresh_from_db()
    return agent


def fail_with_task(agent, task="t-1", progress=0.4):
    """The agent runs ``task``, then reports its own failure: the watchdog opens an action."""
    record_heartbeat(agent, state="running", task_id=task, progress=progress)
    record_heartbeat(agent, state="failed", task_id=task, progress=progress)
    return RemediationAction.objects.get(agent=agent)


def holder_of(agent_id):
    return Agent.objects.values_list("current_task", flat=True).get(pk=agent_id)


@pytest.fixture
def no_grace(settings):
    settings.WATCHDOG_FAILOVER_GRACE_SECONDS = 0


@pytest.fixture
def source(registered_agent):
    return registered_agent[0]


# --- failover --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_hands_the_task_to_the_idle_worker_and_takes_it_from_the_failed_one(source, no_grace):
    set_steps(step("failover", verify=30), step("escalate"))
    draining = worker("worker-02")
    queue_command(draining, CommandKind.DRAIN, reason="rollout", issued_by="user:olga")
    worker("worker-03", state="running")  # free, but idle ones come first
    worker("worker-04")
    transition(worker("worker-05"), AgentState.QUARANTINED, reason="test", actor="test")
    transition(worker("worker-06"), AgentState.DEGRADED, reason="test", actor="test")
    worker("worker-07", state="running", task="t-7")
    register_agent("monitor-01", "monitor")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        assert [a.pk for a in failover_candidates(source, timezone.now())] == [
            "worker-04",
            "worker-03",
        ]

        action = fail_with_task(source)

        assert action.status == ActionStatus.VERIFYING
        command = take_task_commands().get()
        assert command.agent_id == "worker-04"
        assert command.params == {"task_id": "t-1", "progress": 0.4, "from_agent": "worker-01"}
        assert command.serves == f"remediation:{action.pk}"
        assert command.expires_at == timezone.now() + timedelta(seconds=30)
        assert action.command == command
        # The task stays with its agent until the target takes the command.
        assert holder_of("worker-01") == "t-1"
        assert action.history[-1]["failover"] == {
            "source": "worker-01",
            "target": "worker-04",
            "task": "t-1",
            "progress": 0.4,
        }
        handed = events("watchdog.task.failed_over").get()
        assert handed.payload["target_agent_id"] == "worker-04"
        assert handed.payload["task_id"] == "t-1"

        taken = record_heartbeat(Agent.objects.get(pk="worker-04"), state="idle")
        assert [c.kind for c in taken.commands] == ["take_task"]
        assert holder_of("worker-01") == ""  # never owned by two agents
        record_heartbeat(
            taken.agent, state="running", task_id="t-1", progress=0.4, acks=[command.pk]
        )
        clock.shift(30)
        services.advance_due()

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert action.outcome == "task t-1 running on worker-04; worker-01 is failed"


@pytest.mark.django_db(transaction=True)
def test_with_no_free_worker_it_hands_nothing_over_and_the_next_step_acts(source, no_grace):
    set_steps(step("failover"), step("restart_worker", verify=60))
    worker("worker-02", state="running", task="t-2")
    transition(worker("worker-03"), AgentState.QUARANTINED, reason="test", actor="test")
    transition(worker("worker-04"), AgentState.DEGRADED, reason="test", actor="test")
    register_agent("monitor-01", "monitor")
    record_heartbeat(Agent.objects.get(pk="monitor-01"), state="idle")

    action = fail_with_task(source)

    assert not take_task_commands().exists()
    assert holder_of("worker-01") == "t-1"
    assert action.history[0]["detail"] == (
        "nothing done: no healthy worker is free to take task t-1 "
        "(idle, or running without a task): nothing handed over"
    )
    assert not action.history[0].get("acted")
    assert (action.status, action.step) == (ActionStatus.VERIFYING, "restart_worker")
    assert action.command.kind == CommandKind.RESTART
    assert not events("watchdog.task.failed_over").exists()


@pytest.mark.django_db(transaction=True)
def test_a_failover_with_nothing_to_do_as_the_last_step_escalates_saying_why(source, no_grace):
    set_steps(step("failover"))

    action = fail_with_task(source)

    assert action.status == ActionStatus.ESCALATED
    assert action.outcome.startswith("step 1 did nothing: no healthy worker is free")
    assert events("watchdog.escalated").get().payload["reason"] == action.outcome
    assert not AgentCommand.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_agent_without_a_task_has_nothing_to_hand_over(source, no_grace):
    set_steps(step("failover"), step("restart_worker", verify=60))
    worker("worker-02")
    record_heartbeat(source, state="running")

    record_heartbeat(source, state="failed")

    action = RemediationAction.objects.get()
    assert action.history[0]["detail"] == (
        "nothing done: worker-01 has no current task: nothing to hand over"
    )
    assert not take_task_commands().exists()
    assert action.command.kind == CommandKind.RESTART


@pytest.mark.django_db(transaction=True)
def test_it_waits_out_the_partition_grace_counted_from_the_last_heartbeat(source, settings):
    settings.WATCHDOG_FAILOVER_GRACE_SECONDS = 60
    set_steps(step("failover"), step("escalate"))
    spare = worker("worker-02")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        last_heard = timezone.now()
        record_heartbeat(source, state="running", task_id="t-1", progress=0.4)
        clock.shift(18)
        record_heartbeat(spare, state="idle")
        check_heartbeats()  # three missed heartbeats: failed, unreachable

        action = RemediationAction.objects.get()
        assert action.status == ActionStatus.PLANNED
        assert action.next_step_at == last_heard + timedelta(seconds=60)
        assert action.outcome.startswith("partition_grace: the step waits 42s")
        deferred = events("watchdog.action.deferred").get()
        assert (deferred.payload["kind"], deferred.payload["reason"]) == (
            "failover",
            "partition_grace",
        )

        clock.shift(41)
        record_heartbeat(spare, state="idle")
        services.advance_due()
        assert not take_task_commands().exists()
        assert holder_of("worker-01") == "t-1"

        clock.shift(1)
        record_heartbeat(spare, state="idle")
        services.advance_due()
        assert take_task_commands().get().agent_id == "worker-02"
        record_heartbeat(spare, state="idle")  # takes it

    assert holder_of("worker-01") == ""
    assert events("watchdog.action.deferred").count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_agent_back_within_the_grace_keeps_its_task(source, settings):
    settings.WATCHDOG_FAILOVER_GRACE_SECONDS = 60
    set_steps(step("failover"), step("escalate"))
    worker("worker-02")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        action = fail_with_task(source)
        clock.shift(20)
        record_heartbeat(source, state="running", task_id="t-1", progress=0.5)
        clock.shift(60)
        services.advance_due()

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert not take_task_commands().exists()
    assert holder_of("worker-01") == "t-1"


@pytest.mark.parametrize("kind", ["failover", "request_replacement"])
@pytest.mark.django_db(transaction=True)
def test_a_storm_paused_role_holds_failover_and_replacements(source, no_grace, kind):
    set_steps(step(kind), step("escalate"))
    worker("worker-02")
    worker("worker-03")
    StormState.objects.create(role="worker", paused=True, paused_at=timezone.now())

    action = fail_with_task(source)

    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.STORM_GUARD)
    assert not AgentCommand.objects.exists()
    assert holder_of("worker-01") == "t-1"
    assert not events("watchdog.task.failed_over").exists()
    assert not events("watchdog.replacement.requested").exists()
    assert not events("watchdog.escalated").exists()  # the storm's one alert covers it


@pytest.mark.django_db(transaction=True)
def test_the_handover_expires_with_its_step_and_the_action_moves_on(source, no_grace):
    set_steps(step("failover", verify=30), step("escalate"))
    spare = worker("worker-02")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        action = fail_with_task(source)
        clock.shift(31)
        late = record_heartbeat(spare, state="idle")  # too late for the command
        services.advance_due()

    assert late.commands == []
    assert take_task_commands().get().status == CommandStatus.EXPIRED
    assert holder_of("worker-01") == "t-1"  # not left with nobody
    action.refresh_from_db()
    assert action.status == ActionStatus.ESCALATED
    assert [entry["detail"] for entry in action.history][-2] == "not recovered"


@pytest.mark.django_db(transaction=True)
def test_a_handover_whose_agent_is_back_is_withdrawn_as_it_would_leave(source, no_grace):
    set_steps(step("failover", verify=30), step("escalate"))
    spare = worker("worker-02")
    action = fail_with_task(source)
    # Back, with its task, in a way that did not (yet) close the action.
    Agent.objects.filter(pk=source.pk).update(state=AgentState.RUNNING)

    taken = record_heartbeat(spare, state="idle")

    assert taken.commands == []
    assert take_task_commands().get().status == CommandStatus.CANCELLED
    assert holder_of("worker-01") == "t-1"
    action.refresh_from_db()
    assert action.status == ActionStatus.VERIFYING


@pytest.mark.django_db(transaction=True)
def test_a_handover_not_yet_delivered_is_cancelled_when_the_agent_recovers(source, no_grace):
    set_steps(step("failover", verify=30), step("escalate"))
    spare = worker("worker-02")

    action = fail_with_task(source)
    record_heartbeat(source, state="running", task_id="t-1", progress=0.5)

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert take_task_commands().get().status == CommandStatus.CANCELLED
    assert record_heartbeat(spare, state="idle").commands == []


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_plans_both_steps_and_acts_on_nothing(source, no_grace):
    set_steps(step("failover"), step("request_replacement"), dry_run=True)
    worker("worker-02")

    action = fail_with_task(source)

    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.DRY_RUN)
    assert action.outcome == (
        "dry_run: would hand task t-1 of worker-01 to worker-02 (idle worker); "
        "then request a new worker to replace worker-01"
    )
    assert not AgentCommand.objects.exists()
    assert holder_of("worker-01") == "t-1"
    assert not events("watchdog.task.failed_over").exists()
    assert not events("watchdog.replacement.requested").exists()


@pytest.mark.django_db(transaction=True)
def test_the_kill_switch_holds_a_failover_waiting_out_its_grace(source, settings):
    settings.WATCHDOG_FAILOVER_GRACE_SECONDS = 60
    set_steps(step("failover"), step("escalate"))
    worker("worker-02")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        action = fail_with_task(source)
        guards.set_kill_switch(True, by="user:alice", reason="hands off")
        clock.shift(60)
        services.advance_due()

    action.refresh_from_db()
    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.DRY_RUN)
    assert not AgentCommand.objects.exists()
    assert holder_of("worker-01") == "t-1"


@pytest.mark.django_db
def test_explain_shows_what_failover_and_replacement_would_do(api, source, make_operator, no_grace):
    set_steps(step("failover", verify=30), step("request_replacement", verify=120))
    worker("worker-02")
    record_heartbeat(source, state="failed", task_id="t-1", progress=0.4)
    _, token = make_operator("viewer")

    body = api.get(EXPLAIN, {"agent": source.pk}, **bearer(token)).json()

    assert [(s["kind"], s["plan"], s["then"]) for s in body["steps"]] == [
        (
            "failover",
            "hand task t-1 of worker-01 to worker-02 (idle worker)",
            "if neither healthy nor its task running on the agent that took it within 30s, step 2",
        ),
        (
            "request_replacement",
            "request a new worker to replace worker-01",
            "if neither healthy nor replaced by a new healthy agent of its role within 120s, "
            "escalate to a person",
        ),
    ]
    assert not AgentCommand.objects.exists()


# --- request_replacement ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_replacement_is_verified_by_a_new_worker_registered_after_the_request(
    source, api, make_operator
):
    set_steps(step("request_replacement", verify=60), step("request_replacement", verify=60))
    worker("worker-02")  # healthy, but there before the request: no replacement
    _, token = make_operator("viewer")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        action = fail_with_task(source)
        requested = events("watchdog.replacement.requested").get()
        assert requested.payload["role"] == "worker"
        assert requested.payload["via"] == "local"
        shown = api.get(f"/api/v1/remediation-actions/{action.pk}", **bearer(token)).json()
        assert shown["status"] == "verifying"
        assert shown["history"][-1]["replacement"]["role"] == "worker"
        assert shown["history"][-1]["replacement"]["replaces"] == "worker-01"

        clock.shift(60)
        services.advance_due()
        action.refresh_from_db()
        assert (action.status, action.step_index) == (ActionStatus.VERIFYING, 1)
        assert events("watchdog.replacement.requested").count() == 2

        clock.shift(10)
        worker("worker-09")
        clock.shift(50)
        services.advance_due()

    action.refresh_from_db()
    assert action.status == ActionStatus.SUCCEEDED
    assert action.outcome == "replaced by worker-09; worker-01 is failed"


@pytest.mark.django_db(transaction=True)
def test_a_replacement_request_spends_the_fleet_budget(source, settings):
    settings.WATCHDOG_BUDGET_PER_MINUTE = 1
    set_steps(step("request_replacement"))
    assert guards.spend(guards.FLEET, 1, timezone.now())

    action = fail_with_task(source)

    assert (action.status, action.skip_reason) == (ActionStatus.SKIPPED, SkipReason.BUDGET)
    assert not events("watchdog.replacement.requested").exists()


# --- policies --------------------------------------------------------------------------


@pytest.mark.django_db
def test_policy_files_carry_the_new_steps(seeded):
    set_steps(step("restart_worker", 60), step("failover", 30), step("request_replacement", 300))
    text = policy_files.dump()
    RemediationPolicy.objects.all().delete()

    policy_files.load(text)

    assert policy_files.dump() == text
    assert [s["kind"] for s in RemediationPolicy.objects.get(name=RESTART_POLICY).steps] == [
        "restart_worker",
        "failover",
        "request_replacement",
    ]


# --- the http registry -----------------------------------------------------------------


@pytest.fixture
def registry(settings):
    with HttpReceiver() as receiver:
        settings.WATCHDOG_ADAPTER = "http"
        settings.REGISTRY_URL = receiver.url
        settings.REGISTRY_TOKEN = TOKEN
        settings.REGISTRY_TIMEOUT_SECONDS = 0.2
        settings.REGISTRY_RETRIES = 1
        settings.REGISTRY_BACKOFF_SECONDS = 0
        settings.WATCHDOG_FAILOVER_GRACE_SECONDS = 0
        yield receiver


def failed_on_registry(agent):
    record_heartbeat(agent, state="running", task_id="t-1", progress=0.4)
    transition(agent, AgentState.FAILED, reason="test", actor="test")
    return services.open_remediation(Trigger.AGENT_FAILED, agent.pk)


@pytest.mark.django_db
def test_it_asks_the_registry_to_hand_the_task_over(registry, source):
    set_steps(step("failover"), step("escalate"))
    worker("worker-02")
    registry.answers = [Answer(200, b'{"command_id": "c-9"}')]

    action = failed_on_registry(source)

    [sent] = registry.requests
    assert (sent.method, sent.path) == ("POST", "/agents/worker-02/take-task")
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Idempotency-Key"]
    assert sent.json()["serves"] == action.serves
    assert sent.json()["params"] == {"task_id": "t-1", "progress": 0.4, "from_agent": "worker-01"}
    assert action.status == ActionStatus.VERIFYING
    assert action.command.status == CommandStatus.DELIVERED
    assert action.command.params["registry_command_id"] == "c-9"
    assert holder_of("worker-01") == ""


@pytest.mark.django_db
def test_a_handover_the_registry_refuses_leaves_the_task_where_it_was(registry, source):
    set_steps(step("failover"), step("escalate"))
    worker("worker-02")
    registry.answers = [Answer(409, b'{"detail": "worker-02 is busy"}')]

    action = failed_on_registry(source)

    assert action.status == ActionStatus.FAILED
    assert "HTTP 409" in action.outcome
    assert holder_of("worker-01") == "t-1"
    assert not AgentCommand.objects.exists()
    assert TOKEN not in action.outcome


@pytest.mark.django_db
def test_it_asks_the_registry_for_a_replacement(registry, source):
    set_steps(step("request_replacement", verify=120))
    registry.answers = [Answer(503), Answer(202, b'{"request_id": "r-1"}')]

    action = failed_on_registry(source)

    first, retried = registry.requests
    assert (retried.method, retried.path) == ("POST", "/agents/worker-01/replacement")
    assert retried.json()["role"] == "worker"
    assert first.headers["Idempotency-Key"] == retried.headers["Idempotency-Key"]
    assert action.status == ActionStatus.VERIFYING
    assert action.history[-1]["replacement"]["registry_request_id"] == "r-1"
    assert events("watchdog.replacement.requested").get().payload["via"] == "http"


# --- two failovers at once -------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_failovers_at_once_never_promise_one_idle_worker_two_tasks(
    seeded, monkeypatch, settings
):
    settings.WATCHDOG_FAILOVER_GRACE_SECONDS = 60
    # The rate limits' rows and the storm guard's row lock serialize acting steps
    # too; set aside, so the claim of the target alone keeps the promise.
    settings.WATCHDOG_BUDGET_PER_MINUTE = settings.WATCHDOG_POLICY_PER_MINUTE = 0
    monkeypatch.setattr(guards.storm, "refusal", lambda role, now: None)
    set_steps(step("failover"), step("escalate"))
    first, second = worker("worker-01"), worker("worker-02")
    worker("worker-09")  # the one free worker
    claimed = threading.Barrier(2, timeout=5)
    real = failover_step.failover_target

    def claim_then_wait(source, now, *, claim=False):
        target = real(source, now, claim=claim)
        if claim:
            # Each worker holds its claim until the other made its own.
            with contextlib.suppress(threading.BrokenBarrierError):
                claimed.wait()
        return target

    monkeypatch.setattr(failover_step, "failover_target", claim_then_wait)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        fail_with_task(first, task="t-1")
        fail_with_task(second, task="t-2")
        clock.shift(60)
        start = threading.Barrier(2)
        errors = []

        def periodic_job():
            try:
                start.wait(10)
                services.advance_due(limit=1)
            except Exception as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=periodic_job) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert errors == []
    assert take_task_commands().count() == 1  # one promise, not one per failover
    promise = take_task_commands().get()
    assert promise.agent_id == "worker-09"
    actions = {a.agent_id: a for a in RemediationAction.objects.all()}
    handed = actions[promise.params["from_agent"]]
    other = next(a for a in actions.values() if a is not handed)
    assert handed.status == ActionStatus.VERIFYING
    assert other.status == ActionStatus.ESCALATED
    assert other.history[0]["detail"].startswith("nothing done: no healthy worker is free")
    tasks = {"worker-01": "t-1", "worker-02": "t-2"}
    assert holder_of(other.agent_id) == tasks[other.agent_id]
    taken = record_heartbeat(Agent.objects.get(pk="worker-09"), state="idle")
    assert [c.pk for c in taken.commands] == [promise.pk]
    assert holder_of(handed.agent_id) == ""
    assert holder_of(other.agent_id) == tasks[other.agent_id]
