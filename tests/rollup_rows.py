"""Series and rollup rows written as the rollup job writes them, for tests that read them."""

from datetime import datetime, timedelta

from django.db import connection

from monitoring import partitions, rollups
from monitoring.models import MetricSeries

MINUTE = timedelta(minutes=1)


def make_series(metric: str = "queue_depth", **labels) -> MetricSeries:
    labels = labels or {"agent": "a-1", "queue": "inbox"}
    return MetricSeries.objects.create(
        metric=metric,
        labels=labels,
        fingerprint=f"{metric}-{sorted(labels.items())}"[-32:],
        agent_id=labels.get("agent", ""),
    )


def write_rollups(series: MetricSeries, start: datetime, values: dict[int, list[float]]) -> None:
    """Rollup rows of ``series``: minute offset from ``start`` -> the samples of that minute."""
    stamp = rollups.DateTimeField().get_db_prep_value
    rows = [
        (series.pk, stamp(start + offset * MINUTE, connection), *rollups.summarise(found))
        for offset, found in values.items()
    ]
    days = {partitions.day_of(start + offset * MINUTE) for offset in values}
    partitions.ensure_days(partitions.ROLLUPS, days)
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO monitor_rollups "
            "(series_id, minute, count, sum, min, max, p50, p95, p99, sketch) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
