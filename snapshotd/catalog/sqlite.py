"""The SQLite catalog: snapshotd's durable record of the snapshots it made and what it did.

The only module in snapshotd that imports sqlite3; the rest sees catalog/api.py's
Catalog.  One SQLite database in the state directory (``catalog.sqlite``), in WAL mode with
synchronous=FULL, so a record that was committed survives kill -9 and power loss.
Three writes are lighter, committed without an fsync of their own (synchronous=NORMAL
for that transaction): the daemon's "run in progress" marker right before libvirt is
asked (RunLog.start), its end (RunLog.finish) and the operations log.  They survive
kill -9 all the same (WAL pages live in the page cache, not in the process), and
become power-safe with the next full commit: a snapshot's own record, written right
after libvirt returns, is one, and it carries every commit before it.  Power loss can
only lose a tail of commits, so it never leaves a record without the marker before
it.  What power loss can cost: an operations log line; a finished run that looks
unfinished (the next start reconciles it with libvirt); or, between the marker and
the record, the marker, and then a snapshot libvirt made in that window is not adopted
at the next start (it stays in libvirt, unowned, never pruned) and its slot is taken
again.  Snapshot records themselves are always committed with synchronous=FULL.
The directory is made 0700 and the database 0600: it holds snapshot XML.

What makes a snapshot "ours": a row with the same domain UUID, snapshot name and
libvirt creation time.  A snapshot made by hand with a name like ours has no row
(or a different creation time) and is never treated as ours; renaming a policy
file does not change anything as long as the policy keeps its ``name``.

The schema is catalog/migrations.py's SQLite migrations: opening a catalog brings an
older one up to date in one transaction and refuses one a newer snapshotd wrote.

The domain locks are files beside the database (catalog/locks.py: ``locks/UUID.lock``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from snapshotd.catalog import locks, migrations
from snapshotd.catalog.api import AlreadyRecorded
from snapshotd.catalog.sql import Cursor, SQLCatalog, apply_migrations

DB_NAME = "catalog.sqlite"


_CREATING = threading.Lock()


# Database files this process has already given the schema: later opens skip it.
_READY: set[str] = set()


def _create_private(path: Path) -> bool:
    """Create the database file 0600 if it does not exist yet; True if it was created.

    Only ever opens and closes the file when it did not exist: closing any
    descriptor of a database file drops every POSIX lock this process holds on
    it, including the locks of SQLite connections on other threads.  Without
    them, another process closing its last connection believes it is alone,
    checkpoints and deletes the WAL under our feet, and the catalog is corrupt.
    """
    with _CREATING:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        return True


def _recorded_version(path: Path) -> int:
    """The schema version a catalog file records (0: none yet), read without writing."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:
            return 0  # no meta table: an empty file, or one that was never given a schema
        return int(row[0]) if row is not None else 0


class _Rows:
    """A statement's rows, read already (a Cursor)."""

    def __init__(self, rows: list[Any], description: Sequence[Sequence[Any]] | None) -> None:
        self._rows = rows
        self.description = description

    def fetchone(self) -> Sequence[Any] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> Sequence[Sequence[Any]]:
        rows, self._rows = self._rows, []
        return rows


class _Duplicate(AlreadyRecorded, sqlite3.IntegrityError):
    """The UNIQUE constraint on (domain_uuid, name, created_at) refused a row."""


class _Database:
    """The one connection to the database file, and its write transactions: the
    catalog's SQL (catalog/sql.py) runs through it."""

    integrity_error: type[Exception] = sqlite3.IntegrityError

    def __init__(self, path: str, *, shared: bool) -> None:
        self.connection = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=not shared
        )
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA foreign_keys=ON")

    def is_duplicate(self, exc: Exception) -> bool:
        return "UNIQUE" in str(exc)

    def duplicate(self, message: str) -> AlreadyRecorded:
        return _Duplicate(message)

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        cursor = self.connection.execute(sql, args)
        if "RETURNING" in sql:
            # Its rows now: a RETURNING statement unread would hold the commit back.
            return _Rows(cursor.fetchall(), cursor.description)
        return cursor

    @contextlib.contextmanager
    def transaction(self, *, fsync: bool = True) -> Iterator[None]:
        """One write transaction; ``fsync=False`` commits it with synchronous=NORMAL:
        durable against a crash of the process, power-safe from the next full commit."""
        db = self.connection
        if not fsync:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if not fsync:
                db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self.connection.close()


class SQLiteCatalog(SQLCatalog):
    """The catalog in ``state_dir``: its database, and the domain locks beside it."""

    def __init__(self, state_dir: str, *, shared: bool = False, host: str = "") -> None:
        """Open (creating if needed) the catalog in ``state_dir``.

        ``shared``: the connection may be handed from thread to thread (never used by
        two at once), as the daemon's pool of connections does.  ``host``: the host id
        its runs are recorded under ("": the one host this catalog serves).
        """
        directory = Path(state_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / DB_NAME
        created = _create_private(path)
        if not created:
            # Read-only first: a catalog a newer snapshotd wrote is refused untouched
            # (opening it as this class does would switch it to WAL).
            migrations.pending(_recorded_version(path), migrations.SQLITE, where=str(path))
        self._path = str(path)
        database = _Database(self._path, shared=shared)
        super().__init__(database, functools.partial(locks.file_lock, state_dir), self._path, host)
        self._sqlite = database
        # The daemon opens the catalog once per snapshot: the schema is written the
        # first time this process opens the file (and whenever it had to create it).
        key = f"{self._path}:{path.stat().st_ino}"
        if created or key not in _READY:
            try:
                self._migrate()
            except BaseException:
                database.close()
                raise
            _READY.add(key)

    def _migrate(self) -> None:
        """Bring the schema to migrations.LATEST in one transaction (BEGIN IMMEDIATE: two
        processes opening an old catalog at once migrate it once); refuse a newer one."""
        with self._sqlite.transaction():
            found = self._sqlite.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            current = 0
            if found is not None:
                row = self._sqlite.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                current = int(row[0]) if row is not None else 0
            todo = migrations.pending(current, migrations.SQLITE, where=self._path)
            apply_migrations(self._sqlite, todo)

    @property
    def schema_version(self) -> int:
        row = self._sqlite.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else 0


__all__ = ["DB_NAME", "SQLiteCatalog"]
