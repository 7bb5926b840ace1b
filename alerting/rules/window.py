"""The rollups of a rule's metric in a window, filtered by its matchers and keyed by its labels.

Shared by the kinds that read metrics: one query over the per-minute rollups
(whole minutes: the minute still open is not rolled up yet).
"""

from datetime import datetime

from django.db.models import CharField, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce

from alerting import matchers as matcher_text
from monitoring.models import MetricRollup

GROUP_PREFIX = "g_"


def rollups(rule, start: datetime, end: datetime):
    """Rollup rows of the rule's metric in ``[start, end)`` whose series meet its matchers."""
    found = MetricRollup.objects.filter(
        series__metric=rule.metric, minute__gte=start, minute__lt=end
    )
    if rule.matchers:
        found = found.filter(
            matcher_text.series_filter(matcher_text.parse_all(rule.matchers), "series__labels")
        )
    return found.order_by()


def group_keys(rule) -> dict:
    """Annotations that extract each group_by label from the series' labels; a missing
    label is the empty value (one group with the series whose label is empty)."""
    return {
        f"{GROUP_PREFIX}{n}": Coalesce(
            KeyTextTransform(label, "series__labels"), Value(""), output_field=CharField()
        )
        for n, label in enumerate(rule.group_by or [])
    }


def labels_of_row(rule, row: dict) -> dict[str, str]:
    return {label: row[f"{GROUP_PREFIX}{n}"] or "" for n, label in enumerate(rule.group_by or [])}
