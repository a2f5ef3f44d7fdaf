"""What the rest of snapshotd needs from a catalog, and the rows it keeps: pure types only.

``Catalog`` and ``RunLog`` are Protocols; ``catalog/sqlite.py`` (the catalog a daemon
keeps in its state directory) and ``catalog/memory.py`` (for tests) implement them, on
``CatalogBase`` (what the two do alike), and ``tests/unit/test_catalog.py`` holds both
to the same contract:

* snapshot records: a snapshot is "ours" when a live (not deleted) row has its domain
  UUID, name and libvirt creation time; a row is never recorded twice (AlreadyRecorded),
  deleted rows included;
* the operations log, newest first;
* runs: where each (policy, domain) stream stands, with the run in progress, if any;
* the per-domain lock: one operation on a domain at a time, across threads and (for a
  catalog shared through files) processes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol, Self

from snapshotd.errors import SnapshotdError

LOCK_WAIT = 120.0  # seconds an operation waits for another one on the same domain

# Holds a domain's lock: (UUID, domain name, seconds to wait) -> the hold.
LockHolder = Callable[[str, str, float], AbstractContextManager[None]]


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One snapshot snapshotd made (or adopted), as the catalog keeps it."""

    uri: str
    domain_uuid: str
    domain_name: str
    name: str
    created_at: int  # libvirt's creationTime (seconds since the epoch)
    policy: str | None  # None: taken by hand with `snapshotd take`
    parent: str | None
    xml: str  # the secure XML, as libvirt returned it (or as it would have kept it)
    files: tuple[str, ...]  # the files the snapshot created
    libvirt_metadata: bool  # False: NO_METADATA, only the catalog knows it
    deleted_at: int | None = None  # set when snapshotd deleted it
    # The host whose libvirt holds its metadata, as the catalog recorded it (None: none
    # does, or not known); where a row is, not what it is: not compared.
    held_by: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Operation:
    """One line of the operations log."""

    at: int
    uri: str
    operation: str  # create | delete | ...
    outcome: str  # ok | failed | skipped | kept
    policy: str | None = None
    domain_uuid: str | None = None
    domain_name: str | None = None
    snapshot: str | None = None
    message: str | None = None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """Where one (policy, domain) stands: what the daemon's schedule resumes from."""

    policy: str
    domain_uuid: str
    uri: str
    domain_name: str
    last_slot: int | None = None  # the scheduled instant the last good run served
    last_success: int | None = None  # when it finished
    last_error: str | None = None
    last_error_at: int | None = None
    in_progress: str | None = None  # the snapshot being taken right now, if any
    in_progress_slot: int | None = None
    in_progress_since: int | None = None
    host_id: str | None = None  # the host that started the last run ("": a lone host's)


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One member snapshot of a consistency group (its row in the snapshots table)."""

    uri: str
    domain_uuid: str
    domain_name: str
    created_at: int  # the member snapshot's libvirt creationTime


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One snapshot of a consistency group: the policy, the name its members share."""

    policy: str
    name: str
    taken_at: int  # the group run's instant
    members: tuple[GroupMember, ...]
    partial: bool = False  # on_member_failure: partial kept fewer members than it had
    pause_ms: int | None = None  # the first hold to the last release; None: none held
    # The members' snapshots on other connections too (replicate, or an import on another
    # connection): the same domain UUID, name and creation time as a member, another URI.
    copies: tuple[GroupMember, ...] = ()

    def everywhere(self, member: GroupMember) -> tuple[GroupMember, ...]:
        """``member`` and its copies: every connection that has its snapshot's metadata."""
        same = (member.domain_uuid, member.created_at)
        return (member, *(c for c in self.copies if (c.domain_uuid, c.created_at) == same))


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A member a group run is holding still right now (suspended or frozen)."""

    policy: str
    name: str  # the group's snapshot
    uri: str
    domain_uuid: str
    domain_name: str
    hold: str  # suspend | freeze
    since: int


@dataclass(frozen=True, slots=True)
class Newest:
    """A domain's newest live snapshot in the catalog, and the host that recorded it."""

    domain_uuid: str
    domain_name: str
    policy: str | None
    name: str
    created_at: int
    uri: str
    host_id: str | None  # None: recorded before catalogs had hosts; "": a lone host's


def member_of(
    groups: list[GroupRow], domain_uuid: str, name: str, created_at: int
) -> GroupRow | None:
    """The group among ``groups`` that this snapshot is a member of, or None."""
    for group in groups:
        if group.name == name and any(
            (m.domain_uuid, m.created_at) == (domain_uuid, created_at) for m in group.members
        ):
            return group
    return None


@dataclass(frozen=True, slots=True)
class MoveRow:
    """A ``snapshotd migrate`` under way: the domain's snapshot metadata, kept in the
    catalog while no libvirt has it, and the step it got to."""

    domain_uuid: str
    domain_name: str
    source_uri: str
    target_uri: str
    step: str  # exported | removed | migrating | migrated
    snapshots: tuple[tuple[str, str], ...]  # (name, secure XML), parents first
    current: str | None
    since: int
    host_id: str | None = None


class AlreadyRecorded(Exception):
    """The catalog already has a row for this (domain UUID, name, creation time)."""


class CatalogUnavailable(SnapshotdError):
    """The catalog cannot be reached right now (a database server down or cut off):
    what needed it may be tried again later."""


GROUP_CLAIM = "group"  # the domain column of a group slot's claim (never a UUID)


class ClaimedElsewhere(SnapshotdError):
    """Another host of a shared catalog has this (policy, domain, slot): it takes it."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder

    @classmethod
    def group(cls, policy: str, slot: int, holder: str) -> ClaimedElsewhere:
        """The refusal of a group policy's ``slot``: ``holder`` claimed it first."""
        return cls(
            f"group {policy}: host {holder!r} claimed it first (slot {slot}); this host leaves it",
            holder,
        )

    @classmethod
    def of(cls, run: Run, slot: int, holder: str, what: str) -> ClaimedElsewhere:
        """The refusal of ``run``'s ``slot``: ``holder`` ``what`` (claimed it first, ...)."""
        return cls(
            f"{run.domain_name}: host {holder!r} {what} (policy {run.policy!r}, slot {slot}); "
            "this host leaves it",
            holder,
        )


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host of a shared catalog, as its daemon last reported itself."""

    host_id: str
    seen_at: int  # the daemon's last contact (epoch seconds)
    pid: int | None
    version: str | None
    uris: tuple[str, ...]  # its connections, without secrets


class RunLog(Protocol):
    """The runs: written before and after every scheduled snapshot.

    A run that was started but never finished (kill -9, a watchdog restart) is found
    again with ``unfinished()``, so the daemon can reconcile it with libvirt.
    """

    def get(self, policy: str, domain_uuid: str) -> Run | None:
        """The stream's run, or None when it never ran."""
        ...

    def all(self) -> list[Run]:
        """Every run, by policy, then domain name."""
        ...

    def unfinished(self) -> list[Run]:
        """The runs with a snapshot in progress that this host started."""
        ...

    def start(self, run: Run, snapshot: str, slot: int, now: int) -> None:
        """Mark ``snapshot`` (for scheduled instant ``slot``) in progress since ``now``;
        the stream's row is made from ``run`` if it has none (its last_* are kept).

        The slot is claimed for this host first, in the same transaction: ClaimedElsewhere,
        and nothing written, when another host claimed this (policy, domain, slot) or
        its run already served this slot or a later one.  A host claims a slot once; its
        own retries of the slot go on."""
        ...

    def claim_group(self, policy: str, slot: int, now: int) -> None:
        """Claim a group policy's ``slot`` for this host, before its members' runs start:
        ClaimedElsewhere when another host of the catalog claimed it first (it runs the
        whole group; each host that has the policy sees the same members)."""
        ...

    def seen(self, host: HostRow) -> None:
        """This host's daemon is alive: its row in the hosts of the catalog."""
        ...

    def begin_move(self, move: MoveRow) -> None:
        """Record a migration before its first step (durably): its metadata is kept here
        while neither host's libvirt has it.  Replaces an older record of the domain."""
        ...

    def move_step(self, domain_uuid: str, step: str) -> None: ...

    def end_move(self, domain_uuid: str) -> None: ...

    def moves(self) -> list[MoveRow]:
        """The migrations under way (a killed ``migrate`` leaves its record)."""
        ...

    def hosts(self) -> list[HostRow]:
        """Every host that ever reported to this catalog, by host id."""
        ...

    def finish(
        self, policy: str, domain_uuid: str, *, slot: int | None, error: str | None, now: int
    ) -> None:
        """End the run in progress: with ``slot`` it served that slot; ``error`` says why
        not.  A stream that has no row is left without one."""
        ...


class GroupLog(Protocol):
    """Consistency groups: the groups made, and the members held still right now.

    A hold is written (durably) before its member is suspended or frozen and removed
    once it is released, so a daemon killed in between finds, when it starts again,
    every member it left paused or frozen (``held()``).
    """

    def record(self, group: GroupRow) -> None:
        """Record a group whose member snapshots are recorded already."""
        ...

    def all(self, policy: str | None = None) -> list[GroupRow]:
        """Groups, oldest first, that still have a live member snapshot; each with its
        live members only (a prune that deleted some members goes on with the rest)."""
        ...

    def of(self, domain_uuid: str, name: str, created_at: int) -> GroupRow | None:
        """The group this snapshot is a member of, or None."""
        ...

    def join(self, group: GroupRow) -> None:
        """Add ``group``'s members (their snapshots recorded already) to the catalog's
        group of the same policy, name and taken_at: an import of a member's export, or a
        replicate.  The group is made, with ``group``'s partial and pause_ms, when the
        catalog has none; one it has keeps its own.  A member whose snapshot is in the
        group already is left as it is when it is there on the same URI (joining twice
        changes nothing), and becomes a copy on its URI when it is not (``copies``).
        All or nothing: AlreadyRecorded, and nothing added, when a member's snapshot is
        in another group.  ``group.copies`` are not looked at."""
        ...

    def leave(self, uri: str, domain_uuid: str, name: str, created_at: int) -> None:
        """This member snapshot's metadata is no longer on ``uri`` (replicate
        --remove-source-metadata): that URI's membership goes, and a copy on another URI
        takes the member's place; when it was its last, the snapshot is in no group.
        Nothing when the snapshot is not a member on ``uri``."""
        ...

    def hold(self, row: HoldRow) -> None: ...

    def release(self, domain_uuid: str) -> None: ...

    def held(self) -> list[HoldRow]: ...


class Catalog(Protocol):
    """The catalog: snapshot records, ownership, runs, the operations log, domain locks.

    Use it as a context manager, or call close().
    """

    @property
    def location(self) -> str:
        """Where the catalog is, for messages (a file, a database, "memory")."""
        ...

    # This host's id in the catalog: "" for a catalog that serves one host (SQLite in a
    # state directory), the host id of snapshotd.yaml's catalog: for a shared one.
    host_id: str

    @property
    def runs(self) -> RunLog:
        """The runs: where each (policy, domain) stream stands."""
        ...

    @property
    def groups(self) -> GroupLog:
        """Consistency groups and the members held still right now."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *_exc: object) -> None: ...

    def domain_lock(
        self, uuid: str, domain: str, *, wait: float = LOCK_WAIT
    ) -> AbstractContextManager[None]:
        """Hold the domain's lock for one operation: exclusive between threads and
        processes that use this catalog.  A second holder waits up to ``wait`` seconds,
        then SnapshotdError ("domain ... is busy"); a UUID that is not one is refused
        (SnapshotdError) before anything is made."""
        ...

    # --- snapshots ---------------------------------------------------------------------

    def record_snapshot(self, row: SnapshotRow, logged: Operation | None = None) -> None:
        """Record a snapshot (durably); AlreadyRecorded if its row exists, even deleted.
        ``logged``: the operations log's line of it, added in the same transaction."""
        ...

    def mark_deleted(self, domain_uuid: str, name: str, created_at: int, when: int) -> None:
        """snapshotd deleted this snapshot at ``when``: it is no longer ours."""
        ...

    def owner(self, domain_uuid: str, name: str, created_at: int | None) -> SnapshotRow | None:
        """The live row for this exact snapshot, or None when it is not ours."""
        ...

    def set_libvirt_metadata(
        self, domain_uuid: str, name: str, created_at: int, held: bool
    ) -> None:
        """Record whether libvirt now holds this snapshot's metadata (after a redefine)."""
        ...

    def update_snapshot(
        self, domain_uuid: str, name: str, created_at: int, *, xml: str, files: tuple[str, ...]
    ) -> None:
        """Replace a live row's XML and file list with what libvirt says now (a revert
        to an external snapshot gives it new overlay files)."""
        ...

    def find(self, domain_uuid: str, name: str) -> SnapshotRow | None:
        """The newest live row for a snapshot name of a domain, or None."""
        ...

    def snapshots(
        self,
        *,
        domain_uuid: str | None = None,
        policy: str | None = None,
        deleted: bool = False,
    ) -> list[SnapshotRow]:
        """Live rows (with ``deleted``, the deleted ones too), oldest first (by creation
        time, then by the order recorded)."""
        ...

    def newest(self) -> list[Newest]:
        """Each domain's newest live snapshot, wherever it was taken, by domain name."""
        ...

    # --- operations --------------------------------------------------------------------

    def record_operation(self, op: Operation) -> None:
        """Add a line to the operations log."""
        ...

    def operations(self, *, limit: int = 100) -> list[Operation]:
        """The most recent operations, newest first."""
        ...


class CatalogBase:
    """What both catalogs do alike: ``domain_lock`` through the ``hold`` each is made
    with, and use as a context manager that closes the catalog on the way out."""

    def __init__(self, hold: LockHolder) -> None:
        self._hold = hold

    def close(self) -> None:
        """Nothing to release here; a catalog with a connection closes it."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def domain_lock(
        self, uuid: str, domain: str, *, wait: float = LOCK_WAIT
    ) -> AbstractContextManager[None]:
        return self._hold(uuid, domain, wait)
