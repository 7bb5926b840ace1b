"""Opening many remediations at once: what they read once for the batch, not once per action.

A mass outage hands the watchdog's handlers a batch of failures. Each action is
still opened, gated and guarded one by one under the same rules, but what those
rules read (the agents, the policies, the agents' past and open actions, their
backoff rows, the kill switch, the breakers, the storm state of each role) is
read in bulk when the batch starts and kept up to date as the batch acts, and
the events the actions publish are written with one INSERT when it ends. So a
failure costs its own writes, and the reads cost a few statements per batch
whatever its size.

Outside ``opening_together`` every accessor reads the database as before.

What is read once stays valid for the batch because the batch's transaction is
short and holds what matters: the rate limits are still spent one act at a time
with a conditional UPDATE, a backoff row that exists is still locked and read
again before a restart counts, the storm guard's row stays locked from its first
evaluation to the commit, and a breaker that opens during the batch is read
again.
"""

import contextlib
import contextvars
from collections import defaultdict
from datetime import timedelta

from django.db.models import Count

from monitoring.models import Agent, AgentCommand, AgentHealth, CommandKind, MonitorAnomaly
from omoi_console.foundation.events import NewEvent, publish_many
from omoi_console.foundation.events import publish as publish_now
from omoi_console.foundation.events.tracing import current_trace_ids
from watchdog.models import (
    OPEN_ACTION_STATUSES,
    PolicyBreaker,
    RemediationAction,
    RemediationPolicy,
    RestartBackoff,
    WatchdogSwitch,
)

HOURLY_CAP_WINDOW = timedelta(hours=1)
UNREAD = object()

_current: contextvars.ContextVar["BatchReads | None"] = contextvars.ContextVar(
    "watchdog_batch", default=None
)


class BatchReads:
    """What a batch of openings knows about its agents, read in bulk."""

    def __init__(self, agent_ids, episodes_of_alerts, now):
        ids = sorted({str(agent_id) for agent_id in agent_ids})
        self.agents = Agent.objects.in_bulk(ids)
        episodes = {episode_of_agent(agent) for agent in self.agents.values()}
        episodes |= {str(episode) for episode in episodes_of_alerts}
        self.actions_by_key = {
            action.idempotency_key: action
            for action in RemediationAction.objects.filter(
                agent_id__in=ids, episode__in=episodes
            ).select_related("policy")
        }
        self.open_by_agent: dict[str, list[int]] = defaultdict(list)
        for agent_id, pk in RemediationAction.objects.filter(
            agent_id__in=ids, status__in=OPEN_ACTION_STATUSES
        ).values_list("agent_id", "pk"):
            self.open_by_agent[agent_id].append(pk)
        self.backoffs = {
            row.agent_id: row for row in RestartBackoff.objects.filter(agent_id__in=ids)
        }
        self.restarts = dict(
            AgentCommand.objects.filter(
                agent_id__in=ids,
                kind=CommandKind.RESTART,
                serves__startswith="remediation:",
                created_at__gt=now - HOURLY_CAP_WINDOW,
            )
            .values("agent_id")
            .annotate(count=Count("id"))
            .values_list("agent_id", "count")
        )
        self.health = {
            row.pop("agent_id"): row
            for row in AgentHealth.objects.filter(agent_id__in=ids).values(
                "agent_id", "score", "anomalous", "components"
            )
        }
        self.anomalies = {}
        for row in (
            MonitorAnomaly.objects.filter(agent_id__in=ids, ended_at__isnull=True)
            .order_by("-started_at")
            .values("agent_id", "metric", "severity", "peak_score", "detector", "started_at")
        ):
            self.anomalies.setdefault(row.pop("agent_id"), row)
        self.policies: dict[str, list[RemediationPolicy]] = {}
        self.switch = UNREAD
        self.breakers: dict[int, object] = {}
        self.storm: dict[str, object] = {}
        self.events: list[NewEvent] = []


def episode_of_agent(agent: Agent) -> str:
    since = agent.unhealthy_since or agent.state_changed_at
    return since.isoformat() if since else ""


def current() -> BatchReads | None:
    return _current.get()


@contextlib.contextmanager
def opening_together(agent_ids, *, alert_ids=(), now=None):
    """Open the remediations of a batch with shared reads; publish their events at the end.

    Must run inside the transaction the actions are written in (a handler's),
    so that what is read stays consistent with what is written.
    """
    from django.utils import timezone

    if _current.get() is not None:
        yield _current.get()
        return
    reads = BatchReads(agent_ids, alert_ids, now or timezone.now())
    token = _current.set(reads)
    try:
        yield reads
        events, reads.events = reads.events, []
        publish_many(events)
    finally:
        _current.reset(token)


# --- accessors: the batch's copy when one is open, the database otherwise ---------------


def agent(agent_id: str) -> Agent | None:
    reads = current()
    if reads is not None and str(agent_id) in reads.agents:
        return reads.agents[str(agent_id)]
    return Agent.objects.filter(pk=agent_id).first()


def policies(trigger: str) -> list[RemediationPolicy]:
    reads = current()
    if reads is not None and trigger in reads.policies:
        return reads.policies[trigger]
    found = list(RemediationPolicy.objects.filter(enabled=True, trigger=trigger))
    if reads is not None:
        reads.policies[trigger] = found
    return found


def action_by_key(key: str) -> RemediationAction | None:
    reads = current()
    if reads is not None:
        return reads.actions_by_key.get(key)
    return RemediationAction.objects.filter(idempotency_key=key).first()


def opened(action: RemediationAction) -> None:
    """Tell the batch about an action it wrote, so a later copy finds it."""
    reads = current()
    if reads is not None:
        reads.actions_by_key[action.idempotency_key] = action
        reads.open_by_agent[action.agent_id].append(action.pk)


def closed(action: RemediationAction) -> None:
    reads = current()
    if reads is not None and action.pk in reads.open_by_agent.get(action.agent_id, ()):
        reads.open_by_agent[action.agent_id].remove(action.pk)


def other_open_action(action: RemediationAction) -> int | None:
    """An open action on the same agent other than ``action``, if any."""
    reads = current()
    if reads is not None:
        others = [pk for pk in reads.open_by_agent.get(action.agent_id, ()) if pk != action.pk]
        return others[0] if others else None
    return (
        RemediationAction.objects.filter(agent_id=action.agent_id, status__in=OPEN_ACTION_STATUSES)
        .exclude(pk=action.pk)
        .values_list("pk", flat=True)
        .first()
    )


def backoff(agent_id: str):
    """The agent's backoff row (unlocked), or None."""
    reads = current()
    if reads is not None:
        return reads.backoffs.get(agent_id)
    return RestartBackoff.objects.filter(agent_id=agent_id).first()


def backoff_saved(row: RestartBackoff) -> None:
    reads = current()
    if reads is not None:
        reads.backoffs[row.agent_id] = row


def restarts_in_last_hour(agent_id: str, now) -> int:
    reads = current()
    if reads is not None:
        return reads.restarts.get(agent_id, 0)
    return AgentCommand.objects.filter(
        agent_id=agent_id,
        kind=CommandKind.RESTART,
        serves__startswith="remediation:",
        created_at__gt=now - HOURLY_CAP_WINDOW,
    ).count()


def restart_queued(agent_id: str) -> None:
    reads = current()
    if reads is not None:
        reads.restarts[agent_id] = reads.restarts.get(agent_id, 0) + 1


def monitoring_reads(agent_id: str) -> tuple[dict | None, dict | None]:
    """The agent's health row and its latest open anomaly, as ``values()`` dicts."""
    reads = current()
    if reads is not None:
        return reads.health.get(agent_id), reads.anomalies.get(agent_id)
    health = (
        AgentHealth.objects.filter(agent_id=agent_id)
        .values("score", "anomalous", "components")
        .first()
    )
    anomaly = (
        MonitorAnomaly.objects.filter(agent_id=agent_id, ended_at__isnull=True)
        .order_by("-started_at")
        .values("metric", "severity", "peak_score", "detector", "started_at")
        .first()
    )
    return health, anomaly


def kill_switch() -> WatchdogSwitch | None:
    reads = current()
    if reads is not None and reads.switch is not UNREAD:
        return reads.switch
    switch = WatchdogSwitch.objects.filter(pk=WatchdogSwitch.SINGLETON, dry_run=True).first()
    if reads is not None:
        reads.switch = switch
    return switch


def remembered(memo: str, key, read):
    """``read()`` once per batch for ``key`` in the batch's ``memo`` (breakers, storm)."""
    reads = current()
    if reads is None:
        return read()
    store = getattr(reads, memo)
    if key not in store:
        store[key] = read()
    return store[key]


def forget(memo: str, key) -> None:
    reads = current()
    if reads is not None:
        getattr(reads, memo).pop(key, None)


def breaker_open_until(policy, now):
    return remembered(
        "breakers",
        policy.pk,
        lambda: (
            PolicyBreaker.objects.filter(policy=policy, open_until__gt=now)
            .values_list("open_until", flat=True)
            .first()
        ),
    )


def publish(name: str, payload: dict, *, key: str | None = None) -> None:
    """Publish now, or with the batch's other events when a batch is open."""
    reads = current()
    if reads is None:
        publish_now(name, payload, key=key)
        return
    reads.events.append(NewEvent(name, payload, key, trace=current_trace_ids()))
