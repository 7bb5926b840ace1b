"""``absent``: label groups of a metric that sent samples recently but none in the window.

"Recently" is ``lookback`` seconds (default an hour): a group that has been
silent for longer is forgotten rather than alerted on for ever. The value is
the seconds since the group's last minute with samples.
"""

from datetime import timedelta

from django.db.models import Max

from alerting.rules import register
from alerting.rules.base import Match, Param, RuleKind
from alerting.rules.window import group_keys, labels_of_row, rollups

DEFAULT_LOOKBACK = 3600


def check_lookback(value) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 60 <= value <= 7 * 86400
    ):
        raise ValueError("seconds, 60 to 604800")


@register
class AbsentKind(RuleKind):
    name = "absent"
    label = "Series gone silent"
    uses = frozenset({"metric", "matchers", "window", "group_by"})
    requires = frozenset({"metric", "window"})
    params = {
        "lookback": Param(
            "Seconds back in which a group must have sent something.", check_lookback
        ),
    }

    def clean(self, rule) -> dict[str, list[str]]:
        lookback = (rule.params or {}).get("lookback", DEFAULT_LOOKBACK)
        if (
            rule.window
            and isinstance(lookback, int | float)
            and rule.window.total_seconds() >= lookback
        ):
            return {"window": ["The window must be shorter than the lookback."]}
        return {}

    def evaluate(self, rule, now) -> list[Match]:
        lookback = timedelta(seconds=(rule.params or {}).get("lookback", DEFAULT_LOOKBACK))
        keys = group_keys(rule)
        grouped = (
            rollups(rule, now - lookback, now)
            .annotate(**keys)
            .values(*keys)
            .annotate(last=Max("minute"))
            .filter(last__lt=now - rule.window)
        )
        return [
            Match(labels_of_row(rule, row), (now - row["last"]).total_seconds()) for row in grouped
        ]
