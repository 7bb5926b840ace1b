"""``heartbeat``: an agent stopped sending heartbeats (monitoring moved it to FAILED).

Driven by ``monitor.agent.heartbeat_lost`` and resolved by ``monitor.agent.recovered``
(``alerting.handlers``), so the alert fires the moment monitoring decides, not
at the next evaluation. It uses no condition fields.
"""

from alerting.rules import register
from alerting.rules.base import RuleKind

AGENT_LABELS = frozenset({"agent_id", "role", "owner"})


@register
class HeartbeatKind(RuleKind):
    name = "heartbeat"
    label = "Heartbeat lost"
    event_driven = True

    def labels_of(self, rule) -> set[str]:
        return set(AGENT_LABELS)
