"""Choosing several agents at once, safely: never everything, never too many.

An empty selector once read as "every machine" and wiped a fleet. Whatever acts
on agents chosen by a filter (a role, label matchers) goes through
``select_agents``, which refuses a selector that names nothing (it would select
the whole fleet) and a selection larger than ``OMOI_WATCHDOG_MAX_SELECTION_SHARE``
of the fleet in service.
"""

from django.conf import settings

from alerting import matchers as alert_matchers
from monitoring.models import Agent, AgentRole, AgentState


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
