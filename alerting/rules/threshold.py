"""``threshold``: an aggregation of a metric over a window, per label group, against a value.

One query per evaluation: the window's rollups grouped by the rule's labels
and reduced in SQL (avg, min, max, sum, count), the condition applied as
HAVING, so only groups that meet it come back. ``rate`` reduces per series
first (a counter's growth over the window, per second) and adds the series of
a group; percentiles merge the minutes' sketches per group.
"""

import operator as op
from bisect import bisect_left, bisect_right
from collections import defaultdict

from django.db.models import FloatField, Max, Min, Sum
from django.db.models.functions import Cast

from alerting.models import Aggregation, Operator
from alerting.rules import register
from alerting.rules.base import Match, RuleKind
from alerting.rules.series_window import MAX_LISTED_SERIES, SeriesWindow, merge_by_group
from alerting.rules.window import group_keys, labels_of_row, rollups
from monitoring.rollups import SKETCH_RELATIVE_ACCURACY

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
# A metric and window that at least this many selections (distinct matchers and
# group_by) read in one tick is read once for them all (``SeriesWindow``). Below it,
# each selection reads its own rows in SQL: cheaper when matchers pick a few series
# out of many.
WHOLE_READ_FROM = 4
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
        sketches = self._sketches(rule, found, keys, could_meet([rule]))
        return self._matching(rule, quantiles(sketches, q))

    def evaluate_many(self, rules, now) -> dict[int, list[Match]]:
        """Rules that read the same rollups (metric, matchers, window, group_by) read them
        once: one query reduces them every way those rules ask (SQL reductions), or one
        pass merges the groups' sketches or rates; each rule then keeps the groups that
        meet its own condition. Operators keep several rules on one metric (a warning
        and a critical threshold, a mean and a p95), and fleets repeat them per queue or
        per team.

        Each way of reducing (an aggregation, a quantile) is computed once for all the
        rules that share it, and its groups are sorted by value, so a rule's condition
        is a binary search and costs what it matches, not what the read holds.

        When many selections read one metric over one window (``WHOLE_READ_FROM``), the
        metric is read once for all of them: every series reduced in one query, each
        selection made in memory (``SeriesWindow``).
        """
        shared: dict[tuple, list] = defaultdict(list)
        for rule in rules:
            family = "sql" if rule.aggregation in SQL_REDUCE else rule.aggregation
            if family in QUANTILES:
                family = "sketch"
            key = (rule.metric, tuple(rule.matchers or ()), rule.window, tuple(rule.group_by or ()))
            shared[(*key, family)].append(rule)
        windows = whole_reads(shared, now)
        found = {}
        for (metric, _, window, _, family), readers in shared.items():
            whole = windows.get((metric, window))
            if whole is None and len(readers) == 1:
                found[readers[0].pk] = self.evaluate(readers[0], now)
                continue
            if whole is None:
                reductions = self._read_together(readers, family, now)
            else:
                reductions = self._from_window(whole, readers, family)
            for rule in readers:
                found[rule.pk] = reductions[rule.aggregation].meeting(rule)
        return found

    def _read_together(self, readers, family, now) -> dict:
        lead = readers[0]
        rows = rollups(lead, now - lead.window, now)
        keys = group_keys(lead)
        names = {r.aggregation for r in readers}
        if family == "sql":
            reduce = {f"v_{agg}": SQL_REDUCE[agg]() for agg in names}
            groups = [(labels_of_row(lead, row), row) for row in grouped_rows(rows, keys, **reduce)]
            return {
                name: SortedValues((labels, row[f"v_{name}"]) for labels, row in groups)
                for name in names
            }
        if family == Aggregation.RATE:
            return {family: SortedValues(self._rates(lead, rows, keys))}
        sketches = self._sketches(lead, rows, keys, could_meet(readers))
        return {name: SortedValues(quantiles(sketches, QUANTILES[name])) for name in names}

    @staticmethod
    def _from_window(whole: SeriesWindow, readers, family) -> dict:
        groups = whole.groups(readers[0])
        names = {r.aggregation for r in readers}
        if family == "sketch":
            sketches = whole.sketches(groups, could_meet(readers))
            return {name: SortedValues(quantiles(sketches, QUANTILES[name])) for name in names}
        return {name: SortedValues(whole.reduce(groups, name)) for name in names}

    def _in_sql(self, rule, found, keys) -> list[Match]:
        reduce = SQL_REDUCE[rule.aggregation]()
        if not keys:  # one group: the whole selection
            return self._matching(
                rule, [({}, row["v"]) for row in grouped_rows(found, keys, v=reduce)]
            )
        groups = found.annotate(**keys).values(*keys).annotate(v=reduce)
        if rule.operator == Operator.NE:
            groups = groups.exclude(v=rule.threshold)
        else:
            groups = groups.filter(**{f"v__{LOOKUPS[rule.operator]}": rule.threshold})
        return [Match(labels_of_row(rule, row), row["v"]) for row in groups]

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

    def _sketches(self, rule, found, keys, could=None) -> list[tuple[dict, object]]:
        """(labels, the window's minute sketches merged) of each group that ``could``
        (given the group's min and max) still meet a condition; every group if None.

        Two reads: each series' min and max over the window (one row per series, no
        sketch), then the sketches of only the series whose group is still in play.
        """
        names = rule.group_by or []
        per_series = (
            found.annotate(**keys)
            .values_list("series_id", *keys)
            .annotate(low=Min("min"), high=Max("max"))
        )
        group_of: dict[int, tuple] = {}
        bounds: dict[tuple, list[float]] = {}
        for series_id, *values, low, high in per_series:
            key = tuple(sorted(zip(names, (value or "" for value in values), strict=True)))
            group_of[series_id] = key
            seen = bounds.get(key)
            if seen is None:
                bounds[key] = [low, high]
            else:
                seen[0], seen[1] = min(seen[0], low), max(seen[1], high)
        if could is not None:
            wanted = {key for key, (low, high) in bounds.items() if could(low, high)}
            group_of = {pk: key for pk, key in group_of.items() if key in wanted}
            if not group_of:
                return []
            if len(wanted) < len(bounds) and len(group_of) <= MAX_LISTED_SERIES:
                found = found.filter(series_id__in=list(group_of))
        merged = merge_by_group(found.values_list("series_id", "sketch"), group_of)
        return [(dict(key), sketch) for key, sketch in merged.items()]


def grouped_rows(rows, keys: dict, **reduce) -> list[dict]:
    """The rows reduced per group of ``keys``; with no keys, the whole selection is one
    group (``values()`` with no fields would group by every column: one group a row)."""
    if keys:
        return list(rows.annotate(**keys).values(*keys).annotate(**reduce))
    whole = rows.aggregate(**reduce)
    return [whole] if any(value is not None for value in whole.values()) else []


def whole_reads(shared: dict, now) -> dict[tuple, SeriesWindow]:
    """The (metric, window) pairs enough selections read to read them whole, each read."""
    selections: dict[tuple, set] = defaultdict(set)
    for metric, matchers, window, group_by, _ in shared:
        selections[(metric, window)].add((matchers, group_by))
    return {
        (metric, window): SeriesWindow(metric, now - window, now)
        for (metric, window), found in selections.items()
        if len(found) >= WHOLE_READ_FROM
    }


def could_meet(rules):
    """For percentile rules: a test on a group's (min, max) over the window that is
    False when no quantile of the group can meet any of the rules' conditions, so
    its sketches need not be merged (None: every group can, as with == and !=).

    A sketch's quantile lies within its relative accuracy of a value of the window,
    so within [min, max] widened by that share of the larger magnitude; the test
    widens by ten times the accuracy the rollups are written with. Operators set
    thresholds well above or below what most series reach, so most groups are
    settled by two numbers the rollups already hold.
    """
    if any(rule.operator in (Operator.EQ, Operator.NE) for rule in rules):
        return None
    above = min(
        (r.threshold for r in rules if r.operator in (Operator.GT, Operator.GE)), default=None
    )
    below = max(
        (r.threshold for r in rules if r.operator in (Operator.LT, Operator.LE)), default=None
    )
    slack = 10 * SKETCH_RELATIVE_ACCURACY

    def could(low: float, high: float) -> bool:
        margin = slack * max(abs(low), abs(high))
        return (above is not None and high + margin >= above) or (
            below is not None and low - margin <= below
        )

    return could


class SortedValues:
    """The groups of one reduction, sorted by value, for the rules that compare it."""

    def __init__(self, values):
        ordered = sorted(
            ((value, labels) for labels, value in values if value is not None),
            key=lambda pair: pair[0],
        )
        self.values = [value for value, _ in ordered]
        self.labels = [labels for _, labels in ordered]

    def meeting(self, rule) -> list[Match]:
        """The groups whose value meets the rule's condition (what ``meets`` keeps)."""
        low = bisect_left(self.values, rule.threshold)
        high = bisect_right(self.values, rule.threshold)
        spans = {
            Operator.GT: [(high, None)],
            Operator.GE: [(low, None)],
            Operator.LT: [(0, low)],
            Operator.LE: [(0, high)],
            Operator.EQ: [(low, high)],
            Operator.NE: [(0, low), (high, None)],
        }[rule.operator]
        return [
            Match(labels, value)
            for start, stop in spans
            for labels, value in zip(self.labels[start:stop], self.values[start:stop], strict=True)
        ]


def quantiles(sketches, q: float) -> list[tuple[dict, float | None]]:
    return [(labels, sketch.quantile(q)) for labels, sketch in sketches]
