"""Many rows of one model, each set to its own values, in one statement.

Django's ``bulk_update`` writes a ``CASE WHEN pk = ... THEN ...`` per row and
field; building those expressions costs about a millisecond a row in Python,
which is most of a rule tick that refreshes a few thousand firing alerts.
``update_rows`` joins the table to the new values instead: on PostgreSQL one
array parameter per column (``unnest``), whatever the number of rows; on SQLite
a ``VALUES`` list, in chunks that stay under its limit on parameters.

For plain columns (numbers, text, timestamps, booleans): values go through each
field's ``get_db_prep_save``, as ``save`` sends them.
"""

from collections.abc import Iterable, Sequence

from django.db import connection

# Rows per statement on SQLite (parameters per statement: rows times columns).
SQLITE_CHUNK = 500


def update_rows(model, fields: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Set ``fields`` of each row, given as ``(pk, *values in fields' order)``;
    how many rows changed."""
    meta = model._meta
    columns = [meta.pk, *(meta.get_field(name) for name in fields)]
    prepared = [
        [
            field.get_db_prep_save(value, connection)
            for field, value in zip(columns, row, strict=True)
        ]
        for row in rows
    ]
    if not prepared:
        return 0
    ops = connection.ops
    table = ops.quote_name(meta.db_table)
    key = ops.quote_name(columns[0].column)
    if connection.vendor == "postgresql":
        names = [f"c{n}" for n in range(len(columns))]
        arrays = ", ".join(f"%s::{field.db_type(connection)}[]" for field in columns)
        statements = [
            (
                f"unnest({arrays}) AS v ({', '.join(names)})",
                [list(column) for column in zip(*prepared, strict=True)],
            )
        ]
    else:
        # SQLite names a VALUES list's columns column1, column2, ...
        names = [f"column{n + 1}" for n in range(len(columns))]
        row_marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
        statements = [
            (
                "(VALUES " + ", ".join([row_marks] * len(chunk)) + ") AS v",
                [value for row in chunk for value in row],
            )
            for chunk in (
                prepared[start : start + SQLITE_CHUNK]
                for start in range(0, len(prepared), SQLITE_CHUNK)
            )
        ]
    assign = ", ".join(
        f"{ops.quote_name(field.column)} = v.{name}"
        for field, name in zip(columns[1:], names[1:], strict=True)
    )
    changed = 0
    with connection.cursor() as cursor:
        for source, params in statements:
            # Only identifiers and placeholders are formatted in; every value is a parameter.
            cursor.execute(
                f"UPDATE {table} SET {assign} FROM {source} WHERE {table}.{key} = v.{names[0]}",  # noqa: S608
                params,
            )
            changed += cursor.rowcount
    return changed


def update_ids(model, ids: Iterable, **values) -> int:
    """Set the same ``values`` on the rows of ``ids``: one statement on PostgreSQL,
    chunks under SQLite's limit on parameters there; how many rows changed."""
    ids = list(ids)
    step = connection.features.max_query_params or len(ids) or 1
    return sum(
        model._default_manager.filter(pk__in=ids[start : start + step]).update(**values)
        for start in range(0, len(ids), step)
    )
