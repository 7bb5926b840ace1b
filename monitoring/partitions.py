"""Daily partitions of the sample and rollup tables on PostgreSQL.

Partitions are created ahead (by a periodic job, and on demand by ingest when a
batch reaches a day that has none yet) and retention drops whole partitions
older than the table's retention: never a large DELETE. On SQLite the tables
are plain, and retention deletes old rows in bounded batches instead.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

DAY = timedelta(days=1)
SQLITE_DELETE_BATCH = 5000


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


def drop_expired(now: datetime) -> dict[str, int]:
    """Drop (PostgreSQL) or delete in batches (SQLite) what is past retention.

    Returns how many partitions (PostgreSQL) or rows (SQLite) went, per table.
    A day's partition goes only once all of it is past retention.
    """
    dropped = {}
    for table in TABLES:
        cutoff = now - table.retention()
        if partitioned():
            expired = {
                name: day
                for name, day in existing_partitions(table).items()
                if datetime(day.year, day.month, day.day, tzinfo=UTC) + DAY <= cutoff
            }
            for name in expired:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"DROP TABLE IF EXISTS {name}")
            _known[table.table] -= set(expired.values())
            dropped[table.table] = len(expired)
        else:
            dropped[table.table] = _delete_sqlite_rows(table, cutoff)
    return dropped


def _delete_sqlite_rows(table: PartitionedTable, cutoff: datetime, max_batches: int = 20) -> int:
    from django.db.models import DateTimeField

    stamp = DateTimeField().get_db_prep_value(cutoff, connection)
    deleted = 0
    with connection.cursor() as cursor:
        for _ in range(max_batches):
            cursor.execute(
                f"DELETE FROM {table.table} WHERE rowid IN ("  # noqa: S608
                f"SELECT rowid FROM {table.table} WHERE {table.column} < %s LIMIT %s)",
                [stamp, SQLITE_DELETE_BATCH],
            )
            deleted += cursor.rowcount
            if cursor.rowcount < SQLITE_DELETE_BATCH:
                break
    return deleted


def forget_known() -> None:
    """Forget which partitions exist (tests that drop and recreate them)."""
    for days in _known.values():
        days.clear()
