"""``anomaly``: series with an open anomaly (``monitor_anomalies``), per label group.

Optionally limited to a metric and to series meeting the matchers; the value is
the highest peak score in the group. ``min_severity`` leaves out anomalies of
a lower severity.
"""

from django.db.models import Max
from django.db.models.fields.json import KeyTextTransform

from alerting import matchers as matcher_text
from alerting.rules import register
from alerting.rules.base import Match, Param, RuleKind
from monitoring.models import MonitorAnomaly, Severity

SEVERITIES = [severity.value for severity in Severity]


def check_severity(value) -> None:
    if value not in SEVERITIES:
        raise ValueError(f"one of {', '.join(SEVERITIES)}")


@register
class AnomalyKind(RuleKind):
    name = "anomaly"
    label = "Open anomaly on a metric"
    uses = frozenset({"metric", "matchers", "group_by"})
    params = {
        "min_severity": Param("The lowest anomaly severity that counts.", check_severity),
    }

    def evaluate(self, rule, now) -> list[Match]:
        found = MonitorAnomaly.objects.filter(ended_at__isnull=True, started_at__lte=now)
        if rule.metric:
            found = found.filter(metric=rule.metric)
        if rule.matchers:
            found = found.filter(
                matcher_text.series_filter(matcher_text.parse_all(rule.matchers), "series__labels")
            )
        lowest = (rule.params or {}).get("min_severity")
        if lowest:
            found = found.filter(severity__in=SEVERITIES[SEVERITIES.index(lowest) :])
        keys = {
            f"g_{n}": KeyTextTransform(label, "series__labels")
            for n, label in enumerate(rule.group_by)
        }
        grouped = found.order_by().annotate(**keys).values(*keys).annotate(v=Max("peak_score"))
        return [
            Match({label: row[f"g_{n}"] or "" for n, label in enumerate(rule.group_by)}, row["v"])
            for row in grouped
        ]
