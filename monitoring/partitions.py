"""Daily partitions of the sample and rollup tables on PostgreSQL.

Partitions are created ahead (by a periodic job, and on demand by ingest when a
batch reaches a day that has none yet) and retention (the policies in
``monitoring.retention``) drops whole partitions older than the table's
retention: never a large DELETE. On SQLite the tables are plain, and retention
deletes the oldest rows in bounded batches instead.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField

DAY = timedelta(days=1)


@dataclass(frozen=True)
class PartitionedTable:
    table: str
    column: str
    retention_setting: str

    def retention(self) -> timedelta:
        return timedelta(days=getattr(settings, self.retention_setting))

    def partition_name(self, day: date) -> str:
        return f"{self.table}_p{day:%Y%m%d}"


SAMPLES = PartitionedTable("monitor_samples", "ts", "METRIC_SAMPLE_RETENTION_DAYS")
ROLLUPS = PartitionedTable("monitor_rollups", "minute", "METRIC_ROLLUP_RETENTION_DAYS")
TABLES = (SAMPLES, ROLLUPS)

# Days this process knows to have a partition, per table.
_known: dict[str, set[date]] = {table.table: set() for table in TABLES}


def partitioned() -> bool:
    return connection.vendor == "postgresql"


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def ensure_days(table: PartitionedTable, days) -> None:
    """Make sure each of ``days`` has a partition (no-op on SQLite)."""
    if not partitioned():
        return
    missing = [day for day in days if day not in _known[table.table]]
    if not missing:
        return
    with transaction.atomic(), connection.cursor() as cursor:
        # IF NOT EXISTS alone does not survive a race ("already exists"): creators
        # of partitions take turns, and a later one finds the table there.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["omoi.partitions"])
        for day in missing:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {table.partition_name(day)} "
                f"PARTITION OF {table.table} FOR VALUES FROM (%s) TO (%s)",
                [start, start + DAY],
            )
    _known[table.table].update(missing)


def ensure_ahead(now: datetime) -> None:
    """Partitions for every day from the oldest one still kept to a few days ahead."""
    today = day_of(now)
    for table in TABLES:
        oldest = day_of(now - table.retention())
        ahead = today + timedelta(days=settings.METRIC_PARTITIONS_AHEAD_DAYS)
        span = (ahead - oldest).days
        ensure_days(table, [oldest + timedelta(days=n) for n in range(span + 1)])


def existing_partitions(table: PartitionedTable) -> dict[str, date]:
    """Partition name -> its day, as PostgreSQL knows them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT child.relname FROM pg_inherits "
            "JOIN pg_class parent ON parent.oid = pg_inherits.inhparent "
            "JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
            "WHERE parent.relname = %s",
            [table.table],
        )
        names = [row[0] for row in cursor.fetchall()]
    prefix = f"{table.table}_p"
    found = {}
    for name in names:
        try:
            found[name] = datetime.strptime(name.removeprefix(prefix), "%Y%m%d").date()
        except ValueError:
            continue  # not one of ours
    return found


def prune_table(table: PartitionedTable, now: datetime, batch_size: int) -> tuple[int, bool]:
    """Remove one bounded step of what is past ``table``'s retention: (removed, more due).

    PostgreSQL: drop the oldest partition whose whole day is past retention (one
    partition per step, however many rows it holds). SQLite: delete up to
    ``batch_size`` of the oldest rows.
    """
    cutoff = now - table.retention()
    if not partitioned():
        removed = _delete_sqlite_rows(table, cutoff, batch_size)
        return removed, removed == batch_size
    expired = sorted(
        (day, name)
        for name, day in existing_partitions(table).items()
        if datetime(day.year, day.month, day.day, tzinfo=UTC) + DAY <= cutoff
    )
    if not expired:
        return 0, False
    day, name = expired[0]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")
    _known[table.table].discard(day)
    return 1, len(expired) > 1


def expired_count(table: PartitionedTable, now: datetime) -> int:
    """Partitions (PostgreSQL) or rows (SQLite) past retention, for a dry run."""
    cutoff = now - table.retention()
    if partitioned():
        return sum(
            datetime(day.year, day.month, day.day, tzinfo=UTC) + DAY <= cutoff
            for day in existing_partitions(table).values()
        )
    stamp = DateTimeField().get_db_prep_value(cutoff, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {table.table} WHERE {table.column} < %s",  # noqa: S608
            [stamp],
        )
        return cursor.fetchone()[0]


def _delete_sqlite_rows(table: PartitionedTable, cutoff: datetime, limit: int) -> int:
    stamp = DateTimeField().get_db_prep_value(cutoff, connection)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f'DELETE FROM "{table.table}" WHERE rowid IN ('  # noqa: S608
            f'SELECT rowid FROM "{table.table}" WHERE {table.column} < %s '
            f"ORDER BY {table.column} LIMIT %s)",
            [stamp, limit],
        )
        return cursor.rowcount


def forget_known() -> None:
    """Forget which partitions exist (tests that drop and recreate them)."""
    for days in _known.values():
        days.clear()
