import django_filters

from alerting.models import (
    OPEN_STATUSES,
    Alert,
    AlertStatus,
    Notification,
    NotificationKind,
    NotificationStatus,
)

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


class NotificationFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=NotificationStatus.choices)
    kind = django_filters.ChoiceFilter(choices=NotificationKind.choices)
    channel = django_filters.CharFilter(max_length=32)
    receiver = django_filters.CharFilter(field_name="receiver__name", max_length=100)
    alert = django_filters.NumberFilter(field_name="alert_id", min_value=1)

    class Meta:
        model = Notification
        fields = ["status", "kind", "channel", "receiver", "alert"]
