"""``agent``: agents in given states, or whose composite health is anomalous, one alert each.

``states`` lists agent states (e.g. ``["failed"]``); ``reported`` keeps only
agents that reported the state themselves (no missed heartbeat), which tells
"the agent says it failed" from "the agent went silent"; ``health_anomalous``
selects agents whose composite health is anomalous. Alerts carry the agent's
id, role and owner, so routes can send each team its own agents' alerts.
"""

from alerting.rules import register
from alerting.rules.base import Match, Param, RuleKind
from monitoring.models import Agent, AgentState

STATES = [state.value for state in AgentState]
AGENT_LABELS = ("agent_id", "role", "owner")


def check_states(value) -> None:
    if not isinstance(value, list) or not value or any(v not in STATES for v in value):
        raise ValueError(f"a non-empty list of agent states: {', '.join(STATES)}")


def check_flag(value) -> None:
    if not isinstance(value, bool):
        raise ValueError("true or false")


@register
class AgentKind(RuleKind):
    name = "agent"
    label = "Agent state or health"
    params = {
        "states": Param('Agent states that match, e.g. ["failed"].', check_states),
        "reported": Param("Only agents that reported the state themselves.", check_flag),
        "health_anomalous": Param("Agents whose composite health is anomalous.", check_flag),
    }

    def labels_of(self, rule) -> set[str]:
        return set(AGENT_LABELS)

    def clean(self, rule) -> dict[str, list[str]]:
        params = rule.params or {}
        if not params.get("states") and not params.get("health_anomalous"):
            return {"params": ["Give states, or health_anomalous: true."]}
        return {}

    def evaluate(self, rule, now) -> list[Match]:
        params = rule.params or {}
        found = Agent.objects.exclude(state=AgentState.TERMINATED)
        if params.get("states"):
            found = found.filter(state__in=params["states"])
        if params.get("reported"):
            found = found.filter(missed_heartbeats=0)
        if params.get("health_anomalous"):
            found = found.filter(health__anomalous=True)
        rows = found.order_by().values("id", "role", "owner")
        return [
            Match({"agent_id": row["id"], "role": row["role"], "owner": row["owner"]})
            for row in rows
        ]
