"""``storm``: the watchdog paused automatic restarts of a role (``watchdog.storm.started``).

Driven by ``watchdog.storm.started`` (much of one role failed within a short
window) and resolved by ``watchdog.storm.ended`` (the role recovered and restarts
resumed), in ``alerting.handlers``. One alert per role, labelled with it and
with how many of its agents were unhealthy of how many. It uses no condition fields.
"""

from alerting.rules import register
from alerting.rules.base import RuleKind

STORM_LABELS = frozenset({"role", "unhealthy", "total"})


@register
class StormKind(RuleKind):
    name = "storm"
    label = "Remediation storm (restarts of a role paused)"
    event_driven = True

    def labels_of(self, rule) -> set[str]:
        return set(STORM_LABELS)
