import django_filters

from alerting.models import OPEN_STATUSES, Alert, AlertStatus

OPEN = "open"


class AlertFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=[(OPEN, "Open (not resolved)"), *AlertStatus.choices],
        method="filter_status",
    )

    class Meta:
        model = Alert
        fields = ["status"]

    def filter_status(self, queryset, name, value):
        if value == OPEN:
            return queryset.filter(status__in=OPEN_STATUSES)
        return queryset.filter(status=value)
