"""The catalog: the durable record of the snapshots snapshotd made, its runs and its
operations log.  Code outside this package opens it with ``open_catalog`` and uses it
through the ``Catalog`` interface (catalog/api.py); only the implementation
(catalog/sqlite.py) imports a database driver."""

from __future__ import annotations

from pathlib import Path

from snapshotd.catalog import sqlite
from snapshotd.catalog.api import Catalog, Operation, Run, RunLog, SnapshotRow

__all__ = [
    "Catalog",
    "Operation",
    "Run",
    "RunLog",
    "SnapshotRow",
    "catalog_exists",
    "open_catalog",
]


def open_catalog(state_dir: str, *, shared: bool = False) -> Catalog:
    """The configured catalog for ``state_dir``, created when it does not exist yet.

    ``shared``: the catalog may be handed from thread to thread (never used by two at
    once), as the daemon's pool of catalogs does.
    """
    return sqlite.SQLiteCatalog(state_dir, shared=shared)


def catalog_exists(state_dir: str) -> bool:
    """Whether ``state_dir`` holds a catalog (reading verbs open none that is absent)."""
    return (Path(state_dir) / sqlite.DB_NAME).exists()
