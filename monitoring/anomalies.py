"""Reading anomalies: the summary of a window (counts by metric, agent and severity)."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from monitoring.models import MonitorAnomaly, Severity

MAX_WINDOW_SECONDS = 90 * 86_400


@dataclass(frozen=True)
class AnomalySummary:
    window: int
    total: int
    by_metric: dict[str, int]
    by_agent: dict[str, int]
    by_severity: dict[str, int]


def active_between(since: datetime | None, until: datetime | None) -> Q:
    """Anomalies open at some moment of ``[since, until)`` (either end may be open)."""
    condition = Q()
    if until is not None:
        condition &= Q(started_at__lt=until)
    if since is not None:
        condition &= Q(ended_at__isnull=True) | Q(ended_at__gte=since)
    return condition


def summarise(window: int, *, now: datetime | None = None) -> AnomalySummary:
    """Anomalies open at any time in the last ``window`` seconds, counted three ways.

    ``by_severity`` names every severity (zero included); ``by_agent`` leaves
    out anomalies of series that are about no agent.
    """
    if not 1 <= window <= MAX_WINDOW_SECONDS:
        raise ValueError(f"A window is 1 to {MAX_WINDOW_SECONDS} seconds.")
    now = now or timezone.now()
    found = MonitorAnomaly.objects.filter(
        active_between(now - timedelta(seconds=window), now)
    ).order_by()

    def count_by(column: str) -> dict[str, int]:
        rows = found.values_list(column).annotate(n=Count("id")).values_list(column, "n")
        return dict(sorted(rows))

    by_severity = {severity.value: 0 for severity in Severity}
    by_severity.update(count_by("severity"))
    by_agent = count_by("agent_id")
    by_agent.pop("", None)
    return AnomalySummary(
        window=window,
        total=sum(by_severity.values()),
        by_metric=count_by("metric"),
        by_agent=by_agent,
        by_severity=by_severity,
    )
