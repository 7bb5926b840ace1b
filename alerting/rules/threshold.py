"""``threshold``: an aggregation of a metric over a window, per label group, against a value.

One query per evaluation: the window's rollups grouped by the rule's labels
and reduced in SQL (avg, min, max, sum, count), the condition applied as
HAVING, so only groups that meet it come back. ``rate`` reduces per series
first (a counter's growth over the window, per second) and adds the series of
a group; percentiles merge the minutes' sketches per group.
"""

import operator as op
from collections import defaultdict

from django.db.models import FloatField, Max, Min, Sum
from django.db.models.functions import Cast

from alerting.models import Aggregation, Operator
from alerting.rules import register
from alerting.rules.base import Match, RuleKind
from alerting.rules.window import group_keys, labels_of_row, rollups

SQL_REDUCE = {
    Aggregation.AVG: lambda: Cast(Sum("sum"), FloatField()) / Cast(Sum("count"), FloatField()),
    Aggregation.MAX: lambda: Max("max"),
    Aggregation.MIN: lambda: Min("min"),
    Aggregation.SUM: lambda: Sum("sum"),
    Aggregation.COUNT: lambda: Cast(Sum("count"), FloatField()),
}
LOOKUPS = {
    Operator.GT: "gt",
    Operator.GE: "gte",
    Operator.LT: "lt",
    Operator.LE: "lte",
    Operator.EQ: "exact",
}
COMPARE = {
    Operator.GT: op.gt,
    Operator.GE: op.ge,
    Operator.LT: op.lt,
    Operator.LE: op.le,
    Operator.EQ: op.eq,
    Operator.NE: op.ne,
}
QUANTILES = {Aggregation.P50: 0.50, Aggregation.P95: 0.95, Aggregation.P99: 0.99}


def meets(rule, value: float) -> bool:
    return COMPARE[rule.operator](value, rule.threshold)


@register
class ThresholdKind(RuleKind):
    name = "threshold"
    label = "Threshold on a metric"
    uses = frozenset(
        {"metric", "matchers", "aggregation", "window", "group_by", "operator", "threshold"}
    )
    requires = frozenset({"metric", "aggregation", "window", "operator", "threshold"})

    def evaluate(self, rule, now) -> list[Match]:
        found = rollups(rule, now - rule.window, now)
        keys = group_keys(rule)
        if rule.aggregation in SQL_REDUCE:
            return self._in_sql(rule, found, keys)
        if rule.aggregation == Aggregation.RATE:
            return self._matching(rule, self._rates(rule, found, keys))
        q = QUANTILES[rule.aggregation]
        return self._matching(rule, quantiles(self._sketches(rule, found, keys), q))

    def evaluate_many(self, rules, now) -> dict[int, list[Match]]:
        """Rules that read the same rollups (metric, matchers, window, group_by) read them
        once: one query reduces them every way those rules ask (SQL reductions), or one
        pass merges the groups' sketches or rates; each rule then keeps the groups that
        meet its own condition. Operators keep several rules on one metric (a warning
        and a critical threshold, a mean and a p95), and fleets repeat them per queue or
        per team."""
        shared: dict[tuple, list] = defaultdict(list)
        for rule in rules:
            family = "sql" if rule.aggregation in SQL_REDUCE else rule.aggregation
            if family in QUANTILES:
                family = "sketch"
            key = (rule.metric, tuple(rule.matchers or ()), rule.window, tuple(rule.group_by or ()))
            shared[(*key, family)].append(rule)
        found = {}
        for (*_, family), readers in shared.items():
            if len(readers) == 1:
                found[readers[0].pk] = self.evaluate(readers[0], now)
                continue
            lead = readers[0]
            rows = rollups(lead, now - lead.window, now)
            keys = group_keys(lead)
            if family == "sql":
                reduce = {f"v_{agg}": SQL_REDUCE[agg]() for agg in {r.aggregation for r in readers}}
                groups = list(rows.annotate(**keys).values(*keys).annotate(**reduce))
                for rule in readers:
                    values = [
                        (labels_of_row(lead, row), row[f"v_{rule.aggregation}"]) for row in groups
                    ]
                    found[rule.pk] = self._matching(rule, values)
            elif family == Aggregation.RATE:
                rates = self._rates(lead, rows, keys)
                for rule in readers:
                    found[rule.pk] = self._matching(rule, rates)
            else:
                sketches = self._sketches(lead, rows, keys)
                for rule in readers:
                    values = quantiles(sketches, QUANTILES[rule.aggregation])
                    found[rule.pk] = self._matching(rule, values)
        return found

    def _in_sql(self, rule, found, keys) -> list[Match]:
        grouped = found.annotate(**keys).values(*keys).annotate(v=SQL_REDUCE[rule.aggregation]())
        if rule.operator == Operator.NE:
            grouped = grouped.exclude(v=rule.threshold)
        else:
            grouped = grouped.filter(**{f"v__{LOOKUPS[rule.operator]}": rule.threshold})
        return [Match(labels_of_row(rule, row), row["v"]) for row in grouped]

    @staticmethod
    def _matching(rule, values) -> list[Match]:
        return [
            Match(labels, value)
            for labels, value in values
            if value is not None and meets(rule, value)
        ]

    def _rates(self, rule, found, keys) -> list[tuple[dict, float]]:
        """(labels, per-second growth over the window) of each group: per series first."""
        seconds = rule.window.total_seconds()
        per_series = (
            found.annotate(**keys).values("series_id", *keys).annotate(hi=Max("max"), lo=Min("min"))
        )
        totals: dict[tuple, float] = defaultdict(float)
        labels: dict[tuple, dict] = {}
        for row in per_series:
            group = labels_of_row(rule, row)
            key = tuple(sorted(group.items()))
            labels[key] = group
            totals[key] += max(0.0, row["hi"] - row["lo"]) / seconds
        return [(labels[key], value) for key, value in totals.items()]

    def _sketches(self, rule, found, keys) -> list[tuple[dict, object]]:
        """(labels, the window's minute sketches merged) of each group."""
        from monitoring.sketches import MergedSketch

        merged: dict[tuple, MergedSketch] = {}
        labels: dict[tuple, dict] = {}
        for row in found.annotate(**keys).values("sketch", *keys):
            group = labels_of_row(rule, row)
            key = tuple(sorted(group.items()))
            sketch = merged.get(key)
            if sketch is None:
                sketch = merged[key] = MergedSketch()
                labels[key] = group
            sketch.add_serialised(row["sketch"])
        return [(labels[key], sketch) for key, sketch in merged.items()]


def quantiles(sketches, q: float) -> list[tuple[dict, float | None]]:
    return [(labels, sketch.quantile(q)) for labels, sketch in sketches]
