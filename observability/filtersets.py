import django_filters
from django import forms
from django.core.validators import RegexValidator

from observability.models import LogRecord
from omoi_console.foundation.api.fields import BIGINT_MAX

TRACE_ID = r"[0-9a-f]{32}"
LEVELS = ("debug", "info", "warning", "error", "critical")


class IdFilter(django_filters.NumberFilter):
    """A whole number: the ids of alerts and actions, stored in log lines as text."""

    field_class = forms.IntegerField


class LogRecordFilterSet(django_filters.FilterSet):
    """Stored log lines by what they are about; ``level`` is the lowest level listed."""

    trace_id = django_filters.CharFilter(
        validators=[RegexValidator(f"^{TRACE_ID}$", "A trace id is 32 lowercase hex digits.")]
    )
    agent_id = django_filters.CharFilter(max_length=64)
    alert_id = IdFilter(min_value=1, max_value=BIGINT_MAX, method="filter_id")
    action_id = IdFilter(min_value=1, max_value=BIGINT_MAX, method="filter_id")
    level = django_filters.ChoiceFilter(
        choices=[(level, level) for level in LEVELS], method="filter_level"
    )
    since = django_filters.IsoDateTimeFilter(field_name="at", lookup_expr="gte")

    class Meta:
        model = LogRecord
        fields = ["trace_id", "agent_id", "alert_id", "action_id", "level", "since"]

    def filter_id(self, queryset, name, value):
        return queryset.filter(**{name: str(value)})

    def filter_level(self, queryset, name, value):
        return queryset.filter(level__in=LEVELS[LEVELS.index(value) :])
