"""How long remediation actions are kept. Imported by ``WatchdogConfig.ready()``.

An action goes only once finished (a started one still awaits its verification),
and never while the watchdog may still read it: cooldowns and the hourly cap
count past actions, and the idempotency key (policy and triggering event) must
stay taken as long as that event could be handled again, which is the bus's
dedup window.
"""

from datetime import timedelta

from django.db.models import Q

from omoi_console.foundation.events.bus import dedup_window
from omoi_console.foundation.retention import RowRetention, days_kept, register
from watchdog.models import ActionStatus, RemediationAction
from watchdog.services import history_window

FINISHED = tuple(status for status in ActionStatus if status != ActionStatus.STARTED)


def still_read() -> timedelta:
    return max(history_window(), dedup_window())


REMEDIATIONS = register(
    RowRetention(
        name="watchdog.actions",
        model=RemediationAction,
        age_field="started_at",
        keep=days_kept("RETAIN_REMEDIATIONS_DAYS"),
        where=Q(status__in=FINISHED),
        floor=still_read,
    )
)
