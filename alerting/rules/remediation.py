"""``remediation``: the watchdog gave up on an agent (``watchdog.escalated``).

Driven by ``watchdog.escalated`` (an action failed its last step, hit the hourly
cap, or was skipped while the agent stayed unhealthy) and resolved by
``monitor.agent.recovered`` (``alerting.handlers``). Alerting knows the event by
name only: the watchdog sits above it. It uses no condition fields.
"""

from alerting.rules import register
from alerting.rules.base import RuleKind

REMEDIATION_LABELS = frozenset({"agent_id", "role", "owner", "policy"})


@register
class RemediationKind(RuleKind):
    name = "remediation"
    label = "Remediation failed"
    event_driven = True

    def labels_of(self, rule) -> set[str]:
        return set(REMEDIATION_LABELS)
