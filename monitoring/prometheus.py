"""The fleet's liveness for Prometheus, read from the agents table at scrape time.

Per role and state, never per agent: a fleet of thousands stays a few dozen
series. Which agent is late is the console's question, not Prometheus's.
"""

from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from monitoring.models import Agent, AgentRole, AgentState


def fleet_metrics():
    """``agents``, ``heartbeat_age_seconds_max`` and ``heartbeats_overdue_agents``: one query."""
    now = timezone.now()
    rows = (
        Agent.objects.order_by()
        .values("role", "state")
        .annotate(
            count=Count("pk"),
            # Agents that owe a heartbeat have a deadline; FAILED and TERMINATED do not.
            oldest=Min("last_heartbeat_at", filter=Q(overdue_at__isnull=False)),
            overdue=Count("pk", filter=Q(overdue_at__lte=now)),
        )
    )
    agents = GaugeMetricFamily("agents", "Agents per role and state.", labels=["role", "state"])
    age = GaugeMetricFamily(
        "heartbeat_age_seconds_max",
        "Age of the oldest last heartbeat among the agents that owe one, per role.",
        labels=["role"],
    )
    overdue = GaugeMetricFamily(
        "heartbeats_overdue_agents",
        "Agents past their heartbeat deadline (missed at least one), per role.",
        labels=["role"],
    )
    counts = {(role, state): 0 for role in AgentRole.values for state in AgentState.values}
    oldest = dict.fromkeys(AgentRole.values)
    late = dict.fromkeys(AgentRole.values, 0)
    for row in rows:
        role = row["role"]
        counts[(role, row["state"])] = row["count"]
        late[role] = late.get(role, 0) + row["overdue"]
        if row["oldest"] is not None and (oldest.get(role) is None or row["oldest"] < oldest[role]):
            oldest[role] = row["oldest"]
    for (role, state), count in sorted(counts.items()):
        agents.add_metric([role, state], count)
    for role in sorted(late):
        overdue.add_metric([role], late[role])
        since = oldest.get(role)
        age.add_metric([role], max(0.0, (now - since).total_seconds()) if since else 0.0)
    return [agents, age, overdue]
