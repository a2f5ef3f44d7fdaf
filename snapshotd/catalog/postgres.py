"""The PostgreSQL catalog: one database that a fleet of hosts shares (docs/fleet.md).

The only module in snapshotd that imports psycopg.  It runs catalog/sql.py's SQL, the
same as the SQLite catalog, on one connection (autocommit; each write its own
transaction), with catalog/migrations.py's POSTGRES schema, brought up to date when a
catalog is opened.  What differs from SQLite:

* the connection: ``catalog.url`` in snapshotd.yaml (a libpq URL; TLS through its
  ``sslmode``/``sslrootcert``/... parameters), the password read from
  ``catalog.password_file``, which must be readable by its owner alone; the URL in
  messages never carries a password (``location``);
* a commit without an fsync of its own (``fsync=False``: the run markers and the
  operations log, as in SQLite) is ``synchronous_commit = off`` for that transaction:
  a crash of the database server can lose the last of those, never half of one, and
  never a snapshot's record (committed with the server's default, on);
* the domain locks are PostgreSQL advisory locks (session level, key: the domain's
  UUID): one operation on a domain at a time across every host of the fleet; they go
  with the connection, so a host that dies or loses the database loses its locks;
* migrations take a transaction-level advisory lock first: hosts starting at once
  migrate the schema once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from snapshotd.catalog import migrations
from snapshotd.catalog.api import LOCK_WAIT, AlreadyRecorded, CatalogUnavailable
from snapshotd.catalog.locks import ThreadLocks, check_uuid
from snapshotd.catalog.sql import Cursor, SQLCatalog, apply_migrations
from snapshotd.config.settings import DatabaseSettings
from snapshotd.config.values import sanitize_url
from snapshotd.errors import SnapshotdError

CONNECT_TIMEOUT = 10  # seconds to reach the database server
# Advisory lock keys: (class, object).  The class says which of snapshotd's locks.
_MIGRATION_LOCK = (0x736E6170, 0)  # 'snap': the schema
_DOMAIN_LOCK_CLASS = 0x736E6171  # with hashtext(UUID): one domain
_POLL = 0.1  # seconds between two tries of a domain lock
_IDLE = psycopg.pq.TransactionStatus.IDLE


class DatabaseError(CatalogUnavailable):
    """The database cannot be reached or refused snapshotd (the message says which)."""


def host_id(settings: DatabaseSettings) -> str:
    """This host's id in the shared catalog: ``catalog.host_id``, or the host's name."""
    return settings.host_id or socket.gethostname().partition(".")[0]


def read_password(path: str) -> str:
    """The password in ``path`` (its first line), refused when others can read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise DatabaseError(
            f"catalog.password_file {path}: cannot be read ({exc.strerror}); create it "
            f"with the database role's password (install -m 0600 /dev/null {path})"
        ) from exc
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DatabaseError(f"catalog.password_file {path}: not a regular file")
        if info.st_mode & 0o077:
            raise DatabaseError(
                f"catalog.password_file {path}: others can read it (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); fix: chmod 0600 {path}"
            )
        if info.st_uid != os.geteuid():
            raise DatabaseError(
                f"catalog.password_file {path}: owned by uid {info.st_uid}, not by the "
                f"user snapshotd runs as (uid {os.geteuid()}); fix: chown {os.geteuid()} {path}"
            )
        text = file.read(4096).decode("utf-8", errors="replace")
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise DatabaseError(f"catalog.password_file {path}: is empty")
    return password


class _Database:
    """The catalog's connection: catalog/sql.py's statements with libpq's placeholders."""

    integrity_error: type[Exception] = psycopg.IntegrityError

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._where = sanitize_url(settings.url)
        self.connection = connect(settings)
        self._depth = 0  # transactions open on the connection

    def _lost(self) -> bool:
        return bool(self.connection.closed or self.connection.broken)

    def _usable(self) -> psycopg.Connection[Any]:
        """The connection, made anew when the server closed the old one (a restart of the
        database): outside a transaction nothing is lost by that, and the domain locks
        its session held were lost with it anyway."""
        if self._lost() and self._depth == 0:
            self.connection.close()
            self.connection = connect(self._settings)
        return self.connection

    def is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def duplicate(self, message: str) -> AlreadyRecorded:
        return AlreadyRecorded(message)

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        try:
            return self._usable().execute(sql.replace("?", "%s"), args)
        except psycopg.OperationalError as exc:
            if self._depth == 0 and self._lost():
                # The server went away since the last statement: once more, anew.
                try:
                    return self._usable().execute(sql.replace("?", "%s"), args)
                except psycopg.OperationalError as again:
                    raise _unreachable(self._where, again) from again
            raise _unreachable(self._where, exc) from exc

    @contextlib.contextmanager
    def transaction(self, *, fsync: bool = True) -> Iterator[None]:
        try:
            connection = self._usable()
            self._depth += 1
            try:
                # Pipeline mode: BEGIN, the writes and COMMIT go out without waiting for
                # each other's answers (a read in between waits for its own); a write
                # transaction costs one round trip, or one more per read in it.  BEGIN and
                # COMMIT are sent as statements: psycopg's transaction() costs more time
                # than the round trip (bench/catalog.py).
                with connection.pipeline():
                    connection.execute("BEGIN")
                    if not fsync:
                        connection.execute("SET LOCAL synchronous_commit TO off")
                    yield
                    connection.execute("COMMIT")
            finally:
                self._depth -= 1
                if not self._lost() and connection.info.transaction_status != _IDLE:
                    # The body raised, or a statement failed (its error comes at the
                    # pipeline's end, COMMIT skipped): nothing of it is kept.
                    with contextlib.suppress(psycopg.Error):
                        connection.execute("ROLLBACK")
        except psycopg.OperationalError as exc:
            raise _unreachable(self._where, exc) from exc

    def close(self) -> None:
        self.connection.close()


def _unreachable(where: str, exc: psycopg.Error) -> DatabaseError:
    # libpq says it once per address and TLS attempt: each thing said once.
    text = str(exc).removeprefix("connection failed: ")
    lines = dict.fromkeys(" ".join(line.split()) for line in text.splitlines())
    detail = " ".join(line for line in lines if line) or type(exc).__name__
    hint = ""
    if "password authentication failed" in detail:
        hint = "; check that catalog.password_file holds the role's password"
    elif "refused" in detail or "timeout" in detail or "could not translate" in detail:
        hint = "; start the database server, or correct catalog.url"
    return DatabaseError(f"the catalog database {where}: {detail}{hint}")


def connect(
    settings: DatabaseSettings, *, timeout: float = CONNECT_TIMEOUT
) -> psycopg.Connection[Any]:
    """A connection to the catalog's database; DatabaseError (with the URL, never the
    password) when it cannot be made."""
    where = sanitize_url(settings.url)
    password = read_password(settings.password_file) if settings.password_file else None
    extra: dict[str, Any] = {"password": password} if password is not None else {}
    try:
        return psycopg.connect(
            settings.url,
            autocommit=True,
            connect_timeout=max(1, round(timeout)),
            application_name=f"snapshotd on {host_id(settings)}, pid {os.getpid()}",
            **extra,
        )
    except psycopg.Error as exc:
        raise _unreachable(where, exc) from exc


class PostgresCatalog(SQLCatalog):
    """The shared catalog in the database ``settings.url`` names."""

    def __init__(self, settings: DatabaseSettings, *, shared: bool = False) -> None:
        """Connect and bring the schema up to date.  ``shared`` is accepted for
        open_catalog's sake: a psycopg connection may be handed between threads."""
        del shared
        where = sanitize_url(settings.url)
        database = _Database(settings)
        super().__init__(database, self._domain_lock, where, host_id(settings))
        self._pg = database
        self._threads = ThreadLocks()
        try:
            self._migrate()
        except BaseException:
            database.close()
            raise

    def _migrate(self) -> None:
        with self._pg.transaction():
            self._pg.execute("SELECT pg_advisory_xact_lock(?, ?)", _MIGRATION_LOCK)
            current = self._recorded_version()
            todo = migrations.pending(current, migrations.POSTGRES, where=self.location)
            apply_migrations(self._pg, todo)

    def _recorded_version(self) -> int:
        found = self._pg.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        if not found or not found[0]:
            return 0
        row = self._pg.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else 0

    @property
    def schema_version(self) -> int:
        return self._recorded_version()

    @contextlib.contextmanager
    def _domain_lock(self, uuid: str, domain: str, wait: float = LOCK_WAIT) -> Iterator[None]:
        """The fleet-wide lock of one domain: an advisory lock on this connection (for
        other connections, on this host or another), after the catalog's own lock of the
        domain (for the threads sharing this connection: an advisory lock is its
        session's, taken again by the same session at once)."""
        check_uuid(uuid, domain)
        key = uuid.lower()
        deadline = time.monotonic() + wait
        with self._threads.hold(uuid, domain, wait):
            yield from self._advisory(key, domain, wait, deadline)

    def _advisory(self, key: str, domain: str, wait: float, deadline: float) -> Iterator[None]:
        while True:
            got = self._pg.execute(
                "SELECT pg_try_advisory_lock(?, hashtext(?))", (_DOMAIN_LOCK_CLASS, key)
            ).fetchone()
            if got and got[0]:
                break
            if time.monotonic() >= deadline:
                raise SnapshotdError(
                    f"domain {domain!r} is busy: {self._lock_holder(key)} has been working "
                    f"on it for more than {wait:g} s; try again later"
                )
            time.sleep(_POLL)
        try:
            yield
        finally:
            with contextlib.suppress(DatabaseError):  # a lost connection lost the lock too
                self._pg.execute(
                    "SELECT pg_advisory_unlock(?, hashtext(?))", (_DOMAIN_LOCK_CLASS, key)
                )

    def _lock_holder(self, key: str) -> str:
        """Who holds a domain's lock, as its connection names itself."""
        row = self._pg.execute(
            """SELECT a.application_name FROM pg_locks l
               JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.granted AND l.classid = ?::oid
                 AND l.objid = hashtext(?)::oid""",
            (_DOMAIN_LOCK_CLASS, key),
        ).fetchone()
        return f"another {row[0]}" if row and row[0] else "another snapshotd"


__all__ = [
    "DatabaseError",
    "PostgresCatalog",
    "connect",
    "host_id",
    "read_password",
    "sanitize_url",
]
