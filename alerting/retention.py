"""How long notifications are kept. Imported by ``AlertingConfig.ready()``.

A notification goes only once it is finished (sent, or dead; a
pending one may still be retrying) and its alert is no longer open: an open
alert keeps the record of how it was announced.
"""

from django.db.models import Q

from alerting.models import OPEN_STATUSES, Notification, NotificationStatus
from omoi_console.foundation.retention import RowRetention, days_kept, register

FINISHED = (NotificationStatus.SENT, NotificationStatus.DEAD)

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
