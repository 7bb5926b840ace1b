"""Writing a batch of buffered heartbeats: one statement for the routine ones.

A routine heartbeat is written only if the agent is still in the state it was
answered from (``WHERE state = <served state>``); the statement returns the
rows it moved, and every other heartbeat of the batch (a state change, or an
agent whose state changed under us) goes through ``record_heartbeat`` with
``deliver=False``: its answer has gone out, so no queued command may be marked
delivered by it.

The statement also follows each task's progress as ``stuck.note_progress``
does: whether the task or progress changed is known only to the row, so the
progress clock and the precomputed ``stuck_at`` are computed in SQL from the
row's old values and the heartbeat's new ones.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from monitoring import services
from monitoring.ingest.cache import ingest_cache
from monitoring.models import UNHEALTHY_STATES, Agent, AgentState, AgentToken
from monitoring.transitions import Move, transition_many

log = structlog.get_logger(__name__)

# SQLite binds at most 32,766 parameters per statement, eight per row; on Postgres
# the chunk bounds one statement's work.
ROWS_PER_STATEMENT = 4000


@dataclass
class Beat:
    agent_id: str
    at: datetime
    state: str  # what the agent is in once this is written (what it reported, or STUCK)
    served_from: str  # the cached state it was answered from
    task_id: str
    progress: float | None
    stuck_after: float | None  # the task's own stuck threshold, if the heartbeat named one
    default_stuck_after: float  # the role's, for a task that has none
    interval: float
    token_id: int
    touch_token: bool  # its last_used_at is a minute old: write it with this batch
    generation: int

    @property
    def routine(self) -> bool:
        return self.state == self.served_from


@dataclass
class Outcome:
    states: dict[str, str | None]  # each agent's state afterwards (None: may not report)
    own_changes: dict[str, int]  # cache invalidations this flush caused, per agent


def flush_heartbeats(beats: list[Beat]) -> Outcome:
    """Write a batch of heartbeats: liveness in one statement, state changes in bulk."""
    latest: dict[str, Beat] = {}
    for beat in beats:  # an agent that beat twice in one interval: the last one counts
        latest[beat.agent_id] = beat
    with ingest_cache.counting_own_changes() as own:
        with transaction.atomic():
            written = write_liveness([b for b in latest.values() if b.routine])
            moved = apply_state_changes([b for b in latest.values() if not b.routine])
        states: dict[str, str | None] = {
            agent_id: latest[agent_id].state for agent_id in written | moved
        }
        for beat in latest.values():
            if beat.agent_id not in states:
                states[beat.agent_id] = apply_in_full(beat)
    touch_tokens(beats)
    return Outcome(states, dict(own))


def apply_state_changes(beats: list[Beat]) -> set[str]:
    """Plain reported state changes, as ``record_heartbeat`` would make them, in bulk.

    Only agents still in the state their heartbeat was answered from move; the
    rest are left to ``apply_in_full``. Returns the ids moved and written.
    """
    if not beats:
        return set()
    rows = (
        Agent.objects.select_for_update()
        .filter(pk__in=[b.agent_id for b in beats])
        .order_by("pk")
        .values("id", "role", "state", "unhealthy_since", "last_heartbeat_at")
    )
    current = {row["id"]: row for row in rows}
    moves = [
        Move(
            current[b.agent_id],
            b.state,
            "heartbeat resumed" if b.served_from in UNHEALTHY_STATES else "reported by the agent",
            f"agent:{b.agent_id}",
        )
        for b in beats
        if b.agent_id in current and current[b.agent_id]["state"] == b.served_from
    ]
    applied = {row.agent_id for row in transition_many(moves)}
    return write_liveness([b for b in beats if b.agent_id in applied])


def write_liveness(beats: list[Beat]) -> set[str]:
    """One UPDATE per chunk for heartbeats that change nothing but liveness."""
    written: set[str] = set()
    for start in range(0, len(beats), ROWS_PER_STATEMENT):
        written |= _write_chunk(beats[start : start + ROWS_PER_STATEMENT])
    return written


COLUMNS = "id, at, overdue, task, progress, state, stuck_after, fallback"


def _write_chunk(beats: list[Beat]) -> set[str]:
    if not beats:
        return set()
    ops = connection.ops
    skew = timedelta(seconds=settings.HEARTBEAT_SKEW_SECONDS)
    rows = [
        (
            beat.agent_id,
            ops.adapt_datetimefield_value(beat.at),
            ops.adapt_datetimefield_value(beat.at + timedelta(seconds=beat.interval) + skew),
            beat.task_id,
            beat.progress,
            beat.state,
            beat.stuck_after,
            beat.default_stuck_after,
        )
        for beat in sorted(beats, key=lambda b: b.agent_id)
    ]
    table = ops.quote_name(Agent._meta.db_table)
    if connection.vendor == "postgresql":
        # Eight array parameters, whatever the batch size: a VALUES list would make
        # the driver split and bind a statement of thousands of placeholders.
        values = (
            "SELECT * FROM unnest(%s::varchar[], %s::timestamptz[], %s::timestamptz[], "
            "%s::varchar[], %s::double precision[], %s::varchar[], "
            "%s::double precision[], %s::double precision[])"
        )
        params = [list(column) for column in zip(*rows, strict=True)]
        # Rows are locked in id order, so two processes flushing overlapping
        # batches queue behind each other instead of deadlocking.
        lock = (
            f"SELECT a.id FROM {table} a JOIN v ON a.id = v.id AND a.state = v.state "  # noqa: S608
            "ORDER BY a.id FOR UPDATE OF a"
        )
    else:
        values = "VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
        params = [value for row in rows for value in row]
        lock = "SELECT v.id FROM v"
    # Only identifiers and placeholders are formatted in; every value is a parameter.
    sql = (
        f"WITH v ({COLUMNS}) AS ({values}), "  # noqa: S608
        f"locked AS ({lock}) "
        f"UPDATE {table} SET last_heartbeat_at = v.at, overdue_at = v.overdue, "
        "missed_heartbeats = 0, current_task = v.task, task_progress = v.progress, "
        f"{progress_columns(table)} "
        f"FROM v WHERE {table}.id = v.id AND {table}.state = v.state "
        f"AND {table}.id IN (SELECT id FROM locked) "
        f"RETURNING {table}.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def progress_columns(table: str) -> str:
    """SET clauses for the progress clock, the task's threshold and ``stuck_at``.

    The rule of ``stuck.note_progress``, on the row's old values (every column
    on the right of a SET is read before the row changes, in both databases).
    """
    if connection.vendor == "postgresql":
        differs = "IS DISTINCT FROM"

        def plus_seconds(moment: str, seconds: str) -> str:
            return f"({moment}) + ({seconds}) * interval '1 second'"
    else:
        differs = "IS NOT"

        def plus_seconds(moment: str, seconds: str) -> str:
            # SQLite keeps datetimes as text; strftime's %f has milliseconds,
            # plenty for a threshold of ten seconds or more. (%% for the driver.)
            return (
                f"strftime('%%Y-%%m-%%d %%H:%%M:%%f', {moment}, "
                f"printf('%%+.3f seconds', {seconds}))"
            )

    moved = (
        f"({table}.progress_changed_at IS NULL OR {table}.current_task <> v.task "
        f"OR {table}.task_progress {differs} v.progress)"
    )
    changed_at = f"CASE WHEN {moved} THEN v.at ELSE {table}.progress_changed_at END"
    threshold = (
        "CASE WHEN v.stuck_after IS NOT NULL THEN v.stuck_after "
        f"WHEN {table}.current_task = v.task THEN {table}.task_stuck_after END"
    )
    stuck_at = plus_seconds(changed_at, f"COALESCE({threshold}, v.fallback)")
    return (
        f"progress_changed_at = {changed_at}, task_stuck_after = {threshold}, "
        f"stuck_at = CASE WHEN v.state = '{AgentState.RUNNING.value}' AND v.task <> '' "
        f"THEN {stuck_at} END"
    )


def apply_in_full(beat: Beat) -> str | None:
    agent = Agent(pk=beat.agent_id)
    try:
        result = services.record_heartbeat(
            agent,
            state=beat.state,
            task_id=beat.task_id,
            progress=beat.progress,
            stuck_after=beat.stuck_after,
            deliver=False,
        )
    except (Agent.DoesNotExist, services.AgentUnavailable):
        return None
    return result.agent.state


def touch_tokens(beats: list[Beat]) -> None:
    """Keep ``last_used_at`` as Django's path does: at most one write a minute per token."""
    stale = {b.token_id for b in beats if b.touch_token}
    if stale:
        AgentToken.objects.filter(pk__in=stale).update(last_used_at=timezone.now())
