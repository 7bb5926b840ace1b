"""The watchdog's verbs: open a remediation, advance it step by step, close it.

``open_remediation`` is the orchestrator's front door: it finds the policy,
records one action per (policy, agent, alert or trigger, episode) and lets its
first step act if nothing holds it back. ``advance_due`` (the periodic job)
claims the actions whose next step is due with ``SELECT ... FOR UPDATE SKIP
LOCKED`` and moves each along: act, wait and verify, next step, escalate.
``verify_recovery`` closes the actions of an agent that is healthy again.

Nothing is given up silently: every skipped action is an audited row, a
``watchdog.action.skipped`` event and a warning, and when it leaves an agent
unhealed, a ``watchdog.escalated`` that alerting turns into a firing alert.
"""

import math
from datetime import timedelta

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from opentelemetry import trace

from monitoring.models import (
    HEALTHY_STATES,
    UNHEALTHY_STATES,
    Agent,
    AgentState,
)
from omoi_console.foundation.events.tracing import (
    continued_trace,
    current_span_context,
    current_trace_ids,
)
from watchdog import approval, batch, chains, guards, storm
from watchdog.adapters import AdapterError, get_adapter
from watchdog.batch import publish
from watchdog.models import (
    OPEN_ACTION_STATUSES,
    ActionStatus,
    RemediationAction,
    RemediationPolicy,
    RestartBackoff,
    SkipReason,
    Trigger,
)
from watchdog.policies import matching_policy
from watchdog.prometheus import count_action
from watchdog.steps import StepContext, get_step

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)

ACTOR = "watchdog"
HOURLY_CAP_WINDOW = timedelta(hours=1)
# A stuck agent (heartbeating, no progress) is treated like a failed one.
ACTIONABLE_STATES = frozenset({AgentState.FAILED, AgentState.STUCK})
# An alert may ask for action on any agent still in service.
ALERT_ACTIONABLE_STATES = frozenset(
    set(AgentState.values) - {AgentState.TERMINATED, AgentState.QUARANTINED}
)
# Restart backoff, as Kubernetes: 10 s doubling to 5 min, reset after 10 min clean.
BACKOFF_BASE_SECONDS = 10
BACKOFF_CAP_SECONDS = 300
BACKOFF_RESET = timedelta(minutes=10)
# How many due actions one run of the periodic job takes.
CLAIM_BATCH = 200
# Which skips tell a person about their agent, beyond "it is left unhealthy": never
# "another action has it", nor one by one in a storm (its one alert says it all);
# always a capacity floor, which keeps even a healthy agent from its remediation.
ESCALATE_NEVER = frozenset({SkipReason.BUSY, SkipReason.STORM_GUARD})
ESCALATE_ALWAYS = frozenset({SkipReason.CAPACITY_FLOOR})


def serves(action_id: int) -> str:
    return f"remediation:{action_id}"


# --- opening ---------------------------------------------------------------------------


@tracer.start_as_current_span("watchdog.remediate")
def open_remediation(
    trigger: str, agent_id: str, *, event_id=None, alert: dict | None = None
) -> RemediationAction | None:
    """Open (or find) the action for this failure and let its first step act if due.

    Idempotent per (policy, agent, alert fingerprint or trigger, episode): an
    episode is the agent's current unhealthy stretch (or the alert), so every
    copy of every event about one failure lands on one row. Returns the action,
    or None when the watchdog is off or no policy matches.
    """
    trace.get_current_span().set_attributes({"agent.id": agent_id, "watchdog.trigger": trigger})
    agent = batch.agent(agent_id)
    policy = matching_policy(trigger, agent, alert) if agent else None
    if policy is None:
        return None
    if settings.WATCHDOG_MODE == "off":
        log.warning("watchdog.off", agent_id=agent_id, trigger=trigger, policy=policy.name)
        return None
    fingerprint = (alert or {}).get("fingerprint", "")
    episode = str(alert["alert_id"]) if alert else episode_of(agent)
    key = f"{policy.pk}:{agent.pk}:{fingerprint or trigger}:{episode}"
    with transaction.atomic():
        existing = batch.action_by_key(key)
        if existing is not None:
            return existing
        now = timezone.now()
        trace_id, span_id = current_trace_ids()
        action = RemediationAction(
            policy=policy,
            agent=agent,
            trigger=trigger,
            steps=list(policy.steps),
            step=policy.steps[0]["kind"],
            status=ActionStatus.PLANNED,
            idempotency_key=key,
            alert_fingerprint=fingerprint,
            episode=episode,
            trigger_event_id=event_id,
            reason=reason_for(trigger, policy, alert),
            actor=ACTOR,
            before_state=agent.state,
            started_at=now,
            next_step_at=now,
            trace_id=trace_id,
            span_id=span_id,
            context=monitoring_context(agent, alert),
        )
        try:
            with transaction.atomic():
                action.save(force_insert=True)
        except IntegrityError:
            # A concurrent copy of the same event got there first.
            return RemediationAction.objects.get(idempotency_key=key)
        batch.opened(action)
        refusal = _refusal(action, agent, trigger)
        if refusal:
            reason, detail = refusal
            _skip(action, agent, reason, detail, now)
            return action
        switch = guards.kill_switch()
        if switch is not None:
            _dry_run(action, agent, now, why=guards.switch_detail(switch))
            return action
        if settings.WATCHDOG_MODE == "dry-run" or policy.dry_run:
            _dry_run(action, agent, now)
            return action
        _advance(action, now, agent)
    return action


def episode_of(agent: Agent) -> str:
    """The agent's current unhealthy stretch: one failure, however many events tell of it."""
    return batch.episode_of_agent(agent)


def reason_for(trigger: str, policy: RemediationPolicy, alert: dict | None) -> str:
    if alert:
        return f"alert {alert.get('rule')} ({alert.get('severity')}) matched policy {policy.name}"
    return f"{trigger} matched policy {policy.name}"


def monitoring_context(agent: Agent, alert: dict | None = None) -> dict:
    """What monitoring says about the agent now: a few cheap reads, a small JSON."""
    context = {
        "state": agent.state,
        "last_heartbeat_at": _iso(agent.last_heartbeat_at),
        "missed_heartbeats": agent.missed_heartbeats,
        "unhealthy_since": _iso(agent.unhealthy_since),
        "current_task": agent.current_task,
        "task_progress": agent.task_progress,
    }
    health, anomaly = batch.monitoring_reads(agent.pk)
    if health:
        context["health"] = health
    if anomaly:
        context["anomaly"] = {**anomaly, "started_at": _iso(anomaly["started_at"])}
    if alert:
        context["alert"] = {k: alert.get(k) for k in ("alert_id", "rule", "severity", "labels")}
    return context


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def _refusal(action, agent: Agent, trigger: str) -> tuple[str, str] | None:
    actionable = ALERT_ACTIONABLE_STATES if trigger == Trigger.ALERT else ACTIONABLE_STATES
    if agent.state not in actionable:
        return SkipReason.NOT_ACTIONABLE, f"agent is {agent.state}"
    busy = batch.other_open_action(action)
    if busy is not None:
        return SkipReason.BUSY, f"action {busy} is already remediating the agent"
    return None


# --- advancing -------------------------------------------------------------------------


def advance_due(now=None, limit: int = CLAIM_BATCH) -> list[RemediationAction]:
    """The periodic job: move along every open action whose next step is due.

    Claimed with ``SELECT ... FOR UPDATE SKIP LOCKED``: a second worker running
    at the same moment takes other actions (or none), never the same one.
    Everything it needs is in the database, so pending steps survive a restart.
    """
    now = now or timezone.now()
    # A paused role resumes when its agents are back, even if no action asks.
    storm.resume_recovered(now)
    due = RemediationAction.objects.filter(
        status__in=OPEN_ACTION_STATUSES, next_step_at__lte=now
    ).order_by("next_step_at")
    if not due.values_list("pk", flat=True)[:1]:
        return []
    with transaction.atomic():
        claimed = list(
            due.select_for_update(skip_locked=True, of=("self",)).select_related("policy")[:limit]
        )
        for action in claimed:
            with action_trace(action):
                _advance(action, now)
    return claimed


def action_trace(action: RemediationAction):
    """A later step acts in the trace of the failure its action answers, linked to the job."""
    return continued_trace(
        "watchdog.advance",
        action.trace_id,
        action.span_id,
        links=[current_span_context()],
        action_id=action.pk,
        agent_id=action.agent_id,
    )


# Kept for callers of the old name.
expire_unverified = advance_due


def _advance(action: RemediationAction, now, agent: Agent | None = None) -> None:
    """Act, verify, move on: as far as the clock allows. The caller holds the row.

    ``agent``: the action's agent as the caller just read it, else read here.
    """
    agent = agent if agent is not None else Agent.objects.get(pk=action.agent_id)
    while action.status in OPEN_ACTION_STATUSES and action.next_step_at <= now:
        if agent.state == AgentState.TERMINATED:
            _finish(action, agent, ActionStatus.FAILED, "agent terminated", now)
            return
        if action.status in (ActionStatus.RUNNING, ActionStatus.VERIFYING):
            step = get_step(action.step)
            if step.verify(agent, action):
                _succeed(action, agent, now, step.verified(agent, action))
                return
            _note(action, now, "not recovered")
            if action.status == ActionStatus.VERIFYING:
                log.warning(
                    "watchdog.verification_failed",
                    action_id=action.pk,
                    agent_id=agent.pk,
                    step=action.step,
                )
            spec = action.steps[action.step_index]
            waited = max(spec.get("after", 0), spec.get("verify", 0))
            if not _next_step(
                action, agent, f"agent not healthy within {waited}s of the last step", now
            ):
                return
        if action.trigger == Trigger.AGENT_FAILED and agent.state in HEALTHY_STATES:
            # Back on its own while the step waited (its recovery event may be on its way).
            _succeed(action, agent, now)
            return
        if action.status == ActionStatus.AWAITING_APPROVAL:
            # Due means its approval expired undecided (next_step_at is the expiry).
            approval.expire(action, agent, now)
            return
        if not _act(action, agent, now):
            return
        if action.status in OPEN_ACTION_STATUSES and action.next_step_at <= now:
            # The next step is due at once: it acts on the agent as it is now.
            agent.refresh_from_db()
    action.save()


def _act(action: RemediationAction, agent: Agent, now) -> bool:
    """Let the current step act, unless a gate defers or refuses it; False to stop."""
    spec = action.steps[action.step_index]
    step = get_step(spec["kind"])
    if step.is_restart and restarts_in_last_hour(agent, now) >= action.policy.max_per_hour:
        detail = f"hourly cap of {action.policy.max_per_hour} restarts reached"
        if action.step_index == 0 and not action.history:
            _skip(action, agent, SkipReason.HOURLY_CAP, detail, now)
        else:
            _escalate(action, agent, detail, now)
        return False
    ctx = StepContext(action=action, agent=agent, adapter=get_adapter())
    idle = step.nothing_to_do(ctx, now)
    if idle:
        return _pass(action, agent, idle, now)
    gate, why = step_gate(action, agent, step, now)
    if gate is not None and gate > now:
        _defer(action, agent, gate, why, now)
        return False
    if step.acts_on_agent:
        # Turned on while the action waited: it acts on nothing from now on.
        switch = guards.kill_switch()
        if switch is not None:
            _skip(action, agent, SkipReason.DRY_RUN, guards.switch_detail(switch), now)
            return False
    if approval.needs_approval(action, spec):
        # Ask only for a step the guards would let act now; they are asked again
        # (and the rate limits spent) when it is approved.
        refusal = guards.refusal_of(action, agent, step, now, spend_budget=False)
        if refusal:
            _skip(action, agent, *refusal, now)
        else:
            approval.request(action, agent, spec, now)
        return False
    refusal = guards.refusal_of(action, agent, step, now)
    if refusal:
        _skip(action, agent, *refusal, now)
        return False
    verify_seconds = spec.get("verify", 0)
    wait = max(spec.get("after", 0), verify_seconds)
    ctx.expires_at = now + timedelta(seconds=max(wait, 1))
    first = not any(entry.get("acted") for entry in action.history)
    try:
        outcome = step.act(ctx)
    except AdapterError as exc:
        _registry_failed(action, agent, str(exc), now)
        return False
    if not outcome.acted:
        return _pass(action, agent, outcome.detail, now)
    _note(action, now, outcome.detail)
    action.history[-1].update(outcome.record, acted=True)
    if outcome.command is not None:
        action.command = outcome.command
    if step.is_restart:
        batch.restart_queued(agent.pk)
    _mark_acted(agent, action, step, now)
    _publish_act(action, agent, step, outcome.detail, first)
    if outcome.final:
        _escalate(action, agent, f"escalated by step {action.step_index + 1} of the policy", now)
        return False
    action.status = ActionStatus.VERIFYING if verify_seconds else ActionStatus.RUNNING
    action.verify_by = now + timedelta(seconds=verify_seconds) if verify_seconds else None
    action.next_step_at = now + timedelta(seconds=wait)
    return True


def _publish_act(action, agent: Agent, step, detail: str, first: bool) -> None:
    payload = {
        "action_id": action.pk,
        "agent_id": agent.pk,
        "kind": step.name,
        "policy": action.policy.name,
    }
    if first:
        publish(
            "watchdog.action.started",
            {**payload, "dry_run": False},
            key=f"action.started:{action.pk}",
        )
    else:
        publish(
            "watchdog.action.step",
            {**payload, "step_index": action.step_index, "detail": detail},
            key=f"action.step:{action.pk}:{action.step_index}",
        )
    log.warning(
        "watchdog.step_acted",
        action_id=action.pk,
        agent_id=agent.pk,
        step=step.name,
        detail=detail,
    )


def _pass(action: RemediationAction, agent: Agent, detail: str, now) -> bool:
    """The step has nothing to do: say so in the history and let the next one act now."""
    _note(action, now, f"nothing done: {detail}")
    log.warning(
        "watchdog.step_passed",
        action_id=action.pk,
        agent_id=agent.pk,
        step=action.step,
        detail=detail,
    )
    return _next_step(action, agent, f"step {action.step_index + 1} did nothing: {detail}", now)


def _next_step(action: RemediationAction, agent: Agent, why: str, now) -> bool:
    """Move to the next step, due now; escalate when none is left. False when it escalated."""
    action.step_index += 1
    if action.step_index >= len(action.steps):
        # A policy that keeps failing to heal is a loop: its breaker counts it.
        paused = guards.record_failure(action.policy, now)
        _escalate(action, agent, f"{why}{paused}", now)
        return False
    action.step = action.steps[action.step_index]["kind"]
    action.status = ActionStatus.PLANNED
    action.next_step_at, action.verify_by = now, None
    return True


def _note(action: RemediationAction, now, detail: str, **extra) -> None:
    action.history = [
        *action.history,
        {
            "step": action.step_index,
            "kind": action.step,
            "at": now.isoformat(),
            "detail": detail,
            **extra,
        },
    ]


# --- gates: cooldown, backoff, hourly cap ----------------------------------------------


def backoff_delay(streak: int) -> float:
    """Seconds before restart number ``streak + 1`` of a streak: 0, 10, 20, 40 ... 300."""
    if streak <= 0:
        return 0.0
    return float(min(BACKOFF_BASE_SECONDS * 2 ** min(streak - 1, 16), BACKOFF_CAP_SECONDS))


def current_streak(backoff: RestartBackoff | None, agent: Agent, now) -> int:
    """Restarts since the agent last ran cleanly for 10 min (then the streak resets)."""
    if backoff is None or backoff.last_restart_at is None:
        return 0
    failed_at = agent.unhealthy_since or now
    if failed_at - backoff.last_restart_at >= BACKOFF_RESET:
        return 0
    return backoff.streak


def restart_gate(action, agent: Agent, step, now):
    """When the step may act: (moment, "cooldown" or "backoff"), or (None, "") for now.

    The cooldown holds the first step of a new action back from the agent's
    last action's acts; between restarts the backoff holds, the cooldown its floor.
    """
    backoff = batch.backoff(agent.pk)
    if backoff is None:
        return None, ""
    gates = []
    last_other = _last_act_of_other_actions(action, backoff)
    if last_other is not None and (action.step_index == 0 or step.is_restart):
        gates.append((last_other + timedelta(seconds=action.policy.cooldown_seconds), "cooldown"))
    if step.is_restart and backoff.last_restart_at is not None:
        delay = backoff_delay(current_streak(backoff, agent, now))
        floor = max(delay, action.policy.cooldown_seconds) if delay else 0
        if floor:
            gates.append((backoff.last_restart_at + timedelta(seconds=floor), "backoff"))
    if not gates:
        return None, ""
    return max(gates, key=lambda gate: gate[0])


def step_gate(action, agent: Agent, step, now):
    """The latest of the restart gates and the step's own (a failover's partition grace)."""
    gates = [restart_gate(action, agent, step, now), step.not_before(agent, now) or (None, "")]
    timed = [gate for gate in gates if gate[0] is not None]
    if not timed:
        return None, ""
    return max(timed, key=lambda gate: gate[0])


def _last_act_of_other_actions(action, backoff: RestartBackoff):
    """When the watchdog last acted on the agent for another action."""
    if backoff.last_acted_at is not None and backoff.last_action_id != action.pk:
        return backoff.last_acted_at
    return None


def restarts_in_last_hour(agent: Agent, now) -> int:
    return batch.restarts_in_last_hour(agent.pk, now)


def _mark_acted(agent: Agent, action, step, now) -> None:
    backoff = None
    if batch.current() is not None and batch.backoff(agent.pk) is None:
        # The batch read no row: write it whole. A row a concurrent worker created
        # meanwhile makes the insert fail, and the locked path below counts on it.
        backoff = RestartBackoff(
            agent_id=agent.pk,
            streak=1 if step.is_restart else 0,
            last_restart_at=now if step.is_restart else None,
            last_acted_at=now,
            last_action_id=action.pk,
        )
        try:
            with transaction.atomic():
                backoff.save(force_insert=True)
        except IntegrityError:
            backoff = None
    if backoff is None:
        backoff, _ = RestartBackoff.objects.select_for_update().get_or_create(agent_id=agent.pk)
        if step.is_restart:
            backoff.streak = current_streak(backoff, agent, now) + 1
            backoff.last_restart_at = now
        backoff.last_acted_at = now
        backoff.last_action_id = action.pk
        backoff.save()
    batch.backoff_saved(backoff)


def _defer(action, agent, gate, why: str, now) -> None:
    first_time = action.next_step_at != gate
    action.next_step_at = gate
    action.save()
    if not first_time:
        return
    seconds = math.ceil((gate - now).total_seconds())
    detail = f"{why}: the step waits {seconds}s, until {gate.isoformat()}"
    action.outcome = detail[:300]
    action.save(update_fields=["outcome"])
    publish(
        "watchdog.action.deferred",
        {
            "action_id": action.pk,
            "agent_id": agent.pk,
            "kind": action.step,
            "policy": action.policy.name,
            "reason": why,
            "until": gate.isoformat(),
        },
        key=f"action.deferred:{action.pk}:{action.step_index}:{gate.isoformat()}",
    )
    log.warning(
        "watchdog.action_deferred",
        action_id=action.pk,
        agent_id=agent.pk,
        reason=why,
        until=gate.isoformat(),
    )


# --- closing ---------------------------------------------------------------------------


def _finish(action, agent, status: str, outcome: str, now) -> None:
    if action.approval_expires_at is not None:
        # It ends while its step waits for an operator: nothing is left to decide.
        approval.withdraw(action, agent, outcome, now)
    action.status = status
    count_action(action.step, status)
    action.after_state = agent.state
    action.finished_at = now
    action.next_step_at = None
    action.outcome = outcome[:300]
    action.save()
    batch.closed(action)
    # Nothing this action asked of the agent may still go out.
    get_adapter().cancel(serves(action.pk), reason=f"action {action.pk} {status}")


def _payload(action, agent) -> dict:
    return {"action_id": action.pk, "agent_id": agent.pk, "policy": action.policy.name}


def _succeed(action, agent, now, outcome: str = "agent healthy again") -> None:
    _finish(action, agent, ActionStatus.SUCCEEDED, outcome, now)
    guards.record_success(action.policy)
    publish(
        "watchdog.action.succeeded",
        {
            **_payload(action, agent),
            "kind": action.step,
            "seconds": (now - action.started_at).total_seconds(),
        },
        key=f"action.succeeded:{action.pk}",
    )
    log.info("watchdog.action_succeeded", action_id=action.pk, agent_id=agent.pk)


def _escalate(action, agent, reason: str, now) -> None:
    """Automatic remediation gives up on this agent: a person must take over."""
    _finish(action, agent, ActionStatus.ESCALATED, reason, now)
    publish(
        "watchdog.action.failed",
        {**_payload(action, agent), "kind": action.step, "reason": reason},
        key=f"action.failed:{action.pk}",
    )
    _publish_escalation(action, agent, reason)


def _publish_escalation(action, agent, reason: str) -> None:
    publish(
        "watchdog.escalated",
        {**_payload(action, agent), "role": agent.role, "reason": reason},
        key=f"escalated:{action.pk}",
    )
    log.error("watchdog.escalated", action_id=action.pk, agent_id=agent.pk, reason=reason)
    chains.start(action, timezone.now())


def _registry_failed(action, agent, error: str, now) -> None:
    """The registry refused the step or never answered: the action failed, a person takes over."""
    _note(action, now, f"registry: {error}")
    reason = f"the registry did not take step {action.step_index + 1}: {error}"
    _finish(action, agent, ActionStatus.FAILED, reason, now)
    publish(
        "watchdog.action.failed",
        {**_payload(action, agent), "kind": action.step, "reason": reason},
        key=f"action.failed:{action.pk}",
    )
    _publish_escalation(action, agent, reason)


def _skip(action, agent, reason: str, detail: str, now) -> None:
    """Refuse to act, audibly: the row, an event, a warning, and an escalation if unhealed."""
    action.skip_reason = reason
    _finish(action, agent, ActionStatus.SKIPPED, f"{reason}: {detail}", now)
    publish(
        "watchdog.action.skipped",
        {**_payload(action, agent), "kind": action.step, "reason": reason, "detail": detail},
        key=f"action.skipped:{action.pk}",
    )
    log.warning(
        "watchdog.action_skipped",
        action_id=action.pk,
        agent_id=agent.pk,
        reason=reason,
        detail=detail,
    )
    if reason in ESCALATE_ALWAYS or (
        agent.state in UNHEALTHY_STATES and reason not in ESCALATE_NEVER
    ):
        _publish_escalation(action, agent, f"remediation skipped ({reason}): {detail}")


def _dry_run(action, agent, now, why: str = "") -> None:
    """Decide and audit, act on nothing: say what each step would have done."""
    ctx = StepContext(action=action, agent=agent, adapter=None)
    plans = [get_step(spec["kind"]).plan(ctx) for spec in action.steps]
    action.dry_run = True
    publish(
        "watchdog.action.started",
        {**_payload(action, agent), "kind": action.step, "dry_run": True},
        key=f"action.started:{action.pk}",
    )
    would = "would " + "; then ".join(plans)
    _skip(action, agent, SkipReason.DRY_RUN, f"{why}: {would}" if why else would, now)


def verify_recovery(agent_id: str) -> list[RemediationAction]:
    """The agent is healthy again: every open action on it succeeded."""
    done = []
    with transaction.atomic():
        # of=self: the joined policy row is read, not claimed.
        waiting = RemediationAction.objects.select_for_update(of=("self",)).filter(
            agent_id=agent_id, status__in=OPEN_ACTION_STATUSES
        )
        actions = list(waiting.select_related("policy"))
        if not actions:
            return done
        agent = Agent.objects.get(pk=agent_id)
        now = timezone.now()
        for action in actions:
            _succeed(action, agent, now)
            done.append(action)
    return done


def history_window() -> timedelta:
    """How far back the watchdog reads past actions: cooldowns, backoff and the hourly cap."""
    longest = RemediationPolicy.objects.aggregate(longest=Max("cooldown_seconds"))["longest"]
    return max(HOURLY_CAP_WINDOW, BACKOFF_RESET, timedelta(seconds=longest or 0))
