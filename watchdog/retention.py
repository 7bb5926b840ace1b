"""How long remediation actions are kept. Imported by ``WatchdogConfig.ready()``.

Age counts from ``finished_at``, which every way an action ends sets (succeeded,
failed, escalated, skipped) and an open action (planned, running, verifying)
lacks: ``finished_at < cutoff`` never matches unfinished work, and the status
check below holds even for a row written by hand.

An action also stays while the watchdog may still read it: cooldowns and the
hourly cap count past actions, and its idempotency key (policy and triggering
event) must stay taken as long as that event could be handled again, which is
the bus's dedup window.
"""

from datetime import timedelta

from django.db.models import Q

from omoi_console.foundation.events.bus import dedup_window
from omoi_console.foundation.retention import RowRetention, days_kept, register
from watchdog.models import OPEN_ACTION_STATUSES, RemediationAction
from watchdog.services import history_window


def still_read() -> timedelta:
    return max(history_window(), dedup_window())


REMEDIATIONS = register(
    RowRetention(
        name="watchdog.actions",
        model=RemediationAction,
        age_field="finished_at",
        keep=days_kept("RETAIN_REMEDIATIONS_DAYS"),
        # Negated on purpose: "status IN (finished ones)" would tempt a planner
        # without statistics (SQLite) into the (status, verify_by) index and a
        # sort of every finished action, where the age index reads just a batch.
        where=~Q(status__in=OPEN_ACTION_STATUSES),
        floor=still_read,
    )
)
