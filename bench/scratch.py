"""Scratch Postgres databases: migrated once, cloned per measurement, dropped at the end."""

import os
import secrets

import psycopg
from psycopg import sql

ADMIN_DSN = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "bench_"


class ScratchDatabases:
    def __init__(self):
        self.tag = f"{PREFIX}hb_{secrets.token_hex(3)}"
        self.names: list[str] = []

    def url(self, name: str) -> str:
        base, _, _ = ADMIN_DSN.rpartition("/")
        return f"{base}/{name}"

    def create(self, suffix: str, template: str | None = None) -> str:
        """Create ``<tag>_<suffix>`` (a copy of ``template`` when given); return its name."""
        name = f"{self.tag}_{suffix}"
        assert name.startswith(PREFIX)
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        # Remembered first: an interruption mid-statement still gets it dropped.
        self.names.append(name)
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            connection.execute(statement)
        return name

    def drop_all(self) -> list[str]:
        dropped = []
        with psycopg.connect(ADMIN_DSN, autocommit=True) as connection:
            for name in reversed(self.names):
                # FORCE: a server killed mid-request may leave a session behind.
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                dropped.append(name)
        self.names.clear()
        return dropped
