"""The catalog's SQL, one implementation for every database: SQLCatalog, SQLRunLog and
SQLGroupLog run it through a ``Database`` (catalog/sqlite.py's, catalog/postgres.py's).

The statements are written once, in the SQL both SQLite and PostgreSQL speak (``ON
CONFLICT`` rather than SQLite's ``INSERT OR REPLACE``, no untyped ``? IS NULL``) with
``?`` for parameters; a Database whose driver wants another placeholder translates it.
What differs between the two stays in their modules: how a catalog is opened, its
schema (catalog/migrations.py keeps one list of migrations for each), what a commit
without an fsync of its own means there, and the domain locks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from snapshotd.catalog import sqlgroups
from snapshotd.catalog.api import (
    GROUP_CLAIM,
    AlreadyRecorded,
    CatalogBase,
    ClaimedElsewhere,
    HostRow,
    LockHolder,
    MoveRow,
    Newest,
    Operation,
    Run,
    SnapshotRow,
)
from snapshotd.catalog.migrations import Migration


class Cursor(Protocol):
    """What the catalog reads from a statement it ran (a DB-API cursor)."""

    @property
    def description(self) -> Sequence[Sequence[Any]] | None: ...

    def fetchone(self) -> Sequence[Any] | None: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...


class Database(Protocol):
    """One connection to a catalog's database."""

    # Raised by the driver for a constraint that refused a row.
    integrity_error: type[Exception]

    def is_duplicate(self, exc: Exception) -> bool:
        """Whether ``exc`` is a UNIQUE (or primary key) constraint's refusal."""
        ...

    def duplicate(self, message: str) -> AlreadyRecorded:
        """The AlreadyRecorded to raise for a refused duplicate."""
        ...

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor: ...

    def transaction(self, *, fsync: bool = True) -> AbstractContextManager[None]:
        """One write transaction; ``fsync=False``: committed without waiting for its
        own flush to disk (what that costs is the backend's to say)."""
        ...

    def close(self) -> None: ...


def apply_migrations(database: Database, todo: Sequence[Migration]) -> None:
    """Run ``todo``'s statements and record the version reached, inside the caller's
    transaction (which also read the version it starts from)."""
    for migration in todo:
        for statement in migration.statements:
            database.execute(statement)
    if todo:
        database.execute(
            """INSERT INTO meta (key, value) VALUES ('schema_version', ?)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
            (str(todo[-1].version),),
        )


class SQLCatalog(CatalogBase):
    """Snapshot records and the operations log, with the runs and groups beside them."""

    def __init__(self, database: Database, hold: LockHolder, location: str, host: str) -> None:
        """``host``: this host's id in the catalog ("" for a catalog of one host)."""
        super().__init__(hold)
        self._database = database
        self._location = location
        self.host_id = host
        self._runs = SQLRunLog(database, host)
        self._groups = sqlgroups.SQLGroupLog(database, host)

    @property
    def location(self) -> str:
        return self._location

    @property
    def runs(self) -> SQLRunLog:
        return self._runs

    @property
    def groups(self) -> sqlgroups.SQLGroupLog:
        return self._groups

    def close(self) -> None:
        self._database.close()

    # --- snapshots -------------------------------------------------------------------

    def record_snapshot(self, row: SnapshotRow, logged: Operation | None = None) -> None:
        try:
            with self._database.transaction():
                self._database.execute(
                    """INSERT INTO snapshots (uri, domain_uuid, domain_name, name, created_at,
                           policy, parent, xml, files, libvirt_metadata, host_id, held_by)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
                        self.host_id,
                        self.host_id if row.libvirt_metadata else None,
                    ),
                )
                if logged is not None:
                    self._log(logged)
        except self._database.integrity_error as exc:
            if not self._database.is_duplicate(exc):
                raise
            raise self._database.duplicate(
                f"the catalog already has snapshot {row.name!r} of domain {row.domain_name!r} "
                f"({row.domain_uuid}) created at {row.created_at}"
            ) from exc

    def newest(self) -> list[Newest]:
        cur = self._database.execute(
            """SELECT s.domain_uuid, s.domain_name, s.policy, s.name, s.created_at, s.uri,
                      s.host_id
               FROM snapshots s
               WHERE s.deleted_at IS NULL AND s.id = (
                   SELECT t.id FROM snapshots t
                   WHERE t.domain_uuid = s.domain_uuid AND t.deleted_at IS NULL
                   ORDER BY t.created_at DESC, t.id DESC LIMIT 1)
               ORDER BY s.domain_name, s.domain_uuid"""
        )
        return [
            Newest(str(r[0]), str(r[1]), r[2], str(r[3]), int(r[4]), str(r[5]), r[6])
            for r in cur.fetchall()
        ]

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
            """SELECT uri, domain_uuid, domain_name, name, created_at, policy, parent, xml,
                      files, libvirt_metadata, deleted_at, held_by
               FROM snapshots WHERE domain_uuid = ? AND name = ? AND created_at = ?
               AND deleted_at IS NULL""",
            (domain_uuid, name, created_at),
        )
        found = cur.fetchone()
        return _row(found) if found else None

    def set_libvirt_metadata(
        self, domain_uuid: str, name: str, created_at: int, held: bool
    ) -> None:
        with self._database.transaction():
            self._database.execute(
                """UPDATE snapshots SET libvirt_metadata = ?, held_by = ?
                   WHERE domain_uuid = ? AND name = ? AND created_at = ? AND deleted_at IS NULL""",
                (int(held), self.host_id if held else None, domain_uuid, name, created_at),
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
            """SELECT uri, domain_uuid, domain_name, name, created_at, policy, parent, xml,
                      files, libvirt_metadata, deleted_at, held_by
               FROM snapshots WHERE domain_uuid = ? AND name = ? AND deleted_at IS NULL
               ORDER BY created_at DESC, id DESC LIMIT 1""",
            (domain_uuid, name),
        )
        found = cur.fetchone()
        return _row(found) if found else None

    def snapshots(
        self,
        *,
        domain_uuid: str | None = None,
        policy: str | None = None,
        deleted: bool = False,
    ) -> list[SnapshotRow]:
        query = """SELECT uri, domain_uuid, domain_name, name, created_at, policy, parent,
                          xml, files, libvirt_metadata, deleted_at, held_by
                   FROM snapshots WHERE (deleted_at IS NULL OR ?)"""
        args: list[object] = [deleted]
        if domain_uuid is not None:
            query += " AND domain_uuid = ?"
            args.append(domain_uuid)
        if policy is not None:
            query += " AND policy = ?"
            args.append(policy)
        cur = self._database.execute(query + " ORDER BY created_at, id", args)
        return [_row(r) for r in cur.fetchall()]

    # --- operations ---------------------------------------------------------------------

    def record_operation(self, op: Operation) -> None:
        with self._database.transaction(fsync=False):  # a log line: see the module docstring
            self._log(op)

    def _log(self, op: Operation) -> None:
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


class SQLRunLog:
    """The ``runs``, ``claims`` and ``hosts`` tables, for the catalog's host."""

    def __init__(self, database: Database, host: str) -> None:
        self._database = database
        self._host = host

    def get(self, policy: str, domain_uuid: str) -> Run | None:
        cur = self._database.execute(
            """SELECT policy, domain_uuid, uri, domain_name, last_slot, last_success, last_error,
                      last_error_at, in_progress, in_progress_slot, in_progress_since, host_id
               FROM runs WHERE policy = ? AND domain_uuid = ?""",
            (policy, domain_uuid),
        )
        found = cur.fetchone()
        return Run(*found) if found else None

    def all(self) -> list[Run]:
        cur = self._database.execute(
            """SELECT policy, domain_uuid, uri, domain_name, last_slot, last_success, last_error,
                      last_error_at, in_progress, in_progress_slot, in_progress_since, host_id
               FROM runs ORDER BY policy, domain_name"""
        )
        return [Run(*r) for r in cur.fetchall()]

    def unfinished(self) -> list[Run]:
        return [
            r for r in self.all() if r.in_progress is not None and r.host_id in (None, self._host)
        ]

    def start(self, run: Run, snapshot: str, slot: int, now: int) -> None:
        # Right before libvirt: no fsync of its own (see the module docstring).  Every
        # statement is conditional on the claim, and the claim's answer is read after the
        # commit: on a database server the whole start is one round trip.
        key = (run.policy, run.domain_uuid)
        mine = (*key, slot, self._host)
        with self._database.transaction(fsync=False):
            claim = self._database.execute(
                """INSERT INTO claims (policy, domain_uuid, slot, host_id, claimed_at)
                   SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM runs
                       WHERE policy = ? AND domain_uuid = ? AND host_id <> ? AND last_slot >= ?)
                   ON CONFLICT (policy, domain_uuid, slot) DO UPDATE SET host_id = claims.host_id
                   RETURNING host_id""",
                (*mine, now, *key, self._host, slot),
            )
            # The claims of the slots before the last one served are settled by it.
            self._database.execute(
                """DELETE FROM claims WHERE policy = ? AND domain_uuid = ? AND slot <
                       (SELECT last_slot FROM runs WHERE policy = ? AND domain_uuid = ?)
                   AND EXISTS (SELECT 1 FROM claims
                       WHERE policy = ? AND domain_uuid = ? AND slot = ? AND host_id = ?)""",
                (*key, *key, *mine),
            )
            self._database.execute(
                """INSERT INTO runs (policy, domain_uuid, uri, domain_name, in_progress,
                       in_progress_slot, in_progress_since, host_id)
                   SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM claims
                       WHERE policy = ? AND domain_uuid = ? AND slot = ? AND host_id = ?)
                   ON CONFLICT (policy, domain_uuid) DO UPDATE SET uri = excluded.uri,
                       domain_name = excluded.domain_name, in_progress = excluded.in_progress,
                       in_progress_slot = excluded.in_progress_slot,
                       in_progress_since = excluded.in_progress_since,
                       host_id = excluded.host_id""",
                (*key, run.uri, run.domain_name, snapshot, slot, now, self._host, *mine),
            )
        holder = claim.fetchone()
        if holder is None:  # another host served this slot (or a later one) already
            found = self._database.execute(
                "SELECT host_id FROM runs WHERE policy = ? AND domain_uuid = ?", key
            ).fetchone()
            raise ClaimedElsewhere.of(
                run, slot, str(found[0] if found else "?"), "served it already"
            )
        if str(holder[0]) != self._host:
            raise ClaimedElsewhere.of(run, slot, str(holder[0]), "claimed it first")

    def claim_group(self, policy: str, slot: int, now: int) -> None:
        with self._database.transaction(fsync=False):
            claim = self._database.execute(
                """INSERT INTO claims (policy, domain_uuid, slot, host_id, claimed_at)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (policy, domain_uuid, slot) DO UPDATE SET host_id = claims.host_id
                   RETURNING host_id""",
                (policy, GROUP_CLAIM, slot, self._host, now),
            )
            # The group's claims of the slots before this one are settled by it.
            self._database.execute(
                "DELETE FROM claims WHERE policy = ? AND domain_uuid = ? AND slot < ?",
                (policy, GROUP_CLAIM, slot),
            )
        found = claim.fetchone()
        holder = str(found[0]) if found is not None else self._host
        if holder != self._host:
            raise ClaimedElsewhere.group(policy, slot, holder)

    def finish(
        self, policy: str, domain_uuid: str, *, slot: int | None, error: str | None, now: int
    ) -> None:
        # No fsync of its own: if power loss takes it, the next start reconciles the run.
        # Only this host's run (or one of before runs had a host): another host's run in
        # progress is that host's to end.
        mine = (policy, domain_uuid, self._host)
        with self._database.transaction(fsync=False):
            if slot is not None:
                self._database.execute(
                    """UPDATE runs SET last_slot = ?, last_success = ? WHERE policy = ?
                       AND domain_uuid = ? AND (host_id IS NULL OR host_id = ?)""",
                    (slot, now, *mine),
                )
            if error is not None:
                self._database.execute(
                    """UPDATE runs SET last_error = ?, last_error_at = ? WHERE policy = ?
                       AND domain_uuid = ? AND (host_id IS NULL OR host_id = ?)""",
                    (error, now, *mine),
                )
            self._database.execute(
                """UPDATE runs SET in_progress = NULL, in_progress_slot = NULL,
                   in_progress_since = NULL WHERE policy = ? AND domain_uuid = ?
                   AND (host_id IS NULL OR host_id = ?)""",
                mine,
            )

    def seen(self, host: HostRow) -> None:
        with self._database.transaction(fsync=False):
            self._database.execute(
                """INSERT INTO hosts (host_id, seen_at, pid, version, uris)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (host_id) DO UPDATE SET seen_at = excluded.seen_at,
                       pid = excluded.pid, version = excluded.version, uris = excluded.uris""",
                (host.host_id, host.seen_at, host.pid, host.version, json.dumps(list(host.uris))),
            )

    def begin_move(self, move: MoveRow) -> None:
        with self._database.transaction():  # the only copy of the metadata for a while
            self._database.execute("DELETE FROM moves WHERE domain_uuid = ?", (move.domain_uuid,))
            self._database.execute(
                """INSERT INTO moves (domain_uuid, domain_name, source_uri, target_uri, step,
                       snapshots, current, since, host_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    move.domain_uuid, move.domain_name, move.source_uri, move.target_uri,
                    move.step, json.dumps([list(s) for s in move.snapshots]), move.current,
                    move.since, self._host,
                ),
            )  # fmt: skip

    def move_step(self, domain_uuid: str, step: str) -> None:
        with self._database.transaction():
            self._database.execute(
                "UPDATE moves SET step = ? WHERE domain_uuid = ?", (step, domain_uuid)
            )

    def end_move(self, domain_uuid: str) -> None:
        with self._database.transaction():
            self._database.execute("DELETE FROM moves WHERE domain_uuid = ?", (domain_uuid,))

    def moves(self) -> list[MoveRow]:
        cur = self._database.execute(
            """SELECT domain_uuid, domain_name, source_uri, target_uri, step, snapshots,
                      current, since, host_id FROM moves ORDER BY since, domain_name"""
        )
        return [_move(r) for r in cur.fetchall()]

    def hosts(self) -> list[HostRow]:
        cur = self._database.execute(
            "SELECT host_id, seen_at, pid, version, uris FROM hosts ORDER BY host_id"
        )
        return [
            HostRow(str(r[0]), int(r[1]), r[2], r[3], tuple(json.loads(str(r[4]))))
            for r in cur.fetchall()
        ]


def _move(r: Sequence[Any]) -> MoveRow:
    snapshots = tuple((str(n), str(x)) for n, x in json.loads(str(r[5])))
    return MoveRow(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), snapshots, r[6], int(r[7]), r[8]
    )


def _row(values: Sequence[Any]) -> SnapshotRow:
    """A snapshot row from its columns, in the order the snapshot queries select them."""
    uri, uuid, domain, name, created, policy, parent, xml, files, held, deleted, by = values
    return SnapshotRow(
        uri=str(uri),
        domain_uuid=str(uuid),
        domain_name=str(domain),
        name=str(name),
        created_at=int(created),
        policy=None if policy is None else str(policy),
        parent=None if parent is None else str(parent),
        xml=str(xml),
        files=tuple(json.loads(files)),
        libvirt_metadata=bool(held),
        deleted_at=None if deleted is None else int(deleted),
        held_by=None if by is None else str(by),
    )
