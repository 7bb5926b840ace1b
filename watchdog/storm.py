"""The storm guard: when much of a role fails at once, stop restarting it.

A network partition or a bad deploy fails many agents together; restarting
them all at once does more harm than the failure. When at least
``OMOI_WATCHDOG_STORM_SHARE`` of a role's agents in service, and at least
``OMOI_WATCHDOG_STORM_MIN_AGENTS`` of them, failed within
``OMOI_WATCHDOG_STORM_WINDOW``, automatic restarts (and steps that take agents
out) of that role pause: ``watchdog.storm.started``, which alerting turns into
one critical alert. They resume when fewer than ``OMOI_WATCHDOG_STORM_RESUME_SHARE``
of the role are unhealthy (hysteresis: a fleet hovering at the threshold does not
flap): ``watchdog.storm.ended``, and the alert resolves.

The state is a row per role (``StormState``), evaluated under its row lock, so
workers agree and a restart of the console keeps it.
"""

from datetime import timedelta

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from monitoring.models import Agent, AgentState
from omoi_console.foundation.events import publish
from watchdog.models import SkipReason, StormState

log = structlog.get_logger(__name__)

# Out of service by a person's or the system's decision: not part of the role's fleet.
OUT_OF_FLEET = (AgentState.TERMINATED, AgentState.QUARANTINED)
# What a storm counts: agents that failed (or are being restarted for it). Not DEGRADED:
# a missed heartbeat or two across a busy fleet is a slow network, not a storm, and
# pausing restarts on it would leave the one agent that did fail unhealed.
FAILING_STATES = (AgentState.FAILED, AgentState.STUCK, AgentState.RESTARTING)


def refusal(role: str, now) -> tuple[str, str] | None:
    """Evaluate the role's storm state now; a refusal while its restarts are paused."""
    state = evaluate(role, now)
    if not state.paused:
        return None
    return (
        SkipReason.STORM_GUARD,
        f"{state.unhealthy} of {state.total} {role}s are unhealthy: "
        f"automatic restarts of {role}s are paused since {state.paused_at.isoformat()}",
    )


def evaluate(role: str, now=None) -> StormState:
    """Pause or resume the role's restarts from what its agents are now. Holds the row."""
    now = now or timezone.now()
    with transaction.atomic():
        state = _locked(role)
        fleet = Agent.objects.filter(role=role).exclude(state__in=OUT_OF_FLEET)
        total = fleet.count()
        unhealthy = fleet.filter(state__in=FAILING_STATES)
        if not state.paused:
            since = now - timedelta(seconds=settings.WATCHDOG_STORM_WINDOW_SECONDS)
            recent = unhealthy.filter(unhealthy_since__gte=since).count()
            if (
                recent
                and recent >= settings.WATCHDOG_STORM_MIN_AGENTS
                and recent >= settings.WATCHDOG_STORM_SHARE * total
            ):
                _pause(state, recent, total, now)
        else:
            down = unhealthy.count()
            if down < settings.WATCHDOG_STORM_RESUME_SHARE * total:
                _resume(state, down, total, now)
            else:
                state.unhealthy, state.total = down, total
                state.save(update_fields=["unhealthy", "total"])
    return state


def resume_recovered(now=None) -> list[StormState]:
    """Re-evaluate every paused role (cheap when none is): run by the periodic job."""
    roles = list(StormState.objects.filter(paused=True).values_list("role", flat=True))
    return [evaluate(role, now) for role in roles]


def paused_roles() -> list[dict]:
    return list(
        StormState.objects.filter(paused=True).values("role", "paused_at", "unhealthy", "total")
    )


def _locked(role: str) -> StormState:
    try:
        with transaction.atomic():
            StormState.objects.get_or_create(role=role)
    except IntegrityError:
        pass  # another worker created it first
    return StormState.objects.select_for_update().get(role=role)


def _pause(state: StormState, unhealthy: int, total: int, now) -> None:
    state.paused, state.paused_at = True, now
    state.unhealthy, state.total = unhealthy, total
    state.save()
    publish(
        "watchdog.storm.started",
        {
            "role": state.role,
            "unhealthy": unhealthy,
            "total": total,
            "window_seconds": settings.WATCHDOG_STORM_WINDOW_SECONDS,
        },
        key=f"storm.started:{state.role}:{now.isoformat()}",
    )
    log.error("watchdog.storm_started", role=state.role, unhealthy=unhealthy, total=total)


def _resume(state: StormState, unhealthy: int, total: int, now) -> None:
    paused_seconds = (now - state.paused_at).total_seconds() if state.paused_at else 0.0
    state.paused, state.resumed_at = False, now
    state.unhealthy, state.total = unhealthy, total
    state.save()
    publish(
        "watchdog.storm.ended",
        {
            "role": state.role,
            "unhealthy": unhealthy,
            "total": total,
            "paused_seconds": paused_seconds,
        },
        key=f"storm.ended:{state.role}:{now.isoformat()}",
    )
    log.warning("watchdog.storm_ended", role=state.role, unhealthy=unhealthy, total=total)
