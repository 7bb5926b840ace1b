"""The agent state machine, and state changes for many agents in a handful of statements.

``transition_many`` is the set-based sibling of ``services.transition``: the
heartbeat check moves a whole outage with it, the heartbeat path a whole batch
of heartbeats. Each move is applied only if its agent is still in the state it
was read in, so a caller needs no lock to be safe from a concurrent change.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import structlog
from django.db import connection
from django.db.models import CharField, F, Q, Value
from django.db.models.expressions import Case, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from monitoring.ingest.invalidation import invalidate_on_commit
from monitoring.models import HEALTHY_STATES, UNHEALTHY_STATES, Agent, AgentState, AgentTransition
from omoi_console.foundation.events import NewEvent, publish_many

log = structlog.get_logger(__name__)

S = AgentState
# Where an agent may leave a live state for when something is wrong with it.
_TROUBLE = {S.DEGRADED, S.FAILED, S.RESTARTING, S.QUARANTINED, S.TERMINATED}
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    # A delivered restart command moves any live agent to RESTARTING: a heartbeat
    # that hands one out must never fail on the agent's current state.
    S.SPAWNING: frozenset({S.IDLE, S.RUNNING, *_TROUBLE}),
    S.IDLE: frozenset({S.RUNNING, *_TROUBLE}),
    # Only a running agent has a task whose progress can stall.
    S.RUNNING: frozenset({S.IDLE, S.STUCK, *_TROUBLE}),
    # Progress (or a new task) brings a stuck agent back; silence takes it on
    # to DEGRADED and FAILED; the watchdog or an operator may act as on a failure.
    S.STUCK: frozenset({S.IDLE, S.RUNNING, *_TROUBLE}),
    S.DEGRADED: frozenset({S.IDLE, S.RUNNING, *(_TROUBLE - {S.DEGRADED})}),
    S.FAILED: frozenset({S.RESTARTING, S.IDLE, S.RUNNING, S.QUARANTINED, S.TERMINATED}),
    S.RESTARTING: frozenset({S.IDLE, S.RUNNING, S.FAILED, S.QUARANTINED, S.TERMINATED}),
    S.QUARANTINED: frozenset({S.IDLE, S.TERMINATED}),
    S.TERMINATED: frozenset(),
}
# States in which the agent is expected to keep heartbeating.
WATCHED_STATES = frozenset({S.SPAWNING, S.IDLE, S.RUNNING, S.DEGRADED, S.RESTARTING, S.STUCK})
# Ids in one UPDATE: each id is bound up to four times, and SQLite caps bound parameters.
MOVES_PER_STATEMENT = 5000


class InvalidTransition(Exception):
    pass


class Move(NamedTuple):
    """Move ``agent`` to ``to_state``.

    ``agent`` is an Agent, or a mapping with ``id``, ``role`` and ``state`` (and,
    for ``down_seconds`` of a recovery, ``unhealthy_since``). ``trace`` is
    (trace_id, span_id) for the move's events; empty means the current span.
    """

    agent: Agent | Mapping
    to_state: str
    reason: str
    actor: str
    trace: tuple[str, str] | None = None


@dataclass(frozen=True)
class _Read:
    """The agent as the caller read it."""

    id: str
    role: str
    state: str
    unhealthy_since: datetime | None
    last_heartbeat_at: datetime | None


def _read(agent: Agent | Mapping) -> _Read:
    if isinstance(agent, Agent):
        fields = {name: getattr(agent, name) for name in ("role", "state", "unhealthy_since")}
        return _Read(id=agent.pk, last_heartbeat_at=agent.last_heartbeat_at, **fields)
    return _Read(
        id=agent["id"],
        role=agent["role"],
        state=agent["state"],
        unhealthy_since=agent.get("unhealthy_since"),
        last_heartbeat_at=agent.get("last_heartbeat_at"),
    )


def transition_many(moves: Iterable[Move], *, now: datetime | None = None) -> list[AgentTransition]:
    """Apply many state changes at once: the set-based ``transition``.

    Every move is checked against ``ALLOWED_TRANSITIONS`` first (InvalidTransition,
    nothing written, if one is not allowed; ValueError for two moves of one agent).
    A move is applied only if its agent is still in the state it was read in.
    The applied moves cost one UPDATE of the agents, one INSERT of their
    transition rows and one INSERT of their ``monitor.agent.state_changed`` and
    ``monitor.agent.recovered`` events. Agent instances among the moves are
    updated in place. Returns the transition rows of the applied moves, in order.
    """
    now = now or timezone.now()
    reads = [(move, _read(move.agent)) for move in moves]
    _check(reads)
    applied: set[str] = set()
    for start in range(0, len(reads), ids_per_statement()):
        applied |= _update_states(reads[start : start + ids_per_statement()], now)
    done = [(move, read) for move, read in reads if read.id in applied]
    if not done:
        return []
    rows = AgentTransition.objects.bulk_create(
        [
            AgentTransition(
                agent_id=read.id,
                from_state=read.state,
                to_state=move.to_state,
                reason=move.reason,
                actor=move.actor,
                at=now,
            )
            for move, read in done
        ]
    )
    publish_many(_events(done, rows, now))
    # A bulk UPDATE sends no model signal: tell the lean heartbeat path itself.
    invalidate_on_commit(agents=[read.id for _, read in done])
    _refresh_instances(done, now)
    moved = Counter(f"{read.state}->{move.to_state}" for move, read in done)
    log.info("agent.transitions", applied=len(done), skipped=len(reads) - len(done), moves=moved)
    return rows


def _check(reads: list[tuple[Move, _Read]]) -> None:
    ids = Counter(read.id for _, read in reads)
    repeated = [agent_id for agent_id, n in ids.items() if n > 1]
    if repeated:
        raise ValueError(f"more than one move for {', '.join(sorted(repeated))}")
    refused = [
        f"{read.id}: {read.state} -> {move.to_state}"
        for move, read in reads
        if move.to_state not in ALLOWED_TRANSITIONS.get(read.state, ())
    ]
    if refused:
        raise InvalidTransition(f"not allowed: {'; '.join(refused)}")


def ids_per_statement() -> int:
    """How many agent ids one bulk statement may bind (up to four times each)."""
    limit = connection.features.max_query_params
    return min(MOVES_PER_STATEMENT, limit // 4) if limit else MOVES_PER_STATEMENT


def _update_states(reads: list[tuple[Move, _Read]], now: datetime) -> set[str]:
    """One conditional UPDATE for a chunk of moves; return the ids it moved.

    Every new value follows from the target state and the row itself, so the
    statement has one CASE branch per target state, not one per agent.
    """
    by_from, by_to = defaultdict(list), defaultdict(list)
    for move, read in reads:
        by_from[read.state].append(read.id)
        by_to[move.to_state].append(read.id)
    still = Q()
    for state, ids in by_from.items():
        still |= Q(pk__in=ids, state=state)
    to_healthy = [i for to, ids in by_to.items() if to in HEALTHY_STATES for i in ids]
    to_unhealthy = [i for to, ids in by_to.items() if to in UNHEALTHY_STATES for i in ids]
    unwatched = [i for to, ids in by_to.items() if to not in WATCHED_STATES for i in ids]
    not_running = [i for to, ids in by_to.items() if to != S.RUNNING for i in ids]
    updated = Agent.objects.filter(still).update(
        state=Case(
            *[When(pk__in=ids, then=Value(to)) for to, ids in by_to.items()],
            output_field=CharField(),
        ),
        state_changed_at=now,
        unhealthy_since=_when_in(
            [
                (to_healthy, Value(None)),
                (to_unhealthy, Coalesce("unhealthy_since", "last_heartbeat_at", Value(now))),
            ],
            default=F("unhealthy_since"),
        ),
        overdue_at=_when_in([(unwatched, Value(None))], default=F("overdue_at")),
        # Only a running agent can become stuck; a heartbeat that makes it run
        # again sets the deadline anew from its task's progress.
        stuck_at=_when_in([(not_running, Value(None))], default=F("stuck_at")),
    )
    ids = [read.id for _, read in reads]
    if updated == len(reads):
        return set(ids)
    # Some agent changed state since it was read: find which moves took effect.
    targets = {read.id: move.to_state for move, read in reads}
    now_in = Agent.objects.filter(pk__in=ids, state_changed_at=now).values_list("pk", "state")
    return {pk for pk, state in now_in if targets[pk] == state}


def _when_in(branches, *, default):
    whens = [When(pk__in=ids, then=value) for ids, value in branches if ids]
    return Case(*whens, default=default) if whens else default


def _events(done, rows, now) -> list[NewEvent]:
    events = []
    for (move, read), row in zip(done, rows, strict=True):
        base = {"agent_id": read.id, "role": read.role}
        change = {"from_state": read.state, "to_state": move.to_state}
        events.append(
            NewEvent(
                "monitor.agent.state_changed",
                {**base, **change, "reason": move.reason, "actor": move.actor},
                key=f"state_changed:{row.pk}",
                trace=move.trace,
            )
        )
        if read.state in UNHEALTHY_STATES and move.to_state in HEALTHY_STATES:
            down = (now - read.unhealthy_since).total_seconds() if read.unhealthy_since else 0.0
            events.append(
                NewEvent(
                    "monitor.agent.recovered",
                    {**base, **change, "down_seconds": down},
                    key=f"recovered:{row.pk}",
                    trace=move.trace,
                )
            )
    return events


def _refresh_instances(done, now) -> None:
    """Mirror the UPDATE on the Agent instances the caller passed in."""
    for move, _ in done:
        agent = move.agent
        if not isinstance(agent, Agent):
            continue
        to_state = move.to_state
        if to_state in HEALTHY_STATES:
            agent.unhealthy_since = None
        elif to_state in UNHEALTHY_STATES and agent.unhealthy_since is None:
            agent.unhealthy_since = agent.last_heartbeat_at or now
        if to_state not in WATCHED_STATES:
            agent.overdue_at = None
        if to_state != S.RUNNING:
            agent.stuck_at = None
        agent.state = to_state
        agent.state_changed_at = now
