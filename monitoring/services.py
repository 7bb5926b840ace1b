"""Monitoring's verbs: register agents, record heartbeats, find the overdue, move states."""

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from monitoring.ingest.cache import ingest_cache, remember_served
from monitoring.ingest.invalidation import invalidate_on_commit
from monitoring.models import (
    HEALTHY_STATES,
    UNHEALTHY_STATES,
    Agent,
    AgentCommand,
    AgentState,
    AgentToken,
    AgentTransition,
    CommandKind,
    CommandStatus,
)
from omoi_console.foundation.events import publish
from omoi_console.foundation.events.tracing import new_trace

log = structlog.get_logger(__name__)

S = AgentState
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    # A delivered restart command moves any live agent to RESTARTING: a heartbeat
    # that hands one out must never fail on the agent's current state.
    S.SPAWNING: frozenset(
        {S.IDLE, S.RUNNING, S.DEGRADED, S.FAILED, S.RESTARTING, S.QUARANTINED, S.TERMINATED}
    ),
    S.IDLE: frozenset({S.RUNNING, S.DEGRADED, S.FAILED, S.RESTARTING, S.QUARANTINED, S.TERMINATED}),
    S.RUNNING: frozenset({S.IDLE, S.DEGRADED, S.FAILED, S.RESTARTING, S.QUARANTINED, S.TERMINATED}),
    S.DEGRADED: frozenset({S.IDLE, S.RUNNING, S.FAILED, S.RESTARTING, S.QUARANTINED, S.TERMINATED}),
    S.FAILED: frozenset({S.RESTARTING, S.IDLE, S.RUNNING, S.QUARANTINED, S.TERMINATED}),
    S.RESTARTING: frozenset({S.IDLE, S.RUNNING, S.FAILED, S.QUARANTINED, S.TERMINATED}),
    S.QUARANTINED: frozenset({S.IDLE, S.TERMINATED}),
    S.TERMINATED: frozenset(),
}
# States in which the agent is expected to keep heartbeating.
WATCHED_STATES = frozenset({S.SPAWNING, S.IDLE, S.RUNNING, S.DEGRADED, S.RESTARTING})


class InvalidTransition(Exception):
    pass


class AgentUnavailable(Exception):
    """The agent may not report any more (terminated)."""


@dataclass
class HeartbeatResult:
    agent: Agent
    commands: list[AgentCommand]


def register_agent(
    agent_id: str,
    role: str,
    *,
    labels: dict | None = None,
    heartbeat_interval: float | None = None,
    actor: str = "system",
) -> tuple[Agent, str]:
    """Create an agent and its first ingest token; return the token's plaintext once.

    Raises ValidationError for a malformed id or role, IntegrityError for a taken id.
    """
    now = timezone.now()
    generations = ingest_cache.generations(agent_id)
    with transaction.atomic():
        agent = Agent(
            id=agent_id,
            role=role,
            labels=labels or {},
            heartbeat_interval=heartbeat_interval,
            created_at=now,
            state_changed_at=now,
        )
        # Uniqueness is the primary key's job: a concurrent registration of the
        # same id then fails as IntegrityError, which callers answer with 409.
        agent.full_clean(validate_unique=False)
        agent.overdue_at = miss_deadline(agent, now, 1)
        agent.save(force_insert=True)
        AgentTransition.objects.create(
            agent=agent,
            from_state="",
            to_state=S.SPAWNING,
            reason="registered",
            actor=actor,
            at=now,
        )
        token, raw = AgentToken.issue(agent=agent, name="initial")
        # The agent's first heartbeat usually reaches the process that registered
        # it: let the lean path take it (a fleet starting at once is a storm).
        transaction.on_commit(
            functools.partial(remember_served, raw, token, agent, generations), robust=True
        )
    log.info("agent.registered", agent_id=agent.id, role=role)
    return agent, raw


def miss_deadline(agent: Agent, since: datetime, misses: int) -> datetime:
    """When the ``misses``-th heartbeat after ``since`` counts as missed."""
    return since + timedelta(
        seconds=misses * agent.interval_seconds + settings.HEARTBEAT_SKEW_SECONDS
    )


def failed_after_seconds(interval: float | None = None) -> float:
    """How long after the last heartbeat an agent is declared FAILED."""
    interval = interval or settings.HEARTBEAT_INTERVAL_SECONDS
    return settings.HEARTBEAT_FAILED_AFTER_MISSES * interval + settings.HEARTBEAT_SKEW_SECONDS


def transition(agent: Agent, to_state: str, *, reason: str, actor: str) -> AgentTransition:
    """Move ``agent`` to ``to_state``: the one place a state changes.

    Writes the transition row and publishes ``monitor.agent.state_changed``,
    plus ``monitor.agent.recovered`` when an unhealthy agent becomes healthy.
    The caller saves the agent's other fields; this saves state fields only.
    """
    from_state = agent.state
    if to_state not in ALLOWED_TRANSITIONS[from_state]:
        raise InvalidTransition(f"{agent.id}: {from_state} -> {to_state} is not allowed")
    now = timezone.now()
    recovered = from_state in UNHEALTHY_STATES and to_state in HEALTHY_STATES
    down_since = agent.unhealthy_since
    if to_state in HEALTHY_STATES:
        agent.unhealthy_since = None
    elif agent.unhealthy_since is None and to_state in UNHEALTHY_STATES:
        agent.unhealthy_since = agent.last_heartbeat_at or now
    if to_state not in WATCHED_STATES:
        agent.overdue_at = None
    agent.state = to_state
    agent.state_changed_at = now
    agent.save(update_fields=["state", "state_changed_at", "unhealthy_since", "overdue_at"])
    row = AgentTransition.objects.create(
        agent=agent, from_state=from_state, to_state=to_state, reason=reason, actor=actor, at=now
    )
    base = {"agent_id": agent.id, "role": agent.role}
    publish(
        "monitor.agent.state_changed",
        {**base, "from_state": from_state, "to_state": to_state, "reason": reason, "actor": actor},
        key=f"state_changed:{row.pk}",
    )
    if recovered:
        down = (now - down_since).total_seconds() if down_since else 0.0
        publish(
            "monitor.agent.recovered",
            {**base, "from_state": from_state, "to_state": to_state, "down_seconds": down},
            key=f"recovered:{row.pk}",
        )
    log.info("agent.transition", agent_id=agent.id, from_state=from_state, to_state=to_state)
    return row


def record_heartbeat(
    agent: Agent,
    *,
    state: str,
    task_id: str = "",
    progress: float | None = None,
    acks: list[int] | None = None,
    deliver: bool = True,
) -> HeartbeatResult:
    """Take a heartbeat: refresh deadlines, apply acknowledgements, hand out commands.

    ``state`` is what the agent reports (idle, running or failed). An agent
    with a delivered restart stays RESTARTING until it acknowledges it.
    ``deliver=False`` leaves queued commands queued: for a heartbeat whose
    answer has already gone out (the batched ingest path).
    """
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if agent.state == S.TERMINATED:
            raise AgentUnavailable(f"agent {agent.id} is terminated")
        now = timezone.now()
        restarted = _acknowledge(agent, acks or [], now)
        commands = _deliver_commands(agent, now) if deliver else []
        agent.last_heartbeat_at = now
        agent.missed_heartbeats = 0
        agent.current_task = task_id
        agent.task_progress = progress
        if agent.state != S.QUARANTINED:
            agent.overdue_at = miss_deadline(agent, now, 1)
        agent.save(
            update_fields=[
                "last_heartbeat_at",
                "missed_heartbeats",
                "current_task",
                "task_progress",
                "overdue_at",
            ]
        )
        target, reason = _reported_target(agent, state, commands, restarted)
        if target != agent.state:
            transition(agent, target, reason=reason, actor=f"agent:{agent.id}")
    return HeartbeatResult(agent=agent, commands=commands)


def _reported_target(agent, reported, commands, restarted) -> tuple[str, str]:
    if agent.state == S.QUARANTINED:
        return agent.state, ""
    # A delivered restart wins over a failed report: the agent is about to restart.
    if any(c.kind == CommandKind.RESTART for c in commands):
        return S.RESTARTING, "restart command delivered"
    if reported == S.FAILED:
        return S.FAILED, "reported failed by the agent"
    if agent.state == S.RESTARTING and not restarted:
        return S.RESTARTING, ""
    if agent.state == S.RESTARTING:
        return reported, "restarted"
    if agent.state in UNHEALTHY_STATES:
        return reported, "heartbeat resumed"
    return reported, "reported by the agent"


def _acknowledge(agent: Agent, acks: list[int], now) -> bool:
    """Mark delivered commands as done; True when a restart was among them."""
    if not acks:
        return False
    done = AgentCommand.objects.filter(agent=agent, pk__in=acks, status=CommandStatus.DELIVERED)
    restarted = done.filter(kind=CommandKind.RESTART).exists()
    done.update(status=CommandStatus.ACKED, acked_at=now)
    return restarted


def _deliver_commands(agent: Agent, now) -> list[AgentCommand]:
    commands = list(AgentCommand.objects.filter(agent=agent, status=CommandStatus.QUEUED))
    if commands:
        AgentCommand.objects.filter(pk__in=[c.pk for c in commands]).update(
            status=CommandStatus.DELIVERED, delivered_at=now
        )
    return commands


def queue_command(agent: Agent, kind: str, *, reason: str, issued_by: str) -> AgentCommand:
    """Queue a command for ``agent``; it leaves with the agent's next heartbeat response."""
    command = AgentCommand.objects.create(
        agent=agent, kind=kind, reason=reason, issued_by=issued_by
    )
    log.info("agent.command_queued", agent_id=agent.id, command_id=command.pk, kind=kind)
    return command


def overdue_agents(now: datetime | None = None):
    """Agents whose next heartbeat deadline has passed: one indexed query."""
    return Agent.objects.filter(overdue_at__lte=now or timezone.now())


def check_heartbeats(now: datetime | None = None, limit: int = 500) -> int:
    """Move every overdue agent along DEGRADED -> FAILED; return how many moved."""
    now = now or timezone.now()
    moved = 0
    for agent_id in overdue_agents(now).values_list("pk", flat=True)[:limit]:
        with new_trace("monitoring.heartbeat_overdue", agent_id=agent_id), transaction.atomic():
            # Another checker may hold it, or a heartbeat may have just arrived.
            agent = (
                Agent.objects.select_for_update(skip_locked=True)
                .filter(pk=agent_id, overdue_at__lte=now)
                .first()
            )
            if agent is not None:
                mark_missed(agent, now)
                moved += 1
    return moved


def mark_missed(agent: Agent, now: datetime) -> None:
    if agent.state == S.FAILED:
        # Reported failed, then went silent: nothing further to detect.
        agent.overdue_at = None
        agent.save(update_fields=["overdue_at"])
        return
    since = agent.last_heartbeat_at or agent.created_at
    interval = agent.interval_seconds
    elapsed = (now - since).total_seconds() - settings.HEARTBEAT_SKEW_SECONDS
    missed = max(1, math.floor(elapsed / interval))
    agent.missed_heartbeats = min(missed, 32767)
    agent.overdue_at = miss_deadline(agent, since, missed + 1)
    agent.save(update_fields=["missed_heartbeats", "overdue_at"])
    reason = f"{missed} heartbeat(s) missed"
    if missed >= settings.HEARTBEAT_FAILED_AFTER_MISSES:
        row = transition(agent, S.FAILED, reason=reason, actor="monitor")
        publish(
            "monitor.agent.heartbeat_lost",
            {
                "agent_id": agent.id,
                "role": agent.role,
                "last_heartbeat_at": agent.last_heartbeat_at,
                "missed": missed,
            },
            key=f"heartbeat_lost:{row.pk}",
        )
        log.warning("agent.heartbeat_lost", agent_id=agent.id, missed=missed)
    elif (
        agent.state in HEALTHY_STATES | {S.SPAWNING}
        and missed >= settings.HEARTBEAT_DEGRADED_AFTER_MISSES
    ):
        transition(agent, S.DEGRADED, reason=reason, actor="monitor")


def terminate_agent(agent: Agent, *, reason: str, actor: str) -> None:
    """Retire an agent for good and revoke its tokens."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if agent.state != S.TERMINATED:
            transition(agent, S.TERMINATED, reason=reason, actor=actor)
        AgentToken.objects.filter(agent=agent, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        invalidate_on_commit(agents=[agent.pk], agent_tokens=[agent.pk], wait=True)
