"""How long the console keeps its own spans and log lines; imported by the app's ``ready()``.

Both go by age (``TRACE_STORE_DAYS``, ``LOG_STORE_DAYS``) and by count
(``TRACE_STORE_MAX_SPANS``, ``LOG_STORE_MAX_LINES``): a burst that writes more
rows than the cap in a day loses its oldest rows at the next prune, not days later.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from observability.models import LogRecord, SpanRecord
from omoi_console.foundation.retention import RowRetention, days_kept, register


@dataclass(frozen=True)
class CappedRowRetention(RowRetention):
    """RowRetention that also removes whatever is older than the newest ``max_rows()`` rows."""

    max_rows: Callable[[], int] = lambda: 0

    def cutoff(self, now: datetime) -> datetime | None:
        by_age = super().cutoff(now)
        cap = self.max_rows()
        if not cap:
            return by_age
        # The cap-th newest row, read backwards along the age index.
        newest = self.model._base_manager.order_by(f"-{self.age_field}")
        kept = newest.values_list(self.age_field, flat=True)[cap - 1 : cap]
        by_count = next(iter(kept), None)
        if by_count is None:
            return by_age
        return by_count if by_age is None else max(by_age, by_count)


SPANS = register(
    CappedRowRetention(
        name="observability.spans",
        model=SpanRecord,
        age_field="started_at",
        keep=days_kept("TRACE_STORE_DAYS"),
        max_rows=lambda: settings.TRACE_STORE_MAX_SPANS,
    )
)

LOGS = register(
    CappedRowRetention(
        name="observability.logs",
        model=LogRecord,
        age_field="at",
        keep=days_kept("LOG_STORE_DAYS"),
        max_rows=lambda: settings.LOG_STORE_MAX_LINES,
    )
)
