"""How long finished events are kept. Imported by ``OmoiConsoleConfig.ready()``.

Only processed and dead events go, never a pending one whatever its age: the
sweeper still owes it a delivery. Their receipts go with them, deleted first in
the same batch (the receipt's foreign key cascades). Neither kind goes before
the dedup window has passed, so a repeated publish of a key still finds it.
"""

from django.db.models import Q

from omoi_console.foundation.events.bus import dedup_window
from omoi_console.foundation.retention import RowRetention, days_kept, register
from omoi_console.models import Event, EventStatus

PROCESSED_EVENTS = register(
    RowRetention(
        name="events.processed",
        model=Event,
        age_field="occurred_at",
        keep=days_kept("RETAIN_PROCESSED_EVENTS_DAYS"),
        where=Q(status=EventStatus.PROCESSED),
        floor=dedup_window,
    )
)

DEAD_EVENTS = register(
    RowRetention(
        name="events.dead",
        model=Event,
        age_field="occurred_at",
        keep=days_kept("RETAIN_DEAD_EVENTS_DAYS"),
        where=Q(status=EventStatus.DEAD),
        floor=dedup_window,
    )
)
