"""Composite agent health: one score in [0, 1] per agent from what its signals say.

Four components, each in [0, 1] (0 healthy, 1 as bad as it gets):

* latency: the highest detector score of the agent's ``task_latency_seconds`` series;
* errors: the highest of the ``error_rate`` detector score, the error rate itself
  and the ``task_failures_total`` detector score;
* heartbeat: the highest of missed heartbeats over the misses that make an agent
  FAILED (a FAILED agent counts 1), |clock skew| over the largest skew tolerated,
  and the ``clock_skew_seconds`` detector score;
* blocked: 1 for a STUCK agent (alive but not working), else the
  ``lock_wait_seconds`` detector score.

The score is their weighted mean. An agent becomes anomalous after
``HEALTH_CONSECUTIVE`` evaluations in a row at or above ``HEALTH_THRESHOLD``
and stops being so at the first evaluation below it; each change is one event.

The evaluation is set-based: whatever the fleet's size, it reads the agents,
one aggregate of detector scores per agent and metric, and the stored health
rows, then writes the rows that changed in one upsert and the events in one
``publish_many``. Detector rows whose last minute is older than
``HEALTH_SIGNAL_MAX_AGE_SECONDS`` are ignored: a series that stopped reporting
says nothing about the agent now.

Quarantined and terminated agents are not evaluated: they were taken out of
the fleet on purpose, so a health alarm about them would only repeat that. An
anomalous agent that leaves the fleet so has its streak and flag cleared
without a recovery event (it did not recover; its ``state_changed`` event
says what happened); once released, a quarantined agent starts a new streak.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.db.models.functions import Abs
from django.utils import timezone

from monitoring.models import Agent, AgentHealth, AgentState, SeriesDetector
from omoi_console.foundation.events import NewEvent, publish_many
from omoi_console.foundation.events.tracing import new_trace_ids

log = structlog.get_logger(__name__)

S = AgentState
COMPONENTS = ("latency", "errors", "heartbeat", "blocked")
# Agents taken out of the fleet on purpose: not evaluated.
NOT_EVALUATED = (S.QUARANTINED, S.TERMINATED)
LATENCY = "task_latency_seconds"
ERROR_RATE = "error_rate"
FAILURES = "task_failures_total"
CLOCK_SKEW = "clock_skew_seconds"
LOCK_WAIT = "lock_wait_seconds"
SIGNALS = (LATENCY, ERROR_RATE, FAILURES, CLOCK_SKEW, LOCK_WAIT)
ANOMALOUS = "monitor.agent.health_anomalous"
RECOVERED = "monitor.agent.health_recovered"
# What a change of health writes (besides ``evaluated_at``).
STORED_FIELDS = ("score", "components", "streak", "anomalous", "anomalous_since")
# Scores and components are kept to this many decimals: enough to read, and a
# flicker in the last digits of a float is not a change worth a write.
DECIMALS = 4
# The advisory lock of the evaluation on PostgreSQL: any key every worker shares.
EVALUATION_LOCK = 0x6F6D6F69_6865616C  # "omoiheal"


@dataclass(frozen=True)
class HealthPolicy:
    """The weights, threshold and streak length in force (from settings)."""

    weights: dict[str, float]
    threshold: float
    consecutive: int
    max_clock_skew: float
    signal_max_age: float

    @classmethod
    def current(cls) -> "HealthPolicy":
        return cls(
            weights=dict(settings.HEALTH_WEIGHTS),
            threshold=settings.HEALTH_THRESHOLD,
            consecutive=settings.HEALTH_CONSECUTIVE,
            max_clock_skew=settings.HEALTH_MAX_CLOCK_SKEW_SECONDS,
            signal_max_age=settings.HEALTH_SIGNAL_MAX_AGE_SECONDS,
        )

    def score(self, components: dict[str, float]) -> float:
        total = sum(self.weights[name] for name in COMPONENTS)
        weighted = sum(self.weights[name] * components[name] for name in COMPONENTS)
        return round(weighted / total, DECIMALS)

    def as_dict(self) -> dict:
        return {
            "weights": self.weights,
            "threshold": self.threshold,
            "consecutive": self.consecutive,
            "max_clock_skew_seconds": self.max_clock_skew,
        }


@dataclass
class Evaluation:
    """What one evaluation did: agents scored, rows written, transitions."""

    agents: int = 0
    written: int = 0
    became_anomalous: int = 0
    recovered: int = 0


def clip(value: float | None) -> float:
    """``value`` within [0, 1]; missing (or NaN) is 0."""
    if value is None or value != value:
        return 0.0
    return min(1.0, max(0.0, float(value)))


def components_of(agent: dict, signals: dict, policy: HealthPolicy) -> dict[str, float]:
    """The four components of one agent (a row of ``agents_in_scope``) from its signals.

    ``signals`` maps a metric to ``(highest detector score, highest |value|)``
    over the agent's series of that metric.
    """

    def score(metric: str) -> float:
        return clip(signals.get(metric, (0.0, None))[0])

    def value(metric: str) -> float | None:
        return signals.get(metric, (0.0, None))[1]

    if agent["state"] == S.FAILED:
        missed = 1.0
    else:
        missed = clip(agent["missed_heartbeats"] / settings.HEARTBEAT_FAILED_AFTER_MISSES)
    skew = value(CLOCK_SKEW)
    skewed = clip(skew / policy.max_clock_skew) if skew is not None else 0.0
    parts = {
        "latency": score(LATENCY),
        "errors": max(score(ERROR_RATE), clip(value(ERROR_RATE)), score(FAILURES)),
        "heartbeat": max(missed, skewed, score(CLOCK_SKEW)),
        "blocked": 1.0 if agent["state"] == S.STUCK else score(LOCK_WAIT),
    }
    return {name: round(part, DECIMALS) for name, part in parts.items()}


def agents_in_scope():
    return Agent.objects.exclude(state__in=NOT_EVALUATED).order_by()


def latest_signals(now: datetime, policy: HealthPolicy) -> dict[str, dict]:
    """Per agent and metric, the highest detector score and |last value|: one aggregate."""
    fresh_since = now - timedelta(seconds=policy.signal_max_age)
    rows = (
        SeriesDetector.objects.filter(series__metric__in=SIGNALS, minute__gte=fresh_since)
        .exclude(series__agent_id="")
        .values("series__agent_id", "series__metric")
        .annotate(top_score=Max("score"), top_value=Max(Abs("value")))
        .order_by()
    )
    signals: dict[str, dict] = {}
    for row in rows:
        agent_signals = signals.setdefault(row["series__agent_id"], {})
        agent_signals[row["series__metric"]] = (row["top_score"], row["top_value"])
    return signals


def evaluate_health(now: datetime | None = None) -> Evaluation:
    """Score every agent of the fleet, move streaks and flags, publish each change once.

    Three reads whatever the fleet's size (agents, detector scores, health
    rows), outside any transaction: on SQLite even an empty one takes the write
    lock. Only rows whose score, components, streak or flag changed are
    written, in one upsert beside one ``publish_many``, so a steady fleet costs
    the reads alone and ``evaluated_at`` is when an agent's health last changed.
    (SQLite binds at most 999 parameters a statement: there the upsert comes in
    chunks of 142 rows.)
    """
    now = now or timezone.now()
    policy = HealthPolicy.current()
    result = Evaluation()
    with evaluation_claim() as claimed:
        if not claimed:
            log.info("health.evaluation_skipped", reason="another evaluation is running")
            return result
        agents = list(agents_in_scope().values("id", "role", "state", "missed_heartbeats"))
        signals = latest_signals(now, policy)
        stored = {row.agent_id: row for row in stored_health()}
        changed, events = [], []
        for agent in agents:
            components = components_of(agent, signals.get(agent["id"], {}), policy)
            before = stored.pop(agent["id"], None)
            after, event = _next_health(agent, before, components, policy, now)
            if event is not None:
                events.append(event)
            if before is None or _differs(before, after):
                changed.append(after)
        # What is left are agents out of the fleet (quarantined, terminated) with a
        # streak: it ends there, without an event (their state change says why).
        for row in stored.values():
            row.streak, row.anomalous, row.anomalous_since, row.evaluated_at = 0, False, None, now
            changed.append(row)
        if changed or events:
            with transaction.atomic():
                _write(changed)
                publish_many(events)
    result.agents, result.written = len(agents), len(changed)
    result.became_anomalous = sum(event.name == ANOMALOUS for event in events)
    result.recovered = len(events) - result.became_anomalous
    if events:
        log.info(
            "health.evaluated",
            agents=result.agents,
            anomalous=result.became_anomalous,
            recovered=result.recovered,
        )
    return result


@contextmanager
def evaluation_claim():
    """Whether this process may evaluate now: on PostgreSQL one evaluation at a time
    across workers (a second one skips its turn rather than count a streak twice).
    Elsewhere there is one process, the embedded ticker."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [EVALUATION_LOCK])
        claimed = cursor.fetchone()[0]
    try:
        yield claimed
    finally:
        if claimed:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [EVALUATION_LOCK])


def stored_health():
    """Health rows of the agents evaluated, and of those out of the fleet with a streak."""
    return AgentHealth.objects.filter(
        ~Q(agent__state__in=NOT_EVALUATED) | Q(streak__gt=0)
    ).order_by()


def _next_health(agent, before, components, policy, now) -> tuple[AgentHealth, NewEvent | None]:
    """The agent's health after this evaluation, and the event of its transition if any."""
    score = policy.score(components)
    streak = before.streak if before is not None else 0
    anomalous = before.anomalous if before is not None else False
    since = before.anomalous_since if before is not None else None
    event = None
    if score >= policy.threshold:
        streak += 1
        if not anomalous and streak >= policy.consecutive:
            anomalous, since = True, now
            event = _event(
                ANOMALOUS,
                agent,
                {"score": score, "components": components},
                key=f"health_anomalous:{agent['id']}:{now.isoformat()}",
            )
    else:
        streak = 0
        if anomalous:
            lasted = (now - since).total_seconds() if since else 0.0
            event = _event(
                RECOVERED,
                agent,
                {"score": score, "anomalous_seconds": lasted},
                # One recovery per episode, however many evaluators see it.
                key=f"health_recovered:{agent['id']}:{since.isoformat() if since else ''}",
            )
            anomalous, since = False, None
    after = AgentHealth(
        agent_id=agent["id"],
        score=score,
        components=components,
        streak=streak,
        anomalous=anomalous,
        anomalous_since=since,
        evaluated_at=now,
    )
    return after, event


def _event(name: str, agent: dict, fields: dict, *, key: str) -> NewEvent:
    payload = {"agent_id": agent["id"], "role": agent["role"], **fields}
    trace = new_trace_ids("monitoring.agent_health", agent_id=agent["id"])
    level = log.warning if name == ANOMALOUS else log.info
    level(name.removeprefix("monitor."), agent_id=agent["id"], score=fields["score"])
    return NewEvent(name, payload, key=key, trace=trace)


def _differs(before: AgentHealth, after: AgentHealth) -> bool:
    return any(getattr(before, name) != getattr(after, name) for name in STORED_FIELDS)


def _write(rows: list[AgentHealth]) -> None:
    """New and changed rows in one upsert (chunked only where the database binds few
    parameters a statement)."""
    if rows:
        AgentHealth.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["agent"],
            update_fields=[*STORED_FIELDS, "evaluated_at"],
        )


def anomalous_agents():
    """Health rows of the agents that are anomalous now, worst first.

    The seam for alerting: a rule on anomalous agents reads this (or listens
    for ``monitor.agent.health_anomalous`` / ``health_recovered``).
    """
    return (
        AgentHealth.objects.filter(anomalous=True)
        .exclude(agent__state__in=NOT_EVALUATED)
        .select_related("agent")
        .order_by("-score", "agent_id")
    )
