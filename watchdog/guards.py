"""The watchdog's safety guards: what may refuse a step that is otherwise due.

``refusal_of`` is asked just before a step acts, after the cooldown and the
restart backoff let it through. Each guard answers (reason, detail) to refuse
or None; the orchestrator turns a refusal into an audited skipped action.

- the kill switch (``WatchdogSwitch``): fleet-wide dry run;
- the circuit breaker: a policy whose actions keep failing pauses;
- the storm guard (``watchdog.storm``): restarts of a role (and the steps that
  take agents out or move work and capacity around) pause while much of it
  failed at once;
- the capacity floor: never leave fewer healthy agents of a role than configured;
- rate limits: per policy and fleet-wide, acts per minute.

All state is in the database, taken under row locks, so several workers agree.
"""

from datetime import timedelta

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from monitoring.models import HEALTHY_STATES, Agent, AgentState
from omoi_console.foundation.events import publish
from watchdog import batch, storm
from watchdog.models import ActionBudget, PolicyBreaker, SkipReason, WatchdogSwitch

log = structlog.get_logger(__name__)

FLEET = "fleet"
# An agent in one of these still serves: taking it out lowers the role's capacity.
IN_SERVICE_STATES = HEALTHY_STATES | {AgentState.DEGRADED}


# --- kill switch -----------------------------------------------------------------------


def kill_switch() -> WatchdogSwitch | None:
    """The switch when it is on (the whole watchdog is a dry run), else None.

    Read once per batch of openings (``watchdog.batch``).
    """
    return batch.kill_switch()


def switch_detail(switch: WatchdogSwitch) -> str:
    by = f" by {switch.changed_by}" if switch.changed_by else ""
    return f"fleet-wide dry run (kill switch on{by}: {switch.reason})"


def set_kill_switch(dry_run: bool, *, by: str, reason: str) -> WatchdogSwitch:
    """Turn the fleet-wide dry run on or off, audited as ``watchdog.switch.changed``."""
    now = timezone.now()
    with transaction.atomic():
        switch, _ = WatchdogSwitch.objects.select_for_update().get_or_create(
            pk=WatchdogSwitch.SINGLETON
        )
        switch.dry_run = dry_run
        switch.reason = reason[:300]
        switch.changed_by = by[:150]
        switch.changed_at = now
        switch.save()
        publish(
            "watchdog.switch.changed",
            {"dry_run": dry_run, "by": switch.changed_by, "reason": switch.reason},
            key=f"switch.changed:{now.isoformat()}",
        )
    log.warning("watchdog.switch_changed", dry_run=dry_run, by=switch.changed_by)
    return switch


def watchdog_status() -> dict:
    """What the console shows about the watchdog: dry run (and why), paused roles."""
    switch = WatchdogSwitch.objects.filter(pk=WatchdogSwitch.SINGLETON).first()
    switched = switch is not None and switch.dry_run
    warnings = []
    if settings.WATCHDOG_MODE == "off":
        warnings.append("The watchdog is off (OMOI_WATCHDOG_MODE): nothing is remediated.")
    elif switched:
        warnings.append(
            f"Watchdog in dry run: it decides and records, and acts on nothing: "
            f"{switch_detail(switch)}."
        )
    elif settings.WATCHDOG_MODE == "dry-run":
        warnings.append(
            "Watchdog in dry run (OMOI_WATCHDOG_MODE): it decides and records, and acts on nothing."
        )
    paused = storm.paused_roles()
    for role in paused:
        warnings.append(
            f"Automatic restarts of {role['role']}s are paused: {role['unhealthy']} of "
            f"{role['total']} are unhealthy (storm guard)."
        )
    return {
        "mode": settings.WATCHDOG_MODE,
        "dry_run": switched or settings.WATCHDOG_MODE == "dry-run",
        "switched_by": switch.changed_by if switched else "",
        "switched_at": switch.changed_at.isoformat() if switched and switch.changed_at else None,
        "paused_roles": [role["role"] for role in paused],
        "warnings": warnings,
    }


# --- the gate --------------------------------------------------------------------------


def refusal_of(action, agent: Agent, step, now, *, spend_budget: bool = True):
    """Why this step may not act now, as (reason, detail), or None.

    Spends the rate limits when it may act. ``spend_budget=False`` asks without
    spending (a step about to wait for approval): it is asked again, spending,
    when the step acts.
    """
    if not step.acts_on_agent:
        return None
    checks = [breaker_refusal(action.policy, now)]
    if step.held_in_storm:
        # Once per role and batch: the first evaluation holds the role's row to the commit.
        checks.append(batch.remembered("storm", agent.role, lambda: storm.refusal(agent.role, now)))
    if step.removes_capacity:
        checks.append(floor_refusal(agent))
    for refusal in checks:
        if refusal:
            return refusal
    if not spend_budget:
        return None
    policy_limit = settings.WATCHDOG_POLICY_PER_MINUTE
    if not spend(f"policy:{action.policy_id}", policy_limit, now):
        return SkipReason.POLICY_RATE, f"policy {action.policy.name} acted {policy_limit} times"
    fleet_limit = settings.WATCHDOG_BUDGET_PER_MINUTE
    if not spend(FLEET, fleet_limit, now):
        return SkipReason.BUDGET, f"the fleet-wide budget of {fleet_limit} acts a minute is spent"
    return None


# --- rate limits -----------------------------------------------------------------------


def spend(scope: str, limit: int, now) -> bool:
    """Take one act from ``scope``'s budget for the current minute; False when spent.

    One conditional UPDATE: the row lock it takes serializes concurrent workers
    and PostgreSQL re-checks the condition on the row they committed, so
    together they never spend more than ``limit``. 0 means no limit.
    """
    if limit <= 0:
        return True
    minute = now.replace(second=0, microsecond=0)
    try:
        with transaction.atomic():
            ActionBudget.objects.get_or_create(scope=scope)
    except IntegrityError:
        pass  # another worker created it first
    taken = (
        ActionBudget.objects.filter(scope=scope)
        .filter(~Q(minute=minute) | Q(minute__isnull=True) | Q(spent__lt=limit))
        .update(
            spent=Case(When(minute=minute, then=F("spent") + 1), default=Value(1)),
            minute=minute,
        )
    )
    if not taken:
        log.warning("watchdog.budget_spent", scope=scope, limit=limit)
    return bool(taken)


# --- capacity floor --------------------------------------------------------------------


def floor_refusal(agent: Agent) -> tuple[str, str] | None:
    """Refuse to take an agent in service out when too few healthy ones of its role would remain.

    An agent already out of service (failed, stuck, restarting) takes nothing
    out when it is restarted or drained: only an agent that still serves counts.
    """
    floor = settings.WATCHDOG_MIN_HEALTHY_BY_ROLE.get(agent.role, 0)
    if floor <= 0 or agent.state not in IN_SERVICE_STATES:
        return None
    remaining = (
        Agent.objects.filter(role=agent.role, state__in=HEALTHY_STATES).exclude(pk=agent.pk).count()
    )
    if remaining >= floor:
        return None
    return (
        SkipReason.CAPACITY_FLOOR,
        f"only {remaining} healthy {agent.role}(s) would remain, the floor is {floor}",
    )


# --- circuit breaker -------------------------------------------------------------------


def breaker_refusal(policy, now) -> tuple[str, str] | None:
    open_until = batch.breaker_open_until(policy, now)
    if open_until is None:
        return None
    return (
        SkipReason.BREAKER_OPEN,
        f"policy {policy.name} paused until {open_until.isoformat()}: its actions kept failing",
    )


def record_failure(policy, now) -> str:
    """An action of the policy failed to heal its agent; open the breaker at the limit.

    Returns what to add to the escalation's reason when it opened, else "".
    """
    limit = settings.WATCHDOG_BREAKER_FAILURES
    breaker, _ = PolicyBreaker.objects.select_for_update().get_or_create(policy=policy)
    breaker.failures += 1
    opens = limit > 0 and breaker.failures >= limit
    if opens:
        breaker.opened_at = now
        breaker.open_until = now + timedelta(seconds=settings.WATCHDOG_BREAKER_OPEN_SECONDS)
    breaker.save()
    batch.forget("breakers", policy.pk)
    if not opens:
        return ""
    publish(
        "watchdog.breaker.opened",
        {
            "policy": policy.name,
            "failures": breaker.failures,
            "until": breaker.open_until.isoformat(),
        },
        key=f"breaker.opened:{policy.pk}:{now.isoformat()}",
    )
    log.error(
        "watchdog.breaker_opened",
        policy=policy.name,
        failures=breaker.failures,
        until=breaker.open_until.isoformat(),
    )
    return f"; policy {policy.name} paused until {breaker.open_until.isoformat()}"


def record_success(policy) -> None:
    """An action of the policy healed its agent: the failure streak starts over."""
    PolicyBreaker.objects.filter(policy=policy, failures__gt=0).update(failures=0)
