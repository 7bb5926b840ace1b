"""How long notifications are kept. Imported by ``AlertingConfig.ready()``.

A notification goes only once it is finished (sent, dead or cancelled; a
pending one may still be retrying) and its alert is no longer open: an open
alert keeps the record of how it was announced.
"""

from django.db.models import Q

from alerting.models import OPEN_STATUSES, AlertGroup, Notification, NotificationStatus
from omoi_console.foundation.retention import RowRetention, days_kept, register

FINISHED = (NotificationStatus.SENT, NotificationStatus.DEAD, NotificationStatus.CANCELLED)

NOTIFICATIONS = register(
    RowRetention(
        name="alert.notifications",
        model=Notification,
        age_field="created_at",
        keep=days_kept("RETAIN_NOTIFICATIONS_DAYS"),
        # The alert's side is negated on purpose: "alert status = resolved" would
        # tempt a planner without statistics (SQLite) to start from the alerts'
        # status index and sort every resolved alert's notifications, where the
        # age index reads just a batch and looks each alert up by its key.
        where=Q(status__in=FINISHED) & ~Q(alert__status__in=OPEN_STATUSES),
    )
)

# A group goes once nothing waits in it and no notification it made is kept; one
# that comes back starts over with its group_wait, as Alertmanager's would.
ALERT_GROUPS = register(
    RowRetention(
        name="alert.groups",
        model=AlertGroup,
        age_field="created_at",
        keep=days_kept("RETAIN_NOTIFICATIONS_DAYS"),
        where=Q(flush_at__isnull=True, repeat_at__isnull=True, notifications__isnull=True),
    )
)
