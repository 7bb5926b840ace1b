"""Every series of one metric over one window, read once for all the rules on it.

Fleets repeat a rule per queue, per team or per severity: a thousand rules on one
metric may select a hundred different subsets of its series. Read per selection,
the window's rows are scanned once per subset; read here, each series is reduced
once in one query (its sum, count, min and max over the window), and each
selection is then its matchers applied to the series' labels in memory (with the
exact-value matchers looked up in an index) and its groups reduced from those
per-series figures. Only percentile groups still go back to the database, for the
sketches of the series that can still meet a threshold.

The matchers mean here what they mean in SQL (``alerting.matchers``), and the
reductions are those of ``alerting.rules.threshold`` computed from per-series
sums instead of per-row sums.
"""

from collections import defaultdict
from datetime import datetime

from django.db.models import Max, Min, Sum

from alerting import matchers as matcher_text
from monitoring.models import MetricRollup, MetricSeries

# Series named in one query at most; beyond that all are read and the rest skipped.
MAX_LISTED_SERIES = 10_000


class SeriesWindow:
    def __init__(self, metric: str, start: datetime, end: datetime):
        self.metric, self.start, self.end = metric, start, end
        self.seconds = (end - start).total_seconds()
        rows = (
            MetricRollup.objects.filter(series__metric=metric, minute__gte=start, minute__lt=end)
            .order_by()
            .values_list("series_id", "series__fingerprint")
            .annotate(total=Sum("sum"), count=Sum("count"), low=Min("min"), high=Max("max"))
        )
        # series id -> (sum, count, min, max) over the window
        self.stats, fingerprints = {}, {}
        for pk, fingerprint, *figures in rows:
            self.stats[pk], fingerprints[pk] = figures, fingerprint
        layout = layout_of((metric, self.seconds), fingerprints)
        self.labels, self.index, self._groups = layout.labels, layout.index, layout.groups

    def select(self, texts) -> list[int]:
        """The series the matchers select (a missing label counts as empty)."""
        found = matcher_text.parse_all(list(texts))
        exact = [m for m in found if m.op == "=" and m.value != ""]
        if exact:
            pools = [self.index.get(m.label, {}).get(m.value, []) for m in exact]
            candidates = min(pools, key=len)
        else:
            candidates = list(self.labels)
        return [pk for pk in candidates if matcher_text.matches_all(found, self.labels[pk])]

    def groups(self, rule) -> list[tuple[dict, list[int]]]:
        """(group labels, its series) of each group the rule's selection makes; made once
        per selection (rules that reduce it differently share it)."""
        selection = (tuple(rule.matchers or ()), tuple(rule.group_by or ()))
        made = self._groups.get(selection)
        if made is None:
            made = self._groups[selection] = self._group(*selection)
        return made

    def _group(self, texts, names) -> list[tuple[dict, list[int]]]:
        members: dict[tuple, list[int]] = defaultdict(list)
        for pk in self.select(texts):
            labels = self.labels[pk]
            members[tuple(_text(labels.get(name)) for name in names)].append(pk)
        return [(dict(zip(names, key, strict=True)), pks) for key, pks in members.items()]

    def reduce(self, groups, aggregation: str) -> list[tuple[dict, float | None]]:
        """(labels, value) of each group for an aggregation computed from sums, counts,
        minima and maxima (avg, min, max, sum, count, rate)."""
        stats = self.stats
        values = []
        for labels, pks in groups:
            figures = [stats[pk] for pk in pks]
            if aggregation == "avg":
                count = sum(f[1] for f in figures)
                value = sum(f[0] for f in figures) / count if count else None
            elif aggregation == "max":
                value = max(f[3] for f in figures)
            elif aggregation == "min":
                value = min(f[2] for f in figures)
            elif aggregation == "sum":
                value = sum(f[0] for f in figures)
            elif aggregation == "count":
                value = float(sum(f[1] for f in figures))
            else:  # rate: a counter's growth over the window, per second, per series
                value = sum(max(0.0, f[3] - f[2]) / self.seconds for f in figures)
            values.append((labels, value))
        return values

    def sketches(self, groups, could=None) -> list[tuple[dict, object]]:
        """(labels, the window's minute sketches merged) of each group that ``could``
        (given its min and max) still meet a condition; every group if None."""
        if could is not None:
            groups = [
                (labels, pks)
                for labels, pks in groups
                if could(min(self.stats[pk][2] for pk in pks), max(self.stats[pk][3] for pk in pks))
            ]
        if not groups:
            return []
        group_of = {pk: n for n, (_, pks) in enumerate(groups) for pk in pks}
        rows = MetricRollup.objects.filter(minute__gte=self.start, minute__lt=self.end)
        if len(group_of) <= MAX_LISTED_SERIES:
            rows = rows.filter(series_id__in=list(group_of))
        else:
            rows = rows.filter(series__metric=self.metric)
        merged = merge_by_group(rows.order_by().values_list("series_id", "sketch"), group_of)
        return [(groups[n][0], sketch) for n, sketch in merged.items()]


def merge_by_group(rows, group_of: dict) -> dict:
    """(series id, sketch) rows merged into one sketch per group (``group_of``: series
    id -> group); rows of series in no group (out of play, or new since the series were
    read) are skipped."""
    from monitoring.sketches import MergedSketch

    merged: dict = {}
    for pk, blob in rows:
        group = group_of.get(pk)
        if group is None:
            continue
        sketch = merged.get(group)
        if sketch is None:
            sketch = merged[group] = MergedSketch()
        sketch.add_serialised(blob)
    return merged


class Layout:
    """The labels of one window's series, indexed by label value, and the groups each
    selection makes of them: all the same from one tick to the next while no series
    comes or goes, so a worker keeps them (``layout_of``)."""

    def __init__(self, labels: dict[int, dict]):
        self.labels = labels
        self.index: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for pk, series_labels in labels.items():
            for name, value in series_labels.items():
                self.index[name][str(value)].append(pk)
        self.groups: dict[tuple, list] = {}


# (metric, window seconds) -> (the series it was made of, by id and fingerprint; layout)
_layouts: dict[tuple, tuple[frozenset, Layout]] = {}
LAYOUTS_LIMIT = 1_000


def layout_of(window: tuple, fingerprints: dict[int, str]) -> Layout:
    """The layout of these series (series id -> fingerprint) read over ``window``: the
    one made last time if they are the same series, else a new one."""
    made_of = frozenset(fingerprints.items())
    held = _layouts.get(window)
    if held is not None and held[0] == made_of:
        return held[1]
    layout = Layout(labels_of(fingerprints))
    if len(_layouts) >= LAYOUTS_LIMIT:
        _layouts.clear()
    _layouts[window] = (made_of, layout)
    return layout


# A series' labels never change (they are what its fingerprint is made of), so a worker
# keeps them between ticks, by id and fingerprint, and reads only the series it has not
# seen. Bounded: past the limit it starts over.
_known_labels: dict[int, tuple[str, dict]] = {}
KNOWN_LABELS_LIMIT = 500_000


def labels_of(fingerprints: dict[int, str]) -> dict[int, dict]:
    """The labels of these series (series id -> fingerprint), read once per worker."""
    missing = [
        pk
        for pk, fingerprint in fingerprints.items()
        if _known_labels.get(pk, ("",))[0] != fingerprint
    ]
    if len(_known_labels) + len(missing) > KNOWN_LABELS_LIMIT:
        _known_labels.clear()
        missing = list(fingerprints)
    for start in range(0, len(missing), MAX_LISTED_SERIES):
        rows = MetricSeries.objects.filter(pk__in=missing[start : start + MAX_LISTED_SERIES])
        for pk, fingerprint, labels in rows.values_list("pk", "fingerprint", "labels"):
            _known_labels[pk] = (fingerprint, labels)
    return {
        pk: _known_labels[pk][1]
        for pk, fingerprint in fingerprints.items()
        if _known_labels.get(pk, ("",))[0] == fingerprint
    }


def _text(value) -> str:
    """A label's value as SQL reads it (``->>``): text, and empty when absent or null."""
    return "" if value is None else str(value)
