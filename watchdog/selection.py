"""Choosing several agents at once, safely: never everything, never too many.

An empty selector once read as "every machine" and wiped a fleet. Whatever acts
on agents chosen by a filter (a role, label matchers) goes through
``select_agents``, which refuses a selector that names nothing (it would select
the whole fleet) and a selection larger than ``OMOI_WATCHDOG_MAX_SELECTION_SHARE``
of the fleet in service.
"""

from django.conf import settings
from django.db.models import Case, Exists, IntegerField, OuterRef, Q, Value, When

from alerting import matchers as alert_matchers
from monitoring.models import Agent, AgentCommand, AgentRole, AgentState, CommandKind, CommandStatus


class SelectionRefused(ValueError):
    """The selector is empty or selects too much of the fleet; the message says which."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def select_agents(*, role: str = "", matchers=None) -> list[Agent]:
    """The agents in service of ``role`` whose labels meet every matcher.

    Raises ``SelectionRefused`` for an empty selector, an unknown role, bad
    matchers, or a selection over the allowed share of the fleet. An empty
    result is an empty list: nothing selected, nothing to act on.
    """
    matchers = matchers or []
    if not role and not matchers:
        raise SelectionRefused(
            "matchers", "an empty selector selects every agent: name a role or label matchers"
        )
    if role and role not in AgentRole.values:
        raise SelectionRefused("role", f"one of {', '.join(AgentRole.values)}")
    try:
        parsed = alert_matchers.parse_all(matchers)
    except ValueError as exc:
        raise SelectionRefused("matchers", str(exc)) from None
    fleet = Agent.objects.exclude(state=AgentState.TERMINATED)
    candidates = fleet.filter(role=role) if role else fleet
    selected = [
        agent for agent in candidates if alert_matchers.matches_all(parsed, agent.labels or {})
    ]
    total = fleet.count()
    share = settings.WATCHDOG_MAX_SELECTION_SHARE
    if selected and len(selected) > share * total:
        raise SelectionRefused(
            "matchers",
            f"the selector takes {len(selected)} of {total} agents, more than "
            f"{share:.0%} of the fleet at once: narrow it",
        )
    return selected


# --- one agent to take over a task ------------------------------------------------------

# A command still on its way (or obeyed) keeps its agent from taking a task over.
LIVE_COMMAND_STATUSES = (CommandStatus.QUEUED, CommandStatus.DELIVERED)
# How many locked candidates a claim checks again before it gives up.
CLAIM_TRIES = 10


def failover_candidates(source: Agent, now):
    """The agents that may take over ``source``'s task, best first; one role, never all.

    Same role, not the source, healthy and free: idle first, then running with
    no task; never one being drained (a drain not followed by a restart) nor
    one already promised another task (a ``take_task`` still on its way).
    Ties go to the id, so the choice is the same every time it is asked.
    """
    if not source.role:
        return Agent.objects.none()
    draining = AgentCommand.objects.filter(
        agent=OuterRef("pk"),
        kind=CommandKind.DRAIN,
        status__in=(*LIVE_COMMAND_STATUSES, CommandStatus.ACKED),
    ).exclude(
        Exists(
            AgentCommand.objects.filter(
                agent=OuterRef("agent"),
                kind=CommandKind.RESTART,
                created_at__gt=OuterRef("created_at"),
            )
        )
    )
    promised = AgentCommand.objects.filter(
        agent=OuterRef("pk"), kind=CommandKind.TAKE_TASK, status__in=LIVE_COMMAND_STATUSES
    ).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    free = Q(state=AgentState.IDLE) | Q(state=AgentState.RUNNING, current_task="")
    return (
        Agent.objects.filter(free, role=source.role)
        .exclude(pk=source.pk)
        .exclude(Exists(draining))
        .exclude(Exists(promised))
        .annotate(
            preference=Case(
                When(state=AgentState.IDLE, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .order_by("preference", "id")
    )


def failover_target(source: Agent, now, *, claim: bool = False) -> Agent | None:
    """The agent to take ``source``'s task, or None when no agent fits.

    With ``claim`` (inside the transaction that hands the task over), the row is
    locked, rows other workers hold are skipped, and the locked agent is checked
    again by a fresh statement: a worker that committed its promise just before
    the lock was taken is seen then. So two failovers running at once never
    promise one agent two tasks. Without ``claim``, a plain read for plans.
    """
    candidates = failover_candidates(source, now)
    if not claim:
        return candidates.first()
    passed = []
    for _ in range(CLAIM_TRIES):
        target = (
            candidates.exclude(pk__in=passed)
            .select_for_update(skip_locked=True, of=("self",))
            .first()
        )
        if target is None or failover_candidates(source, now).filter(pk=target.pk).exists():
            return target
        passed.append(target.pk)
    return None
