"""A catalog that lives in memory: the same contract as the SQLite catalog, nothing on disk.

For tests (with a fake hypervisor, a policy run or retention in milliseconds) and for
anything that needs a catalog for the life of one process.  Thread-safe: every call
holds one lock; the domain locks are threading locks, so they exclude the threads of
this process (there is no other process to exclude).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import replace

from snapshotd.catalog.api import (
    GROUP_CLAIM,
    AlreadyRecorded,
    CatalogBase,
    ClaimedElsewhere,
    GroupMember,
    GroupRow,
    HoldRow,
    HostRow,
    MoveRow,
    Newest,
    Operation,
    Run,
    SnapshotRow,
    member_of,
)
from snapshotd.catalog.locks import ThreadLocks


class MemoryRunLog:
    """The runs, in a dict by (policy, domain UUID); the slots claimed, the hosts."""

    def __init__(self, guard: threading.Lock, host: str = "") -> None:
        self._guard = guard
        self._host = host
        self._runs: dict[tuple[str, str], Run] = {}
        self._claims: dict[tuple[str, str, int], str] = {}
        self._hosts: dict[str, HostRow] = {}
        self._moves: dict[str, MoveRow] = {}

    def for_host(self, host: str) -> MemoryRunLog:
        """The same runs, as another host of the catalog sees them."""
        other = copy.copy(self)
        other._host = host
        return other

    def _mine(self, run: Run) -> bool:
        return run.host_id in (None, self._host)

    def get(self, policy: str, domain_uuid: str) -> Run | None:
        with self._guard:
            return self._runs.get((policy, domain_uuid))

    def all(self) -> list[Run]:
        with self._guard:
            return sorted(self._runs.values(), key=lambda r: (r.policy, r.domain_name))

    def unfinished(self) -> list[Run]:
        return [r for r in self.all() if r.in_progress is not None and self._mine(r)]

    def start(self, run: Run, snapshot: str, slot: int, now: int) -> None:
        key = (run.policy, run.domain_uuid)
        with self._guard:
            found = self._runs.get(key)
            elsewhere = found is not None and not self._mine(found)
            if elsewhere and found and found.last_slot is not None and found.last_slot >= slot:
                raise ClaimedElsewhere.of(run, slot, str(found.host_id), "served it already")
            holder = self._claims.setdefault((*key, slot), self._host)
            if holder != self._host:
                raise ClaimedElsewhere.of(run, slot, holder, "claimed it first")
            if found is not None and found.last_slot is not None:
                served = found.last_slot
                for claim in [c for c in self._claims if c[:2] == key and c[2] < served]:
                    del self._claims[claim]
            known = found or Run(run.policy, run.domain_uuid, run.uri, run.domain_name)
            self._runs[key] = replace(
                known,
                uri=run.uri,
                domain_name=run.domain_name,
                in_progress=snapshot,
                in_progress_slot=slot,
                in_progress_since=now,
                host_id=self._host,
            )

    def claim_group(self, policy: str, slot: int, now: int) -> None:
        with self._guard:
            holder = self._claims.setdefault((policy, GROUP_CLAIM, slot), self._host)
        if holder != self._host:
            raise ClaimedElsewhere.group(policy, slot, holder)

    def seen(self, host: HostRow) -> None:
        with self._guard:
            self._hosts[host.host_id] = host

    def begin_move(self, move: MoveRow) -> None:
        with self._guard:
            self._moves[move.domain_uuid] = replace(move, host_id=self._host)

    def move_step(self, domain_uuid: str, step: str) -> None:
        with self._guard:
            if domain_uuid in self._moves:
                self._moves[domain_uuid] = replace(self._moves[domain_uuid], step=step)

    def end_move(self, domain_uuid: str) -> None:
        with self._guard:
            self._moves.pop(domain_uuid, None)

    def moves(self) -> list[MoveRow]:
        with self._guard:
            return sorted(self._moves.values(), key=lambda m: (m.since, m.domain_name))

    def hosts(self) -> list[HostRow]:
        with self._guard:
            return [self._hosts[h] for h in sorted(self._hosts)]

    def finish(
        self, policy: str, domain_uuid: str, *, slot: int | None, error: str | None, now: int
    ) -> None:
        key = (policy, domain_uuid)
        with self._guard:
            run = self._runs.get(key)
            if run is None or not self._mine(run):
                return
            if slot is not None:
                run = replace(run, last_slot=slot, last_success=now)
            if error is not None:
                run = replace(run, last_error=error, last_error_at=now)
            self._runs[key] = replace(
                run, in_progress=None, in_progress_slot=None, in_progress_since=None
            )


class MemoryGroupLog:
    """Groups and holds in memory; a group lives while one of its members' rows does."""

    def __init__(self, guard: threading.Lock, rows: list[SnapshotRow]) -> None:
        self._guard = guard
        self._rows = rows  # the catalog's own list
        self._groups: list[GroupRow] = []
        self._holds: dict[str, tuple[str, HoldRow]] = {}  # by UUID: (host, hold)
        self._host = ""

    def for_host(self, host: str) -> MemoryGroupLog:
        """The same groups and holds, as another host of the catalog sees them."""
        other = copy.copy(self)
        other._host = host
        return other

    def record(self, group: GroupRow) -> None:
        with self._guard:
            taken = {(m.domain_uuid, g.name, m.created_at) for g in self._groups for m in g.members}
            for m in group.members:
                if (m.domain_uuid, group.name, m.created_at) in taken:
                    raise AlreadyRecorded(
                        f"snapshot {group.name!r} of {m.domain_name!r} is in a group already"
                    )
            self._groups.append(group)

    def join(self, group: GroupRow) -> None:
        with self._guard:
            groups = list(self._groups)
            for m in group.members:
                groups = self._joined(groups, group, m)
            self._groups[:] = groups

    def _joined(self, groups: list[GroupRow], group: GroupRow, m: GroupMember) -> list[GroupRow]:
        """``groups`` with ``m`` joined to ``group``'s group (see GroupLog.join)."""
        key = (group.policy, group.name, group.taken_at)
        same = (m.domain_uuid, m.created_at)
        for index, g in enumerate(groups):
            member = next((o for o in g.members if (o.domain_uuid, o.created_at) == same), None)
            if g.name != group.name or member is None:
                continue
            if (g.policy, g.name, g.taken_at) != key:
                raise AlreadyRecorded(
                    f"snapshot {group.name!r} of {m.domain_name!r} is in group {g.policy!r} "
                    f"taken at {g.taken_at} already"
                )
            if m.uri not in {c.uri for c in g.everywhere(member)}:
                groups[index] = replace(g, copies=(*g.copies, m))
            return groups
        for index, g in enumerate(groups):
            if (g.policy, g.name, g.taken_at) == key:
                groups[index] = replace(g, members=(*g.members, m))
                return groups
        return [*groups, replace(group, members=(m,), copies=())]

    def leave(self, uri: str, domain_uuid: str, name: str, created_at: int) -> None:
        same = (domain_uuid, created_at)
        with self._guard:
            for index, g in enumerate(self._groups):
                if g.name != name:
                    continue
                copies = tuple(
                    c for c in g.copies if ((c.domain_uuid, c.created_at), c.uri) != (same, uri)
                )
                members = list(g.members)
                for position, m in enumerate(members):
                    if (m.domain_uuid, m.created_at) != same or m.uri != uri:
                        continue
                    heirs = [c for c in copies if (c.domain_uuid, c.created_at) == same]
                    heir = min(heirs, key=lambda c: c.uri) if heirs else None
                    if heir is None:
                        del members[position]
                    else:
                        members[position] = heir
                        copies = tuple(c for c in copies if c != heir)
                    break
                self._groups[index] = replace(g, members=tuple(members), copies=copies)

    def all(self, policy: str | None = None) -> list[GroupRow]:
        with self._guard:
            live = {(r.domain_uuid, r.name, r.created_at) for r in self._rows if not r.deleted_at}
            found = []
            for g in sorted(self._groups, key=lambda g: g.taken_at):
                members = tuple(
                    m for m in g.members if (m.domain_uuid, g.name, m.created_at) in live
                )
                copies = tuple(
                    c
                    for c in sorted(g.copies, key=lambda c: (c.domain_name, c.uri))
                    if (c.domain_uuid, g.name, c.created_at) in live
                )
                if members and (policy is None or g.policy == policy):
                    found.append(replace(g, members=members, copies=copies))
            return found

    def of(self, domain_uuid: str, name: str, created_at: int) -> GroupRow | None:
        return member_of(self.all(), domain_uuid, name, created_at)

    def hold(self, row: HoldRow) -> None:
        with self._guard:
            self._holds[row.domain_uuid] = (self._host, row)

    def release(self, domain_uuid: str) -> None:
        with self._guard:
            self._holds.pop(domain_uuid, None)

    def held(self) -> list[HoldRow]:
        with self._guard:
            mine = [row for host, row in self._holds.values() if host == self._host]
            return sorted(mine, key=lambda h: (h.since, h.domain_name))


class MemoryCatalog(CatalogBase):
    """A catalog in memory.  Closing it keeps its content (it is one object)."""

    def __init__(self) -> None:
        super().__init__(ThreadLocks().hold)
        self._guard = threading.Lock()
        self._rows: list[SnapshotRow] = []  # in the order recorded
        self._recorded_by: list[str] = []  # the host that recorded each of them
        self._operations: list[Operation] = []  # oldest first
        self._runs = MemoryRunLog(self._guard)
        self._groups = MemoryGroupLog(self._guard, self._rows)
        self.host_id = ""

    def as_host(self, host: str) -> MemoryCatalog:
        """The same catalog, as another host sharing it sees it (its runs and claims)."""
        other = copy.copy(self)
        other._runs = self._runs.for_host(host)
        other._groups = self._groups.for_host(host)
        other.host_id = host
        return other

    @property
    def location(self) -> str:
        return "memory"

    @property
    def runs(self) -> MemoryRunLog:
        return self._runs

    @property
    def groups(self) -> MemoryGroupLog:
        return self._groups

    # --- snapshots -------------------------------------------------------------------

    def record_snapshot(self, row: SnapshotRow, logged: Operation | None = None) -> None:
        key = (row.domain_uuid, row.name, row.created_at)
        with self._guard:
            if any((r.domain_uuid, r.name, r.created_at) == key for r in self._rows):
                raise AlreadyRecorded(
                    f"the catalog already has snapshot {row.name!r} of domain "
                    f"{row.domain_name!r} ({row.domain_uuid}) created at {row.created_at}"
                )
            held_by = self.host_id if row.libvirt_metadata else None
            self._rows.append(replace(row, deleted_at=None, held_by=held_by))
            self._recorded_by.append(self.host_id)
            if logged is not None:
                self._operations.append(logged)

    def newest(self) -> list[Newest]:
        with self._guard:
            best: dict[str, tuple[SnapshotRow, str]] = {}
            for index, r in enumerate(self._rows):  # in the order recorded
                if r.deleted_at is None:
                    known = best.get(r.domain_uuid)
                    if known is None or r.created_at >= known[0].created_at:
                        best[r.domain_uuid] = (r, self._recorded_by[index])
        found = [
            Newest(r.domain_uuid, r.domain_name, r.policy, r.name, r.created_at, r.uri, host)
            for r, host in best.values()
        ]
        return sorted(found, key=lambda n: (n.domain_name, n.domain_uuid))

    def mark_deleted(self, domain_uuid: str, name: str, created_at: int, when: int) -> None:
        with self._guard:
            for index, r in self._matching(domain_uuid, name, created_at):
                self._rows[index] = replace(r, deleted_at=when)

    def owner(self, domain_uuid: str, name: str, created_at: int | None) -> SnapshotRow | None:
        if created_at is None:
            return None
        with self._guard:
            live = [
                r for _, r in self._matching(domain_uuid, name, created_at) if r.deleted_at is None
            ]
        return live[0] if live else None

    def set_libvirt_metadata(
        self, domain_uuid: str, name: str, created_at: int, held: bool
    ) -> None:
        with self._guard:
            for index, r in self._matching(domain_uuid, name, created_at):
                if r.deleted_at is None:
                    by = self.host_id if held else None
                    self._rows[index] = replace(r, libvirt_metadata=held, held_by=by)

    def update_snapshot(
        self, domain_uuid: str, name: str, created_at: int, *, xml: str, files: tuple[str, ...]
    ) -> None:
        with self._guard:
            for index, r in self._matching(domain_uuid, name, created_at):
                if r.deleted_at is None:
                    self._rows[index] = replace(r, xml=xml, files=files)

    def _matching(
        self, domain_uuid: str, name: str, created_at: int
    ) -> list[tuple[int, SnapshotRow]]:
        """The rows of this exact snapshot (at most one: see record_snapshot), by index."""
        key = (domain_uuid, name, created_at)
        return [
            (index, r)
            for index, r in enumerate(self._rows)
            if (r.domain_uuid, r.name, r.created_at) == key
        ]

    def find(self, domain_uuid: str, name: str) -> SnapshotRow | None:
        matching = [r for r in self.snapshots(domain_uuid=domain_uuid) if r.name == name]
        return matching[-1] if matching else None

    def snapshots(
        self,
        *,
        domain_uuid: str | None = None,
        policy: str | None = None,
        deleted: bool = False,
    ) -> list[SnapshotRow]:
        with self._guard:
            live = [
                (r.created_at, index, r)
                for index, r in enumerate(self._rows)
                if (r.deleted_at is None or deleted)
                and (domain_uuid is None or r.domain_uuid == domain_uuid)
                and (policy is None or r.policy == policy)
            ]
        return [r for _, _, r in sorted(live, key=lambda entry: entry[:2])]

    # --- operations ---------------------------------------------------------------------

    def record_operation(self, op: Operation) -> None:
        with self._guard:
            self._operations.append(op)

    def operations(self, *, limit: int = 100) -> list[Operation]:
        with self._guard:
            newest_first = list(reversed(self._operations))
        return newest_first if limit < 0 else newest_first[:limit]  # as SQL's LIMIT
