"""The catalog: the durable record of the snapshots snapshotd made, its runs and its
operations log.  Code outside this package opens it with ``open_catalog`` and uses it
through the ``Catalog`` interface (catalog/api.py); only the implementations import a
database driver: catalog/sqlite.py (SQLite in the state directory, the default) and
catalog/postgres.py (PostgreSQL, shared by a fleet: snapshotd.yaml's ``catalog:``), both
running catalog/sql.py's statements."""

from __future__ import annotations

from pathlib import Path

from snapshotd.catalog import sqlite
from snapshotd.catalog.api import Catalog, Operation, Run, RunLog, SnapshotRow
from snapshotd.config.settings import DatabaseSettings

__all__ = [
    "Catalog",
    "Operation",
    "Run",
    "RunLog",
    "SnapshotRow",
    "catalog_exists",
    "describe",
    "open_catalog",
]


def open_catalog(
    state_dir: str, *, shared: bool = False, database: DatabaseSettings | None = None
) -> Catalog:
    """The configured catalog: the database ``database`` names (snapshotd.yaml's
    ``catalog:``), else SQLite in ``state_dir``; created when it does not exist yet.

    ``shared``: the catalog may be handed from thread to thread (never used by two at
    once), as the daemon's pool of catalogs does.
    """
    if database is not None:
        from snapshotd.catalog import postgres  # noqa: PLC0415 - psycopg only when configured

        return postgres.PostgresCatalog(database, shared=shared)
    return sqlite.SQLiteCatalog(state_dir, shared=shared)


def describe(state_dir: str, database: DatabaseSettings | None = None) -> str:
    """Where the catalog is, for people: the database (no password) and this host's id
    in it, or the SQLite file."""
    if database is not None:
        from snapshotd.catalog import postgres  # noqa: PLC0415 - psycopg only when configured

        where = postgres.sanitize_url(database.url)
        return f"{where} (PostgreSQL, shared; this host is {postgres.host_id(database)!r})"
    return f"{Path(state_dir) / sqlite.DB_NAME} (SQLite, this host's)"


def catalog_exists(state_dir: str, database: DatabaseSettings | None = None) -> bool:
    """Whether there is a catalog to read (reading verbs open none that is absent): a
    configured database always is one (opening it says if it cannot be reached)."""
    return database is not None or (Path(state_dir) / sqlite.DB_NAME).exists()
