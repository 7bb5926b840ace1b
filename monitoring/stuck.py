"""Stuck detection: an agent that heartbeats but whose task makes no progress.

Every heartbeat notes whether the agent's task or progress changed
(``progress_changed_at``) and precomputes ``stuck_at``, the moment the task
counts as stuck: the last change plus the task's threshold (from its
heartbeats, else the role's default). ``stuck_at`` is set only while the agent
runs a task, so "who is stuck?" is one walk of a partial index, as "who is
overdue?" is. The lean ingest path computes the same in SQL
(``ingest/flush.py``); ``note_progress`` is the rule both follow.
"""

from datetime import datetime, timedelta

import structlog
from django.db import transaction
from django.utils import timezone

from monitoring.models import Agent, AgentState, role_stuck_after
from monitoring.transitions import Move, transition_many
from omoi_console.foundation.events import NewEvent, publish_many
from omoi_console.foundation.events.tracing import new_trace_ids

log = structlog.get_logger(__name__)

S = AgentState
# What a heartbeat writes besides a state change.
HEARTBEAT_FIELDS = (
    "last_heartbeat_at",
    "missed_heartbeats",
    "current_task",
    "task_progress",
    "progress_changed_at",
    "task_stuck_after",
    "stuck_at",
    "overdue_at",
)
# What the check reads of each agent it claims.
CLAIMED = (
    "id",
    "role",
    "state",
    "unhealthy_since",
    "last_heartbeat_at",
    "current_task",
    "task_progress",
    "progress_changed_at",
    "task_stuck_after",
)


def progress_moved(agent: Agent, task_id: str, progress: float | None) -> bool:
    """Whether a heartbeat's task and progress differ from what ``agent`` last reported."""
    return (
        agent.progress_changed_at is None
        or agent.current_task != task_id
        or agent.task_progress != progress
    )


def note_progress(
    agent: Agent,
    *,
    task_id: str,
    progress: float | None,
    stuck_after: float | None,
    now: datetime,
    running: bool,
) -> None:
    """Take a heartbeat's task and progress into ``agent`` (unsaved) and set ``stuck_at``.

    A threshold given for a task holds until the task changes; ``running`` is
    whether the agent is RUNNING once the heartbeat is taken.
    """
    same_task = agent.current_task == task_id
    if progress_moved(agent, task_id, progress):
        agent.progress_changed_at = now
    if stuck_after is not None:
        agent.task_stuck_after = stuck_after
    elif not same_task:
        agent.task_stuck_after = None
    agent.current_task = task_id
    agent.task_progress = progress
    agent.stuck_at = stuck_deadline(agent) if running and task_id else None


def stuck_deadline(agent: Agent) -> datetime:
    return agent.progress_changed_at + timedelta(seconds=agent.stuck_after_seconds)


def stuck_agents(now: datetime | None = None):
    """Agents whose task has made no progress past its threshold, earliest first.

    Ordered by ``stuck_at`` so that a LIMIT walks the partial index
    ``agent_stuck_idx`` and stops (see ``services.overdue_agents``).
    """
    return Agent.objects.filter(stuck_at__lte=now or timezone.now()).order_by("stuck_at")


def check_stuck(now: datetime | None = None, limit: int = 5000) -> int:
    """Move every running agent past its ``stuck_at`` to STUCK; return how many were claimed.

    One ``SELECT ... FOR UPDATE SKIP LOCKED`` claims up to ``limit`` of them (a
    heartbeat in flight keeps its agent, and may well have moved its deadline);
    their state changes are one ``transition_many`` and their
    ``monitor.agent.stuck`` events one INSERT. A claimed agent that no longer
    runs only loses its stale deadline.
    """
    now = now or timezone.now()
    # As for heartbeats: a tick with nothing due is one read, outside a transaction.
    if stuck_agents(now).values_list("pk", flat=True).first() is None:
        return 0
    with transaction.atomic():
        claimed = list(
            stuck_agents(now).select_for_update(skip_locked=True).values(*CLAIMED)[:limit]
        )
        if not claimed:
            return 0
        stale = [row["id"] for row in claimed if row["state"] != S.RUNNING]
        if stale:
            Agent.objects.filter(pk__in=stale).update(stuck_at=None)
        moves = [_stuck_move(row, now) for row in claimed if row["state"] == S.RUNNING]
        rows = transition_many(moves, now=now)
        _publish_stuck(moves, rows, now)
    return len(claimed)


def _stuck_move(row: dict, now: datetime) -> Move:
    quiet = (now - row["progress_changed_at"]).total_seconds()
    trace = new_trace_ids("monitoring.agent_stuck", agent_id=row["id"])
    return Move(row, S.STUCK, f"no progress for {quiet:.0f}s", "monitor", trace)


def _publish_stuck(moves: list[Move], rows, now: datetime) -> None:
    by_agent = {move.agent["id"]: move for move in moves}
    events = []
    for row in rows:
        move = by_agent[row.agent_id]
        agent = move.agent
        quiet = (now - agent["progress_changed_at"]).total_seconds()
        payload = {
            "agent_id": agent["id"],
            "role": agent["role"],
            "task_id": agent["current_task"],
            "progress": agent["task_progress"],
            "progress_changed_at": agent["progress_changed_at"],
            "stuck_after": agent["task_stuck_after"] or role_stuck_after(agent["role"]),
            "seconds_without_progress": quiet,
        }
        events.append(
            NewEvent("monitor.agent.stuck", payload, key=f"stuck:{row.pk}", trace=move.trace)
        )
        log.warning("agent.stuck", agent_id=agent["id"], task_id=agent["current_task"])
    publish_many(events)
