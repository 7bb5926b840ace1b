"""How long notifications are kept. Imported by ``AlertingConfig.ready()``.

A notification goes only once it is finished (sent, or failed for good; a
pending one may still be retrying) and its alert is resolved: an open alert
keeps the record of how it was announced.
"""

from django.db.models import Q

from alerting.models import AlertStatus, Notification, NotificationStatus
from omoi_console.foundation.retention import RowRetention, days_kept, register

FINISHED = (NotificationStatus.SENT, NotificationStatus.FAILED)

NOTIFICATIONS = register(
    RowRetention(
        name="alert.notifications",
        model=Notification,
        age_field="created_at",
        keep=days_kept("RETAIN_NOTIFICATIONS_DAYS"),
        where=Q(status__in=FINISHED, alert__status=AlertStatus.RESOLVED),
    )
)
