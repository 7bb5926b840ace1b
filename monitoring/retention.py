"""How long transitions, anomalies and metric storage are kept (imported by the app config).

A transition is history only: the agent row holds its current state and when
it changed, and nothing reads an old transition to decide anything, so every
transition older than the retention may go.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Q

from monitoring import partitions
from monitoring.models import AgentTransition, IngestBatch, MonitorAnomaly
from omoi_console.foundation.retention import (
    CallableRetention,
    Pruned,
    RowRetention,
    days_kept,
    register,
)

TRANSITIONS = register(
    RowRetention(
        name="agent.transitions",
        model=AgentTransition,
        age_field="at",
        keep=days_kept("RETAIN_TRANSITIONS_DAYS"),
    )
)


def _partitioned(table: partitions.PartitionedTable) -> CallableRetention:
    """Samples and rollups: whole day partitions on PostgreSQL, bounded deletes on SQLite."""

    def prune(now, batch_size: int) -> Pruned:
        removed, more = partitions.prune_table(table, now, batch_size)
        unit = f"{table.table} partitions" if partitions.partitioned() else table.table
        return Pruned({unit: removed} if removed else {}, more)

    def count(now) -> dict[str, int]:
        unit = f"{table.table} partitions" if partitions.partitioned() else table.table
        return {unit: partitions.expired_count(table, now)}

    return CallableRetention(
        name=f"metric.{table.table.removeprefix('monitor_')}", prune=prune, counter=count
    )


# An anomaly goes once it has been over for the retention; an open one never does.
ANOMALIES = register(
    RowRetention(
        name="monitor.anomalies",
        model=MonitorAnomaly,
        age_field="ended_at",
        keep=days_kept("RETAIN_ANOMALIES_DAYS"),
        where=Q(ended_at__isnull=False),
    )
)


SAMPLES = register(_partitioned(partitions.SAMPLES))
ROLLUPS = register(_partitioned(partitions.ROLLUPS))
# An idempotency key only has to outlive any resend of its batch.
BATCH_KEYS = register(
    RowRetention(
        name="metric.batch_keys",
        model=IngestBatch,
        age_field="received_at",
        keep=lambda: timedelta(hours=settings.METRIC_BATCH_KEY_RETENTION_HOURS),
    )
)
