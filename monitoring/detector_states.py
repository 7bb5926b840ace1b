"""The detector states of many series, read and written in bulk.

One detection run touches every watched series that had a minute, so states
move as whole batches: one read by series ids, one write. On PostgreSQL the
write is a COPY into a temporary table and one upsert from it, several times
cheaper than a multi-row INSERT of the same rows (bench/detection.py).
"""

from datetime import UTC, datetime
from typing import NamedTuple

from django.db import connection
from django.db.models import DateTimeField

from monitoring.models import SeriesDetector

TABLE = SeriesDetector._meta.db_table
COLUMNS = ("series_id", "config", "state", "minute", "value", "previous", "score")
COPY_TYPES = ("int8", "text", "text", "timestamptz", "float8", "float8", "float8")
# Series ids per statement on SQLite, well under its limit of bound parameters.
CHUNK = 500


class Saved(NamedTuple):
    series_id: int
    config: str
    state: str  # the detector's state as compact JSON
    minute: datetime
    value: float
    previous: float | None
    score: float


def load(ids: list[int]) -> dict[int, Saved]:
    """The stored states of those series that have one, by series id."""
    select = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} "  # noqa: S608 (constants only)
    found: dict[int, Saved] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(select + "WHERE series_id = ANY(%s)", [ids])
            rows = cursor.fetchall()
        else:
            rows = []
            for first in range(0, len(ids), CHUNK):
                chunk = ids[first : first + CHUNK]
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(select + f"WHERE series_id IN ({marks})", chunk)
                rows.extend(cursor.fetchall())
    for row in rows:
        found[row[0]] = Saved(row[0], row[1], row[2], as_datetime(row[3]), *row[4:])
    return found


def save(rows: list[Saved]) -> None:
    """Insert or replace these states."""
    if not rows:
        return
    updates = ", ".join(f"{column} = excluded.{column}" for column in COLUMNS[1:])
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"CREATE TEMPORARY TABLE detector_states_in (LIKE {TABLE}) ON COMMIT DROP"
            )
            with cursor.cursor.copy(
                f"COPY detector_states_in ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) "  # noqa: S608 (constants only)
                f"SELECT {', '.join(COLUMNS)} FROM detector_states_in "
                f"ON CONFLICT (series_id) DO UPDATE SET {updates}"
            )
            cursor.execute("DROP TABLE detector_states_in")
        else:
            stamp = DateTimeField().get_db_prep_value
            marks = ", ".join(["%s"] * len(COLUMNS))
            cursor.executemany(
                f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({marks}) "  # noqa: S608
                f"ON CONFLICT (series_id) DO UPDATE SET {updates}",
                [(*row[:3], stamp(row.minute, connection), *row[4:]) for row in rows],
            )


def as_datetime(value) -> datetime:
    """A timestamp as a raw cursor returns it (SQLite: text in UTC) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
