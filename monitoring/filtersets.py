import django_filters
from django import forms
from django.db.models.fields.json import KeyTransform
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from monitoring import catalog
from monitoring.anomalies import active_between
from monitoring.models import (
    AGENT_ID_PATTERN,
    Agent,
    AgentHealth,
    AgentRole,
    AgentState,
    AnomalyDirection,
    MetricSeries,
    MonitorAnomaly,
    Severity,
)
from omoi_console.foundation.labels import LABEL_NAME, LABEL_NAME_RULE, storable

MAX_LABEL_MATCHERS = 8


class AgentFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=AgentState.choices)
    role = django_filters.ChoiceFilter(choices=AgentRole.choices)

    class Meta:
        model = Agent
        fields = ["state", "role"]


class LabelMatchersField(forms.Field):
    """``label=name:value``, repeatable: a list of (name, value), each one required to match."""

    widget = forms.SelectMultiple

    def to_python(self, value):
        if not value:
            return []
        if len(value) > MAX_LABEL_MATCHERS:
            raise forms.ValidationError(f"At most {MAX_LABEL_MATCHERS} label matchers.")
        matchers = []
        for matcher in value:
            name, colon, text = matcher.partition(":")
            if not colon or not storable(matcher) or not LABEL_NAME.fullmatch(name):
                raise forms.ValidationError(
                    f"A label matcher is name:value, where names are {LABEL_NAME_RULE}."
                )
            if len(text) > 200:
                raise forms.ValidationError("A label value is at most 200 characters.")
            matchers.append((name, text))
        return matchers


@extend_schema_field(serializers.ListField(child=serializers.CharField()))
class LabelMatchersFilter(django_filters.Filter):
    field_class = LabelMatchersField

    def filter(self, qs, value):
        for number, (name, text) in enumerate(value or []):
            # One key, taken literally: a label called "contains" or "a__b" is a
            # key of the labels, never a lookup or a path into them.
            alias = f"label_{number}"
            qs = qs.alias(**{alias: KeyTransform(name, "labels")}).filter(**{alias: text})
        return qs


class MetricNameFilter(django_filters.ChoiceFilter):
    """A metric of the catalogue; its choices are read when a request comes, after every
    app has declared its metrics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, choices=self.catalogue_choices, **kwargs)

    @staticmethod
    def catalogue_choices():
        return [(spec.name, spec.name) for spec in catalog.ordered()]


class AgentIdField(forms.RegexField):
    def __init__(self, **kwargs):
        super().__init__(regex=rf"\A{AGENT_ID_PATTERN}\Z", max_length=64, **kwargs)


class AgentIdFilter(django_filters.CharFilter):
    field_class = AgentIdField


class WholeNumberFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField


class SeriesFilterSet(django_filters.FilterSet):
    metric = MetricNameFilter(field_name="metric")
    agent = AgentIdFilter(field_name="agent_id")
    label = LabelMatchersFilter(label="name:value, repeatable; every one must match")

    class Meta:
        model = MetricSeries
        fields = ["metric", "agent", "label"]


class AnomalyFilterSet(django_filters.FilterSet):
    metric = MetricNameFilter(field_name="metric")
    agent = AgentIdFilter(field_name="agent_id")
    series = WholeNumberFilter(field_name="series_id", min_value=1, max_value=2**63 - 1)
    severity = django_filters.ChoiceFilter(choices=Severity.choices)
    direction = django_filters.ChoiceFilter(choices=AnomalyDirection.choices)
    detector = django_filters.CharFilter(max_length=64)
    open = django_filters.ChoiceFilter(
        choices=[("true", "Open"), ("false", "Ended")],
        method="filter_open",
        label="Only open (true) or only ended (false)",
    )
    since = django_filters.IsoDateTimeFilter(method="filter_window", label="Open at or after")
    until = django_filters.IsoDateTimeFilter(method="filter_window", label="Started before")

    class Meta:
        model = MonitorAnomaly
        fields = ["metric", "agent", "series", "severity", "direction", "detector", "open"]

    def filter_open(self, queryset, name, value):
        return queryset.filter(ended_at__isnull=value == "true")

    def filter_window(self, queryset, name, value):
        since = value if name == "since" else None
        until = value if name == "until" else None
        return queryset.filter(active_between(since, until))


class ScoreFilter(django_filters.NumberFilter):
    """A finite number from 0 to 1 (a float field refuses NaN and infinities)."""

    field_class = forms.FloatField


class AgentHealthFilterSet(django_filters.FilterSet):
    anomalous = django_filters.ChoiceFilter(
        choices=[("true", "Anomalous"), ("false", "Not anomalous")],
        method="filter_anomalous",
        label="Only anomalous agents (true) or only the others (false)",
    )
    role = django_filters.ChoiceFilter(field_name="agent__role", choices=AgentRole.choices)
    min_score = ScoreFilter(
        field_name="score", lookup_expr="gte", min_value=0, max_value=1, label="Score at least"
    )

    class Meta:
        model = AgentHealth
        fields = ["anomalous", "role", "min_score"]

    def filter_anomalous(self, queryset, name, value):
        return queryset.filter(anomalous=value == "true")
