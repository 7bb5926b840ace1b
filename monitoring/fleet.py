"""The fleet at a glance: agents per state and role, and how many of the live ones are healthy."""

from dataclasses import dataclass

from django.db.models import Count

from monitoring.models import HEALTHY_STATES, Agent, AgentRole, AgentState


@dataclass(frozen=True)
class FleetSummary:
    agents: int
    by_state: dict[str, int]
    by_role: dict[str, int]
    availability: float | None


def fleet_summary() -> FleetSummary:
    """Every registered agent counted by state and by role (zeros included), and the
    availability: the share of agents not terminated that are healthy (idle or
    running), or None when no agent is live. One query."""
    rows = Agent.objects.order_by().values_list("state", "role").annotate(n=Count("id"))
    by_state = {state.value: 0 for state in AgentState}
    by_role = {role.value: 0 for role in AgentRole}
    for state, role, count in rows:
        by_state[state] = by_state.get(state, 0) + count
        by_role[role] = by_role.get(role, 0) + count
    live = sum(by_state.values()) - by_state[AgentState.TERMINATED]
    healthy = sum(by_state[state] for state in HEALTHY_STATES)
    return FleetSummary(
        agents=sum(by_state.values()),
        by_state=by_state,
        by_role=by_role,
        availability=healthy / live if live else None,
    )
