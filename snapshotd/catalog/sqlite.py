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
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from snapshotd.catalog import locks, migrations
from snapshotd.catalog.api import (
    AlreadyRecorded,
    CatalogBase,
    GroupMember,
    GroupRow,
    HoldRow,
    Operation,
    Run,
    SnapshotRow,
    member_of,
)

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


class _Duplicate(AlreadyRecorded, sqlite3.IntegrityError):
    """The UNIQUE constraint on (domain_uuid, name, created_at) refused a row."""


class _Database:
    """The one connection to the database file, and its write transactions.

    Private to this module: SQLiteCatalog and its SQLiteRunLog each keep their own SQL
    and run it through the _Database the catalog opened.
    """

    def __init__(self, path: str, *, shared: bool) -> None:
        self.connection = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=not shared
        )
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, args: tuple[object, ...] | list[object] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, args)

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


class SQLiteCatalog(CatalogBase):
    """The catalog in ``state_dir``: its database, and the domain locks beside it."""

    def __init__(self, state_dir: str, *, shared: bool = False) -> None:
        """Open (creating if needed) the catalog in ``state_dir``.

        ``shared``: the connection may be handed from thread to thread (never used by
        two at once), as the daemon's pool of connections does.
        """
        super().__init__(functools.partial(locks.file_lock, state_dir))
        directory = Path(state_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / DB_NAME
        created = _create_private(path)
        if not created:
            # Read-only first: a catalog a newer snapshotd wrote is refused untouched
            # (opening it as this class does would switch it to WAL).
            migrations.pending(_recorded_version(path), migrations.SQLITE, where=str(path))
        self._path = str(path)
        self._database = _Database(self._path, shared=shared)
        self._runs = SQLiteRunLog(self._database)
        self._groups = SQLiteGroupLog(self._database)
        # The daemon opens the catalog once per snapshot: the schema is written the
        # first time this process opens the file (and whenever it had to create it).
        key = f"{self._path}:{path.stat().st_ino}"
        if created or key not in _READY:
            try:
                self._migrate()
            except BaseException:
                self._database.close()
                raise
            _READY.add(key)

    def _migrate(self) -> None:
        """Bring the schema to migrations.LATEST in one transaction (BEGIN IMMEDIATE: two
        processes opening an old catalog at once migrate it once); refuse a newer one."""
        with self._database.transaction():
            found = self._database.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            current = 0
            if found is not None:
                row = self._database.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                current = int(row[0]) if row is not None else 0
            todo = migrations.pending(current, migrations.SQLITE, where=self._path)
            for migration in todo:
                for statement in migration.statements:
                    self._database.execute(statement)
            if todo:
                self._database.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(todo[-1].version),),
                )

    @property
    def schema_version(self) -> int:
        row = self._database.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        return int(row[0])

    @property
    def location(self) -> str:
        return self._path

    @property
    def runs(self) -> SQLiteRunLog:
        return self._runs

    @property
    def groups(self) -> SQLiteGroupLog:
        return self._groups

    def close(self) -> None:
        self._database.close()

    # --- snapshots -------------------------------------------------------------------

    def record_snapshot(self, row: SnapshotRow) -> None:
        try:
            with self._database.transaction():
                self._database.execute(
                    """INSERT INTO snapshots (uri, domain_uuid, domain_name, name, created_at,
                           policy, parent, xml, files, libvirt_metadata)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        row.uri,
                        row.domain_uuid,
                        row.domain_name,
                        row.name,
                        row.created_at,
                        row.policy,
                        row.parent,
                        row.xml,
                        json.dumps(list(row.files)),
                        int(row.libvirt_metadata),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            raise _Duplicate(
                f"the catalog already has snapshot {row.name!r} of domain {row.domain_name!r} "
                f"({row.domain_uuid}) created at {row.created_at}"
            ) from exc

    def mark_deleted(self, domain_uuid: str, name: str, created_at: int, when: int) -> None:
        with self._database.transaction():
            self._database.execute(
                """UPDATE snapshots SET deleted_at = ?
                   WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
                (when, domain_uuid, name, created_at),
            )

    def owner(self, domain_uuid: str, name: str, created_at: int | None) -> SnapshotRow | None:
        if created_at is None:
            return None
        cur = self._database.execute(
            """SELECT * FROM snapshots WHERE domain_uuid = ? AND name = ? AND created_at = ?
               AND deleted_at IS NULL""",
            (domain_uuid, name, created_at),
        )
        found = cur.fetchone()
        return _row(cur, found) if found else None

    def set_libvirt_metadata(
        self, domain_uuid: str, name: str, created_at: int, held: bool
    ) -> None:
        with self._database.transaction():
            self._database.execute(
                """UPDATE snapshots SET libvirt_metadata = ?
                   WHERE domain_uuid = ? AND name = ? AND created_at = ? AND deleted_at IS NULL""",
                (int(held), domain_uuid, name, created_at),
            )

    def update_snapshot(
        self, domain_uuid: str, name: str, created_at: int, *, xml: str, files: tuple[str, ...]
    ) -> None:
        with self._database.transaction():
            self._database.execute(
                """UPDATE snapshots SET xml = ?, files = ?
                   WHERE domain_uuid = ? AND name = ? AND created_at = ? AND deleted_at IS NULL""",
                (xml, json.dumps(list(files)), domain_uuid, name, created_at),
            )

    def find(self, domain_uuid: str, name: str) -> SnapshotRow | None:
        cur = self._database.execute(
            """SELECT * FROM snapshots WHERE domain_uuid = ? AND name = ? AND deleted_at IS NULL
               ORDER BY created_at DESC, id DESC LIMIT 1""",
            (domain_uuid, name),
        )
        found = cur.fetchone()
        return _row(cur, found) if found else None

    def snapshots(
        self, *, domain_uuid: str | None = None, policy: str | None = None
    ) -> list[SnapshotRow]:
        query = "SELECT * FROM snapshots WHERE deleted_at IS NULL"
        args: list[object] = []
        if domain_uuid is not None:
            query += " AND domain_uuid = ?"
            args.append(domain_uuid)
        if policy is not None:
            query += " AND policy = ?"
            args.append(policy)
        cur = self._database.execute(query + " ORDER BY created_at, id", args)
        return [_row(cur, r) for r in cur.fetchall()]

    # --- operations ---------------------------------------------------------------------

    def record_operation(self, op: Operation) -> None:
        with self._database.transaction(fsync=False):  # a log line: see the module docstring
            self._database.execute(
                """INSERT INTO operations (at, uri, policy, domain_uuid, domain_name, operation,
                       snapshot, outcome, message, duration_ms)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    op.at,
                    op.uri,
                    op.policy,
                    op.domain_uuid,
                    op.domain_name,
                    op.operation,
                    op.snapshot,
                    op.outcome,
                    op.message,
                    op.duration_ms,
                ),
            )

    def operations(self, *, limit: int = 100) -> list[Operation]:
        cur = self._database.execute(
            """SELECT at, uri, operation, outcome, policy, domain_uuid, domain_name, snapshot,
                      message, duration_ms FROM operations ORDER BY id DESC LIMIT ?""",
            (limit,),
        )
        return [Operation(*r) for r in cur.fetchall()]


class SQLiteRunLog:
    """The ``runs`` table, through the catalog's own database."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    def get(self, policy: str, domain_uuid: str) -> Run | None:
        cur = self._database.execute(
            "SELECT * FROM runs WHERE policy = ? AND domain_uuid = ?", (policy, domain_uuid)
        )
        found = cur.fetchone()
        return Run(*found) if found else None

    def all(self) -> list[Run]:
        cur = self._database.execute("SELECT * FROM runs ORDER BY policy, domain_name")
        return [Run(*r) for r in cur.fetchall()]

    def unfinished(self) -> list[Run]:
        return [r for r in self.all() if r.in_progress is not None]

    def start(self, run: Run, snapshot: str, slot: int, now: int) -> None:
        # Right before libvirt: no fsync of its own (see the module docstring).
        with self._database.transaction(fsync=False):
            self._database.execute(
                """INSERT INTO runs (policy, domain_uuid, uri, domain_name, in_progress,
                       in_progress_slot, in_progress_since) VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (policy, domain_uuid) DO UPDATE SET uri = excluded.uri,
                       domain_name = excluded.domain_name, in_progress = excluded.in_progress,
                       in_progress_slot = excluded.in_progress_slot,
                       in_progress_since = excluded.in_progress_since""",
                (run.policy, run.domain_uuid, run.uri, run.domain_name, snapshot, slot, now),
            )

    def finish(
        self, policy: str, domain_uuid: str, *, slot: int | None, error: str | None, now: int
    ) -> None:
        # No fsync of its own: if power loss takes it, the next start reconciles the run.
        with self._database.transaction(fsync=False):
            if slot is not None:
                self._database.execute(
                    """UPDATE runs SET last_slot = ?, last_success = ? WHERE policy = ?
                       AND domain_uuid = ?""",
                    (slot, now, policy, domain_uuid),
                )
            if error is not None:
                self._database.execute(
                    """UPDATE runs SET last_error = ?, last_error_at = ? WHERE policy = ?
                       AND domain_uuid = ?""",
                    (error, now, policy, domain_uuid),
                )
            self._database.execute(
                """UPDATE runs SET in_progress = NULL, in_progress_slot = NULL,
                   in_progress_since = NULL WHERE policy = ? AND domain_uuid = ?""",
                (policy, domain_uuid),
            )


class SQLiteGroupLog:
    """The ``group_members`` and ``group_holds`` tables."""

    def __init__(self, database: _Database) -> None:
        self._database = database

    def record(self, group: GroupRow) -> None:
        """All members or none (one transaction); AlreadyRecorded when a member's
        snapshot is in a group already."""
        with self._database.transaction():
            for m in group.members:
                try:
                    self._database.execute(
                        """INSERT INTO group_members (policy, name, taken_at, partial,
                           pause_ms, uri, domain_uuid, domain_name, created_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (
                            group.policy, group.name, group.taken_at, int(group.partial),
                            group.pause_ms, m.uri, m.domain_uuid, m.domain_name, m.created_at,
                        ),
                    )  # fmt: skip
                except sqlite3.IntegrityError as exc:
                    raise AlreadyRecorded(
                        f"snapshot {group.name!r} of {m.domain_name!r} is in a group already"
                    ) from exc

    def join(self, group: GroupRow) -> None:
        with self._database.transaction():  # an AlreadyRecorded rolls every member back
            for m in group.members:
                self._join(group, m)

    def _join(self, group: GroupRow, m: GroupMember) -> None:
        key = (m.domain_uuid, group.name, m.created_at)
        found = self._database.execute(
            """SELECT policy, taken_at, uri FROM group_members
               WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
            key,
        ).fetchone()
        if found is None:
            same = self._database.execute(
                """SELECT partial, pause_ms FROM group_members
                   WHERE policy = ? AND name = ? AND taken_at = ? LIMIT 1""",
                (group.policy, group.name, group.taken_at),
            ).fetchone()
            partial, pause = same if same is not None else (int(group.partial), group.pause_ms)
            self._database.execute(
                """INSERT INTO group_members (policy, name, taken_at, partial, pause_ms, uri,
                   domain_uuid, domain_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    group.policy, group.name, group.taken_at, partial, pause, m.uri,
                    m.domain_uuid, m.domain_name, m.created_at,
                ),
            )  # fmt: skip
            return
        policy, taken_at, uri = found
        if (policy, taken_at) != (group.policy, group.taken_at):
            raise AlreadyRecorded(
                f"snapshot {group.name!r} of {m.domain_name!r} is in group {policy!r} "
                f"taken at {taken_at} already"
            )
        if uri != m.uri:
            self._database.execute(
                """INSERT OR IGNORE INTO group_copies (domain_uuid, name, created_at, uri,
                   domain_name) VALUES (?, ?, ?, ?, ?)""",
                (*key, m.uri, m.domain_name),
            )

    def leave(self, uri: str, domain_uuid: str, name: str, created_at: int) -> None:
        key = (domain_uuid, name, created_at)
        with self._database.transaction():
            found = self._database.execute(
                """SELECT uri FROM group_members
                   WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
                key,
            ).fetchone()
            if found is None:
                return
            if found[0] != uri:
                self._database.execute(
                    """DELETE FROM group_copies WHERE domain_uuid = ? AND name = ?
                       AND created_at = ? AND uri = ?""",
                    (*key, uri),
                )
                return
            heir = self._database.execute(
                """SELECT uri, domain_name FROM group_copies WHERE domain_uuid = ? AND name = ?
                   AND created_at = ? ORDER BY uri LIMIT 1""",
                key,
            ).fetchone()
            if heir is None:
                self._database.execute(
                    """DELETE FROM group_members WHERE domain_uuid = ? AND name = ?
                       AND created_at = ?""",
                    key,
                )
                return
            self._database.execute(
                """UPDATE group_members SET uri = ?, domain_name = ?
                   WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
                (*heir, *key),
            )
            self._database.execute(
                """DELETE FROM group_copies WHERE domain_uuid = ? AND name = ?
                   AND created_at = ? AND uri = ?""",
                (*key, heir[0]),
            )

    def _copies(self, policy: str | None) -> dict[tuple[str, str, int], list[GroupMember]]:
        """The live members' copies, by their group's (policy, name, taken_at)."""
        cur = self._database.execute(
            """SELECT g.policy, g.name, g.taken_at, c.uri, c.domain_uuid, c.domain_name,
                      c.created_at
               FROM group_copies c JOIN group_members g ON g.domain_uuid = c.domain_uuid
                    AND g.name = c.name AND g.created_at = c.created_at
               JOIN snapshots s ON s.domain_uuid = c.domain_uuid AND s.name = c.name
                    AND s.created_at = c.created_at AND s.deleted_at IS NULL
               WHERE ? IS NULL OR g.policy = ?
               ORDER BY c.domain_name, c.uri""",
            (policy, policy),
        )
        found: dict[tuple[str, str, int], list[GroupMember]] = {}
        for r in cur.fetchall():
            member = GroupMember(str(r[3]), str(r[4]), str(r[5]), int(r[6]))
            found.setdefault((str(r[0]), str(r[1]), int(r[2])), []).append(member)
        return found

    def all(self, policy: str | None = None) -> list[GroupRow]:
        # A group lives while one of its members' snapshot rows does.
        cur = self._database.execute(
            """SELECT g.policy, g.name, g.taken_at, g.partial, g.pause_ms, g.uri,
                      g.domain_uuid, g.domain_name, g.created_at,
                      s.id IS NULL OR s.deleted_at IS NOT NULL
               FROM group_members g LEFT JOIN snapshots s ON s.domain_uuid = g.domain_uuid
                    AND s.name = g.name AND s.created_at = g.created_at
               WHERE ? IS NULL OR g.policy = ?
               ORDER BY g.taken_at, g.policy, g.name, g.domain_name""",
            (policy, policy),
        )
        found: dict[tuple[str, str, int], list[tuple[object, ...]]] = {}
        for r in cur.fetchall():
            found.setdefault((r[0], r[1], r[2]), []).append(r)
        copies = self._copies(policy)
        groups = []
        for (policy_, name, taken_at), found_rows in found.items():
            rows = [r for r in found_rows if not r[9]]  # the members still live
            if not rows:
                continue
            members = tuple(
                GroupMember(str(r[5]), str(r[6]), str(r[7]), int(str(r[8]))) for r in rows
            )
            pause = rows[0][4]
            groups.append(
                GroupRow(
                    policy_,
                    name,
                    taken_at,
                    members,
                    bool(rows[0][3]),
                    int(str(pause)) if pause is not None else None,
                    tuple(copies.get((policy_, name, taken_at), ())),
                )
            )
        return groups

    def of(self, domain_uuid: str, name: str, created_at: int) -> GroupRow | None:
        return member_of(self.all(), domain_uuid, name, created_at)

    def hold(self, row: HoldRow) -> None:
        # Durable before the member is suspended: a restart after kill -9 resumes it.
        with self._database.transaction():
            self._database.execute(
                """INSERT OR REPLACE INTO group_holds (domain_uuid, uri, domain_name, policy,
                   name, hold, since) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    row.domain_uuid,
                    row.uri,
                    row.domain_name,
                    row.policy,
                    row.name,
                    row.hold,
                    row.since,
                ),
            )

    def release(self, domain_uuid: str) -> None:
        with self._database.transaction(fsync=False):
            self._database.execute("DELETE FROM group_holds WHERE domain_uuid = ?", (domain_uuid,))

    def held(self) -> list[HoldRow]:
        cur = self._database.execute(
            """SELECT policy, name, uri, domain_uuid, domain_name, hold, since
               FROM group_holds ORDER BY since, domain_name"""
        )
        return [HoldRow(*r) for r in cur.fetchall()]


def _row(cur: sqlite3.Cursor, values: tuple[object, ...]) -> SnapshotRow:
    data = dict(zip([c[0] for c in cur.description], values, strict=True))
    return SnapshotRow(
        uri=str(data["uri"]),
        domain_uuid=str(data["domain_uuid"]),
        domain_name=str(data["domain_name"]),
        name=str(data["name"]),
        created_at=int(str(data["created_at"])),
        policy=None if data["policy"] is None else str(data["policy"]),
        parent=None if data["parent"] is None else str(data["parent"]),
        xml=str(data["xml"]),
        files=tuple(json.loads(str(data["files"]))),
        libvirt_metadata=bool(data["libvirt_metadata"]),
        deleted_at=None if data["deleted_at"] is None else int(str(data["deleted_at"])),
    )


__all__ = [
    "DB_NAME",
    "Operation",
    "Run",
    "SQLiteCatalog",
    "SQLiteRunLog",
    "SnapshotRow",
]
