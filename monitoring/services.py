"""Monitoring's verbs: register agents, record heartbeats, find the overdue, move states."""

import functools
import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, PositiveSmallIntegerField, Value, When
from django.db.models.functions import Coalesce
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
from monitoring.stuck import HEARTBEAT_FIELDS, note_progress, progress_moved
from monitoring.transitions import (
    ALLOWED_TRANSITIONS,
    WATCHED_STATES,
    InvalidTransition,
    Move,
    ids_per_statement,
    transition_many,
)
from omoi_console.foundation.events import NewEvent, publish, publish_many
from omoi_console.foundation.events.tracing import (
    continued_trace,
    current_span_context,
    current_trace_ids,
    new_trace_ids,
)

log = structlog.get_logger(__name__)

S = AgentState


class AgentUnavailable(Exception):
    """The agent may not report any more (terminated)."""


@dataclass
class HeartbeatResult:
    agent: Agent
    commands: list[AgentCommand]
    # The heartbeat was no newer than the last one recorded and changed nothing.
    stale: bool = False


def register_agent(
    agent_id: str,
    role: str,
    *,
    labels: dict | None = None,
    heartbeat_interval: float | None = None,
    actor: str = "system",
    **metadata,
) -> tuple[Agent, str]:
    """Create an agent and its first ingest token; return the token's plaintext once.

    ``metadata`` are registry fields (name, capabilities, owner, version).
    Raises ValidationError for a malformed id, role or field, IntegrityError for a taken id.
    """
    spec = NewAgent(agent_id, role, labels or {}, heartbeat_interval, **metadata)
    return register_agents([spec], actor=actor)[0]


@dataclass(frozen=True)
class NewAgent:
    id: str
    role: str
    labels: dict
    heartbeat_interval: float | None = None
    name: str = ""
    capabilities: list = field(default_factory=list)
    owner: str = ""
    version: str = ""


def register_agents(specs: list[NewAgent], *, actor: str = "system") -> list[tuple[Agent, str]]:
    """Register many agents at once: three INSERTs, whatever their number.

    Every agent is validated first (ValidationError, nothing stored); a taken id
    fails the whole batch with IntegrityError. Each agent's deadline starts now,
    so a fleet registered together gets the same time to send its first heartbeat.
    """
    now = timezone.now()
    agents = []
    for spec in specs:
        agent = Agent(
            id=spec.id,
            role=spec.role,
            labels=spec.labels,
            heartbeat_interval=spec.heartbeat_interval,
            name=spec.name,
            capabilities=list(spec.capabilities),
            owner=spec.owner,
            version=spec.version,
            created_at=now,
            state_changed_at=now,
        )
        # Uniqueness is the primary key's job: a concurrent registration of the
        # same id then fails as IntegrityError, which callers answer with 409.
        agent.full_clean(validate_unique=False)
        agent.overdue_at = miss_deadline(agent, now, 1)
        agents.append(agent)
    generations = {agent.pk: ingest_cache.generations(agent.pk) for agent in agents}
    issued = [AgentToken.unsaved(agent=agent, name="initial") for agent in agents]
    with transaction.atomic():
        Agent.objects.bulk_create(agents)
        AgentTransition.objects.bulk_create(
            AgentTransition(
                agent=agent,
                from_state="",
                to_state=S.SPAWNING,
                reason="registered",
                actor=actor,
                at=now,
            )
            for agent in agents
        )
        AgentToken.objects.bulk_create(token for token, _ in issued)
        # An agent's first heartbeat usually reaches the process that registered
        # it: let the lean path take it (a fleet starting at once is a storm).
        for agent, (token, raw) in zip(agents, issued, strict=True):
            transaction.on_commit(
                functools.partial(remember_served, raw, token, agent, generations[agent.pk]),
                robust=True,
            )
    for agent in agents:
        log.info("agent.registered", agent_id=agent.id, role=agent.role)
    return [(agent, raw) for agent, (_, raw) in zip(agents, issued, strict=True)]


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
    if to_state != S.RUNNING:
        agent.stuck_at = None
    agent.state = to_state
    agent.state_changed_at = now
    agent.save(
        update_fields=["state", "state_changed_at", "unhealthy_since", "overdue_at", "stuck_at"]
    )
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
    stuck_after: float | None = None,
    acks: list[int] | None = None,
    deliver: bool = True,
    at: datetime | None = None,
    generation: int | None = None,
) -> HeartbeatResult:
    """Take a heartbeat: refresh deadlines, apply acknowledgements, hand out commands.

    ``state`` is what the agent reports (idle, running or failed). An agent
    with a delivered restart stays RESTARTING until it acknowledges it. A STUCK
    agent stays stuck until its task or progress changes. ``stuck_after`` is the
    current task's own stuck threshold, kept for the task once given.
    ``deliver=False`` leaves queued commands queued: for a heartbeat whose
    answer has already gone out (the batched ingest path).
    ``at`` is when the heartbeat was sent, for heartbeats that arrive late (from
    an event bus): deadlines count from it (never from the future), and one no
    newer than the last heartbeat recorded changes nothing (``stale``), so a
    redelivered or reordered message cannot move the agent's state backwards.
    ``generation`` is the restart generation the agent runs under (echoed from
    the last restart command it obeyed): a ``failed`` report from an older
    generation than the agent's newest restart predates that restart and changes
    nothing. None (an older client) keeps the behaviour without generations.
    """
    with transaction.atomic():
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if agent.state == S.TERMINATED:
            raise AgentUnavailable(f"agent {agent.id} is terminated")
        now = timezone.now()
        sent_at = now if at is None else min(at, now)
        if at is not None and agent.last_heartbeat_at and sent_at <= agent.last_heartbeat_at:
            return HeartbeatResult(agent=agent, commands=[], stale=True)
        answered = _acknowledge(agent, acks or [], now)
        restarted = answered is not None
        commands = _deliver_commands(agent, now) if deliver else []
        moved = progress_moved(agent, task_id, progress)
        # A failed report from before the agent's newest restart: not a new failure.
        stale = (
            state == S.FAILED and generation is not None and generation < agent.restart_generation
        )
        if stale and not any(c.kind == CommandKind.RESTART for c in commands):
            log.info("agent.stale_failure_ignored", agent_id=agent.id, generation=generation)
            target, reason = agent.state, ""
        else:
            target, reason = _reported_target(agent, state, commands, restarted, moved)
        agent.last_heartbeat_at = sent_at
        agent.missed_heartbeats = 0
        note_progress(
            agent,
            task_id=task_id,
            progress=progress,
            stuck_after=stuck_after,
            now=now,
            running=target == S.RUNNING,
        )
        if agent.state != S.QUARANTINED:
            agent.overdue_at = miss_deadline(agent, sent_at, 1)
        agent.save(update_fields=[*HEARTBEAT_FIELDS])
        if target != agent.state:
            restart = next((c for c in commands if c.kind == CommandKind.RESTART), answered)
            with restart_trace(restart, delivered=restart is not answered):
                transition(agent, target, reason=reason, actor=f"agent:{agent.id}")
    return HeartbeatResult(agent=agent, commands=commands)


def restart_trace(command: AgentCommand | None, *, delivered: bool):
    """The span in which a heartbeat that takes or answers a restart moves its agent.

    It continues the trace of whoever queued the restart (a remediation, which
    continues the failure's), linked to the heartbeat's own request: the
    failure, the restart and the recovery it brings are one trace.
    """
    if command is None or not command.trace_id:
        return nullcontext()
    return continued_trace(
        "agent.restart_delivered" if delivered else "agent.restart_acknowledged",
        command.trace_id,
        command.span_id,
        links=[current_span_context()],
        agent_id=command.agent_id,
        command_id=command.pk,
    )


def _reported_target(agent, reported, commands, restarted, moved) -> tuple[str, str]:
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
    if agent.state == S.STUCK:
        if reported == S.RUNNING and not moved:
            return S.STUCK, ""
        return reported, "progress resumed" if reported == S.RUNNING else "task left"
    if agent.state in UNHEALTHY_STATES:
        return reported, "heartbeat resumed"
    return reported, "reported by the agent"


def _acknowledge(agent: Agent, acks: list[int], now) -> AgentCommand | None:
    """Mark delivered commands as done; return the restart among them, if any."""
    if not acks:
        return None
    done = AgentCommand.objects.filter(agent=agent, pk__in=acks, status=CommandStatus.DELIVERED)
    restart = done.filter(kind=CommandKind.RESTART).order_by("-pk").first()
    done.update(status=CommandStatus.ACKED, acked_at=now)
    return restart


def _deliver_commands(agent: Agent, now) -> list[AgentCommand]:
    queued = list(AgentCommand.objects.filter(agent=agent, status=CommandStatus.QUEUED))
    expired = [c.pk for c in queued if c.expires_at is not None and c.expires_at <= now]
    if expired:
        AgentCommand.objects.filter(pk__in=expired).update(status=CommandStatus.EXPIRED)
        log.warning("agent.commands_expired", agent_id=agent.id, command_ids=expired)
    commands = _take_over_tasks(agent, [c for c in queued if c.pk not in expired])
    if commands:
        AgentCommand.objects.filter(pk__in=[c.pk for c in commands]).update(
            status=CommandStatus.DELIVERED, delivered_at=now
        )
    for command in commands:
        command.status, command.delivered_at = CommandStatus.DELIVERED, now
        if command.kind == CommandKind.RECYCLE_TOKEN:
            command.params = {**command.params, "token": _recycle_token(agent, now)}
    return commands


def _take_over_tasks(agent: Agent, commands: list[AgentCommand]) -> list[AgentCommand]:
    """Move each task a ``take_task`` hands out from its old agent, as it leaves.

    The task changes owner here, in the taker's heartbeat, not when the command
    was queued: a command that expires or is withdrawn undelivered leaves the task
    where it was, never with nobody. One whose old agent is healthy again is
    withdrawn: the task stays with the agent that runs it.
    """
    handing = [c for c in commands if c.kind == CommandKind.TAKE_TASK]
    if not handing:
        return commands
    sources = Agent.objects.in_bulk([c.params.get("from_agent") for c in handing])
    withdrawn = set()
    for command in handing:
        source = sources.get(command.params.get("from_agent"))
        if source is not None and source.state in HEALTHY_STATES:
            withdrawn.add(command.pk)
        elif source is not None:
            release_task(source, command.params["task_id"], reason=f"taken over by {agent.id}")
    if withdrawn:
        AgentCommand.objects.filter(pk__in=withdrawn).update(status=CommandStatus.CANCELLED)
        log.warning(
            "agent.task_handover_withdrawn", agent_id=agent.id, command_ids=sorted(withdrawn)
        )
    return [c for c in commands if c.pk not in withdrawn]


def _recycle_token(agent: Agent, now) -> str:
    """Issue the agent a new token and revoke every other one, in the heartbeat's transaction.

    The plaintext leaves once, in the response that carries the command (it is
    never stored); the old token stops working when this commits, in every
    serving process (the invalidation waits for their acknowledgements).
    """
    token, raw = AgentToken.issue(agent=agent, name="recycled")
    AgentToken.objects.filter(agent=agent, revoked_at__isnull=True).exclude(pk=token.pk).update(
        revoked_at=now
    )
    invalidate_on_commit(agent_tokens=[agent.pk], wait=True)
    log.warning("agent.token_recycled", agent_id=agent.id, token=token.lookup)
    return raw


def queue_command(
    agent: Agent,
    kind: str,
    *,
    reason: str,
    issued_by: str,
    serves: str = "",
    expires_at: datetime | None = None,
    params: dict | None = None,
) -> AgentCommand:
    """Queue a command for ``agent``; it leaves with the agent's next heartbeat response.

    A restart bumps the agent's restart generation and carries it. ``serves``
    names what the command is for, so ``cancel_commands`` can withdraw it;
    past ``expires_at`` a command still queued is never handed out.
    """
    generation = None
    trace_id, span_id = current_trace_ids()
    with transaction.atomic():
        if kind == CommandKind.RESTART:
            locked = Agent.objects.select_for_update().get(pk=agent.pk)
            generation = locked.restart_generation + 1
            Agent.objects.filter(pk=agent.pk).update(restart_generation=generation)
            agent.restart_generation = generation
        command = AgentCommand.objects.create(
            agent=agent,
            kind=kind,
            reason=reason[:200],
            issued_by=issued_by,
            serves=serves,
            expires_at=expires_at,
            generation=generation,
            params=params or {},
            trace_id=trace_id,
            span_id=span_id,
        )
    log.info("agent.command_queued", agent_id=agent.id, command_id=command.pk, kind=kind)
    return command


def release_task(agent: Agent, task_id: str, *, reason: str) -> bool:
    """Clear ``task_id`` from ``agent``, as another takes it: one owner per task.

    Conditional on the agent still holding that task, so a task it moved on from
    meanwhile is left alone; False then. The serving processes forget the agent,
    so a stuck snapshot of the old task does not outlive it.
    """
    released = Agent.objects.filter(pk=agent.pk, current_task=task_id).update(
        current_task="",
        task_progress=None,
        progress_changed_at=None,
        task_stuck_after=None,
        stuck_at=None,
    )
    if not released:
        return False
    agent.current_task, agent.task_progress = "", None
    agent.progress_changed_at = agent.task_stuck_after = agent.stuck_at = None
    invalidate_on_commit(agents=[agent.pk])
    log.warning("agent.task_released", agent_id=agent.id, task_id=task_id, reason=reason)
    return True


def cancel_commands(serves: str, *, reason: str = "") -> int:
    """Withdraw every command serving ``serves`` that the agent has not received yet."""
    pending = AgentCommand.objects.filter(serves=serves, status=CommandStatus.QUEUED)
    agent_ids = list(pending.values_list("agent_id", flat=True).distinct())
    count = pending.update(status=CommandStatus.CANCELLED)
    if count:
        invalidate_on_commit(agents=agent_ids)
        log.warning("agent.commands_cancelled", serves=serves, count=count, reason=reason)
    return count


def overdue_agents(now: datetime | None = None):
    """Agents whose next heartbeat deadline has passed, earliest first.

    Ordered by ``overdue_at`` (not the model's default, the id) so that a LIMIT
    walks the partial index ``agent_overdue_idx`` and stops: with nothing due the
    query costs the same at a thousand agents and at a hundred thousand.
    """
    return Agent.objects.filter(overdue_at__lte=now or timezone.now()).order_by("overdue_at")


def check_heartbeats(now: datetime | None = None, limit: int = 5000) -> int:
    """Move every overdue agent along DEGRADED -> FAILED in one transaction; return how many.

    One ``SELECT ... FOR UPDATE SKIP LOCKED`` claims up to ``limit`` overdue
    agents (a concurrent checker takes others, a heartbeat in flight keeps its
    agent); their new deadlines are one UPDATE, their state changes one
    ``transition_many``, their ``heartbeat_lost`` events one INSERT. Each agent
    that changes state starts a trace of its own.
    """
    now = now or timezone.now()
    # Most ticks find nothing: answer those with one read, outside a transaction,
    # since on SQLite even an empty transaction takes the write lock.
    if overdue_agents(now).values_list("pk", flat=True).first() is None:
        return 0
    with transaction.atomic():
        agents = list(overdue_agents(now).select_for_update(skip_locked=True)[:limit])
        if not agents:
            return 0
        moves = [move for agent in agents if (move := mark_missed(agent, now)) is not None]
        save_deadlines(agents)
        rows = transition_many(moves, now=now)
        _publish_heartbeats_lost(moves, rows)
    return len(agents)


def mark_missed(agent: Agent, now: datetime) -> Move | None:
    """Count ``agent``'s missed heartbeats and set its next deadline (unsaved).

    Returns the move its misses call for (to DEGRADED or FAILED), if any.
    """
    if agent.state == S.FAILED:
        # Reported failed, then went silent: nothing further to detect.
        agent.overdue_at = None
        return None
    since = agent.last_heartbeat_at or agent.created_at
    elapsed = (now - since).total_seconds() - settings.HEARTBEAT_SKEW_SECONDS
    missed = max(1, math.floor(elapsed / agent.interval_seconds))
    agent.missed_heartbeats = min(missed, 32767)
    agent.overdue_at = miss_deadline(agent, since, missed + 1)
    if missed >= settings.HEARTBEAT_FAILED_AFTER_MISSES:
        target = S.FAILED
    elif (
        agent.state in HEALTHY_STATES | {S.SPAWNING, S.STUCK}
        and missed >= settings.HEARTBEAT_DEGRADED_AFTER_MISSES
    ):
        target = S.DEGRADED
    else:
        return None
    trace = new_trace_ids("monitoring.heartbeat_overdue", agent_id=agent.id)
    return Move(agent, target, f"{missed} heartbeat(s) missed", "monitor", trace)


def save_deadlines(agents: list[Agent]) -> None:
    """Store the agents' missed counts and next deadlines, one UPDATE per chunk.

    A deadline is the last heartbeat (or the registration) plus a fixed offset
    for a given count and interval, so agents that share both share one CASE
    branch computed from their own row: a mass outage is a branch or two, not
    one per agent as ``bulk_update`` would write.
    """
    since = Coalesce("last_heartbeat_at", "created_at")
    for start in range(0, len(agents), ids_per_statement()):
        groups = defaultdict(list)
        for agent in agents[start : start + ids_per_statement()]:
            origin = agent.last_heartbeat_at or agent.created_at
            offset = agent.overdue_at - origin if agent.overdue_at else None
            groups[(agent.missed_heartbeats, offset)].append(agent.pk)
        deadline = [
            When(pk__in=ids, then=since + Value(offset) if offset is not None else Value(None))
            for (_, offset), ids in groups.items()
        ]
        Agent.objects.filter(pk__in=[i for ids in groups.values() for i in ids]).update(
            missed_heartbeats=Case(
                *[When(pk__in=ids, then=Value(missed)) for (missed, _), ids in groups.items()],
                output_field=PositiveSmallIntegerField(),
            ),
            overdue_at=Case(*deadline, output_field=DateTimeField()),
        )


def _publish_heartbeats_lost(moves: list[Move], rows) -> None:
    by_agent = {move.agent.id: move for move in moves}
    lost = []
    for row in rows:
        if row.to_state != S.FAILED:
            continue
        move = by_agent[row.agent_id]
        agent = move.agent
        payload = {
            "agent_id": agent.id,
            "role": agent.role,
            "last_heartbeat_at": agent.last_heartbeat_at,
            "missed": agent.missed_heartbeats,
        }
        lost.append(
            NewEvent(
                "monitor.agent.heartbeat_lost",
                payload,
                key=f"heartbeat_lost:{row.pk}",
                trace=move.trace,
            )
        )
        log.warning("agent.heartbeat_lost", agent_id=agent.id, missed=agent.missed_heartbeats)
    publish_many(lost)


def terminate_agent(agent: Agent, *, reason: str, actor: str) -> None:
    """Retire an agent for good and revoke its tokens."""
    terminate_agents([agent.pk], reason=reason, actor=actor)


def terminate_agents(agent_ids: list[str], *, reason: str, actor: str) -> None:
    """Retire many agents at once (a fleet): one transition batch, one revocation."""
    with transaction.atomic():
        live = (
            Agent.objects.select_for_update()
            .filter(pk__in=agent_ids)
            .exclude(state=S.TERMINATED)
            .order_by("pk")
        )
        transition_many([Move(agent, S.TERMINATED, reason, actor) for agent in live])
        AgentToken.objects.filter(agent_id__in=agent_ids, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        invalidate_on_commit(agents=agent_ids, agent_tokens=agent_ids, wait=True)
