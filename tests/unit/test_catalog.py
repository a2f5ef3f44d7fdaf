"""The catalog: durable, private, and exact about which snapshots are ours.

The contract tests run against every implementation of snapshotd.catalog.api.Catalog
(SQLite in tmp_path, PostgreSQL in a database of the test bed's server made for the
test, and memory); the tests after them are the SQLite catalog's own: files, modes,
WAL, durability across kill -9, locks across processes (PostgreSQL's own are in
test_catalog_postgres.py).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from snapshotd.catalog import catalog_exists, open_catalog, sqlite
from snapshotd.catalog.api import (
    AlreadyRecorded,
    Catalog,
    ClaimedElsewhere,
    GroupMember,
    GroupRow,
    HoldRow,
    HostRow,
    Operation,
    Run,
    SnapshotRow,
)
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.catalog.migrations import LATEST
from snapshotd.catalog.sqlite import DB_NAME, SQLiteCatalog
from snapshotd.config.settings import DatabaseSettings
from snapshotd.errors import SnapshotdError
from tests.pgserver import fresh_database

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
OTHER = "11111111-2222-3333-4444-555555555555"
URI = "qemu:///system"


def row(name: str, created: int, policy: str | None = "p", uuid: str = UUID) -> SnapshotRow:
    return SnapshotRow(
        uri=URI,
        domain_uuid=uuid,
        domain_name="web",
        name=name,
        created_at=created,
        policy=policy,
        parent=None,
        xml=f"<domainsnapshot><name>{name}</name></domainsnapshot>",
        files=("/a/web.vda.s.qcow2",),
        libvirt_metadata=True,
    )


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "memory":
        with MemoryCatalog() as memory:
            yield memory
    elif request.param == "postgres":
        with fresh_database() as database, open_catalog("", database=database) as opened:
            yield opened
    else:
        with open_catalog(str(tmp_path / "state")) as opened:
            yield opened


# --- the contract: both implementations ------------------------------------------------------


def test_ownership_is_name_and_creation_time(catalog: Catalog) -> None:
    catalog.record_snapshot(row("p-1", 1000))
    owner = catalog.owner(UUID, "p-1", 1000)
    assert owner is not None
    assert owner.policy == "p"
    assert owner.files == ("/a/web.vda.s.qcow2",)
    assert owner == row("p-1", 1000)
    # A snapshot made by hand later under the same name is not ours.
    assert catalog.owner(UUID, "p-1", 2000) is None
    assert catalog.owner(UUID, "p-1", None) is None
    assert catalog.owner("another-uuid", "p-1", 1000) is None


def test_deleted_snapshots_are_no_longer_owned(catalog: Catalog) -> None:
    catalog.record_snapshot(row("p-1", 1000))
    catalog.record_snapshot(row("p-2", 1001))
    catalog.mark_deleted(UUID, "p-1", 1000, 5000)
    assert catalog.owner(UUID, "p-1", 1000) is None
    assert catalog.find(UUID, "p-1") is None
    assert [r.name for r in catalog.snapshots(domain_uuid=UUID)] == ["p-2"]
    assert [r.name for r in catalog.snapshots(policy="p")] == ["p-2"]
    assert catalog.snapshots(policy="other") == []
    everything = catalog.snapshots(domain_uuid=UUID, deleted=True)
    assert [(r.name, r.deleted_at) for r in everything] == [("p-1", 5000), ("p-2", None)]


def test_the_same_snapshot_is_never_recorded_twice_not_even_after_deletion(
    catalog: Catalog,
) -> None:
    catalog.record_snapshot(row("p-1", 1000))
    with pytest.raises(AlreadyRecorded):
        catalog.record_snapshot(row("p-1", 1000, policy="other"))
    catalog.mark_deleted(UUID, "p-1", 1000, 5000)
    with pytest.raises(AlreadyRecorded):
        catalog.record_snapshot(row("p-1", 1000))
    catalog.record_snapshot(row("p-1", 1001))  # the name again, made later: another one
    assert [(r.name, r.created_at) for r in catalog.snapshots()] == [("p-1", 1001)]


def test_snapshots_are_oldest_first_and_filtered(catalog: Catalog) -> None:
    catalog.record_snapshot(row("b", 2000))
    catalog.record_snapshot(row("a", 1000, policy=None))
    catalog.record_snapshot(row("c", 2000, policy="q"))  # same time: the order recorded
    catalog.record_snapshot(row("x", 1500, uuid=OTHER))
    assert [r.name for r in catalog.snapshots()] == ["a", "x", "b", "c"]
    assert [r.name for r in catalog.snapshots(domain_uuid=UUID)] == ["a", "b", "c"]
    assert [r.name for r in catalog.snapshots(domain_uuid=UUID, policy="p")] == ["b"]
    assert [r.name for r in catalog.snapshots(policy="q")] == ["c"]
    assert catalog.snapshots(domain_uuid=OTHER, policy="q") == []


def test_find_gives_the_newest_live_row_of_a_name(catalog: Catalog) -> None:
    catalog.record_snapshot(row("s", 3000))
    catalog.record_snapshot(row("s", 1000))
    found = catalog.find(UUID, "s")
    assert found is not None
    assert found.created_at == 3000
    catalog.mark_deleted(UUID, "s", 3000, 4000)
    found = catalog.find(UUID, "s")
    assert found is not None
    assert found.created_at == 1000
    assert catalog.find(OTHER, "s") is None
    assert catalog.find(UUID, "t") is None


def test_libvirt_metadata_is_recorded_for_live_rows(catalog: Catalog) -> None:
    catalog.record_snapshot(row("s", 1000))
    catalog.set_libvirt_metadata(UUID, "s", 1000, False)
    assert [r.libvirt_metadata for r in catalog.snapshots()] == [False]
    catalog.set_libvirt_metadata(UUID, "s", 1000, True)
    owner = catalog.owner(UUID, "s", 1000)
    assert owner is not None
    assert owner.libvirt_metadata
    catalog.set_libvirt_metadata(UUID, "s", 999, False)  # not this snapshot: no change
    assert [r.libvirt_metadata for r in catalog.snapshots()] == [True]


def test_update_snapshot_replaces_xml_and_files_of_that_live_row_only(catalog: Catalog) -> None:
    catalog.record_snapshot(row("s", 1000))
    catalog.record_snapshot(row("s", 2000))
    catalog.record_snapshot(row("s", 3000))
    catalog.mark_deleted(UUID, "s", 3000, 3500)
    catalog.update_snapshot(UUID, "s", 1000, xml="<domainsnapshot/>", files=("/new.1",))
    catalog.update_snapshot(UUID, "s", 3000, xml="<deleted/>", files=("/gone",))  # deleted
    live = {r.created_at: r for r in catalog.snapshots()}
    assert (live[1000].xml, live[1000].files) == ("<domainsnapshot/>", ("/new.1",))
    assert (live[2000].xml, live[2000].files) == (row("s", 2000).xml, row("s", 2000).files)
    assert 3000 not in live


def test_the_operations_log_is_newest_first(catalog: Catalog) -> None:
    for number in range(5):
        catalog.record_operation(
            Operation(
                at=100 + number,
                uri=URI,
                operation="create",
                outcome="ok",
                domain_uuid=UUID,
                snapshot=f"s{number}",
                duration_ms=number,
            )
        )
    assert [op.snapshot for op in catalog.operations()] == ["s4", "s3", "s2", "s1", "s0"]
    assert [op.snapshot for op in catalog.operations(limit=2)] == ["s4", "s3"]
    (oldest,) = catalog.operations(limit=5)[-1:]
    assert oldest == Operation(
        at=100,
        uri=URI,
        operation="create",
        outcome="ok",
        domain_uuid=UUID,
        snapshot="s0",
        duration_ms=0,
    )


def test_runs_start_finish_and_unfinished(catalog: Catalog) -> None:
    runs = catalog.runs
    assert runs.get("p", UUID) is None
    assert runs.all() == []
    runs.start(Run("p", UUID, URI, "web"), "p-1", 60, 61)
    runs.start(Run("a", OTHER, URI, "db"), "a-1", 60, 62)
    here = catalog.host_id  # "" for a catalog of one host
    assert runs.get("p", UUID) == Run(
        "p",
        UUID,
        URI,
        "web",
        in_progress="p-1",
        in_progress_slot=60,
        in_progress_since=61,
        host_id=here,
    )
    assert [(r.policy, r.domain_name) for r in runs.all()] == [("a", "db"), ("p", "web")]
    assert [r.in_progress for r in runs.unfinished()] == ["a-1", "p-1"]

    runs.finish("p", UUID, slot=60, error=None, now=70)
    assert runs.get("p", UUID) == Run(
        "p", UUID, URI, "web", last_slot=60, last_success=70, host_id=here
    )
    assert [r.policy for r in runs.unfinished()] == ["a"]

    # The next run, renamed domain: the last success stays until a new one replaces it.
    runs.start(Run("p", UUID, "qemu+ssh://h/system", "web2"), "p-2", 120, 121)
    runs.finish("p", UUID, slot=None, error="libvirt: disk full", now=130)
    assert runs.get("p", UUID) == Run(
        "p",
        UUID,
        "qemu+ssh://h/system",
        "web2",
        last_slot=60,
        last_success=70,
        last_error="libvirt: disk full",
        last_error_at=130,
        host_id=here,
    )


def test_finishing_a_run_that_never_started_records_nothing(catalog: Catalog) -> None:
    catalog.runs.finish("p", UUID, slot=60, error="x", now=70)
    assert catalog.runs.get("p", UUID) is None
    assert catalog.runs.all() == []


def test_groups_live_while_a_member_does_and_show_their_live_members(catalog: Catalog) -> None:
    catalog.record_snapshot(row("g-1", 1000))
    catalog.record_snapshot(row("g-1", 1001, uuid=OTHER))
    catalog.record_snapshot(row("g-2", 2000))
    members = (GroupMember(URI, UUID, "web", 1000), GroupMember(URI, OTHER, "db", 1001))
    catalog.groups.record(GroupRow("p", "g-1", 999, members, pause_ms=120))
    catalog.groups.record(
        GroupRow("p", "g-2", 1999, (GroupMember(URI, UUID, "web", 2000),), partial=True)
    )
    catalog.record_snapshot(row("g-1", 1002, policy="q"))
    catalog.groups.record(GroupRow("q", "g-1", 999, (GroupMember(URI, UUID, "web", 1002),)))
    # A snapshot is a member of one group at most.
    with pytest.raises(AlreadyRecorded):
        catalog.groups.record(GroupRow("q", "g-1", 999, (GroupMember(URI, UUID, "web", 1000),)))
    first, second = catalog.groups.all("p")
    assert (first.name, first.taken_at, first.pause_ms, first.partial) == ("g-1", 999, 120, False)
    assert set(first.members) == set(members)
    assert (second.name, second.partial, second.pause_ms) == ("g-2", True, None)
    assert catalog.groups.of(OTHER, "g-1", 1001) is not None
    assert catalog.groups.of(OTHER, "g-1", 5) is None
    # One member deleted: the group goes on with the other; both gone: no group.
    catalog.mark_deleted(OTHER, "g-1", 1001, 3000)
    (left, _) = catalog.groups.all("p")
    assert left.members == (GroupMember(URI, UUID, "web", 1000),)
    catalog.mark_deleted(UUID, "g-1", 1000, 3000)
    assert [g.name for g in catalog.groups.all("p")] == ["g-2"]


PEER = "qemu+ssh://b/system"
THIRD = "22222222-3333-4444-5555-666666666666"


def test_join_adds_members_to_a_group_once_and_other_uris_as_copies(catalog: Catalog) -> None:
    """An import of each member's export joins the group member by member; a replicate
    (or an import on another connection) adds a copy of a member on another URI."""
    catalog.record_snapshot(row("g-1", 1000))
    catalog.record_snapshot(row("g-1", 1001, uuid=OTHER))
    catalog.record_snapshot(row("g-1", 1002, uuid=THIRD))
    web, db = GroupMember(URI, UUID, "web", 1000), GroupMember(URI, OTHER, "db", 1001)
    catalog.groups.join(GroupRow("p", "g-1", 999, (web,), pause_ms=120))
    catalog.groups.join(GroupRow("p", "g-1", 999, (web,), pause_ms=120))  # twice: once
    (group,) = catalog.groups.all("p")
    assert (group.members, group.copies, group.pause_ms, group.partial) == ((web,), (), 120, False)
    # The second member: the group keeps its own partial and pause window.
    catalog.groups.join(GroupRow("p", "g-1", 999, (db,), partial=True, pause_ms=5))
    (group,) = catalog.groups.all("p")
    assert set(group.members) == {web, db}
    assert (group.partial, group.pause_ms) == (False, 120)
    # The same snapshot on another connection: a copy of the member, once.
    there = GroupMember(PEER, UUID, "web-there", 1000)
    catalog.groups.join(GroupRow("p", "g-1", 999, (there,)))
    catalog.groups.join(GroupRow("p", "g-1", 999, (there,)))
    (group,) = catalog.groups.all("p")
    assert set(group.members) == {web, db}
    assert group.copies == (there,)
    assert group.everywhere(web) == (web, there)
    assert group.everywhere(db) == (db,)
    found = catalog.groups.of(UUID, "g-1", 1000)
    assert found is not None
    assert found.copies == (there,)
    # A member of another group is refused, and nothing of that join is added.
    third = GroupMember(URI, THIRD, "app", 1002)
    with pytest.raises(AlreadyRecorded):
        catalog.groups.join(GroupRow("q", "g-1", 999, (third, web)))
    with pytest.raises(AlreadyRecorded):
        catalog.groups.join(GroupRow("p", "g-1", 1, (web,)))
    assert catalog.groups.of(THIRD, "g-1", 1002) is None
    assert catalog.groups.all("q") == []
    # A joined group is a group like a recorded one: its members' rows keep it alive,
    # and a copy lives and goes with its member's row.
    catalog.mark_deleted(UUID, "g-1", 1000, 3000)
    (group,) = catalog.groups.all("p")
    assert (group.members, group.copies) == ((db,), ())
    catalog.mark_deleted(OTHER, "g-1", 1001, 3000)
    assert catalog.groups.all("p") == []


def test_leave_drops_one_uri_and_a_copy_takes_the_member_s_place(catalog: Catalog) -> None:
    catalog.record_snapshot(row("g-1", 1000))
    catalog.record_snapshot(row("g-1", 1001, uuid=OTHER))
    web, db = GroupMember(URI, UUID, "web", 1000), GroupMember(URI, OTHER, "db", 1001)
    catalog.groups.record(GroupRow("p", "g-1", 999, (web, db), pause_ms=7))
    there = GroupMember(PEER, UUID, "web-there", 1000)
    catalog.groups.join(GroupRow("p", "g-1", 999, (there,)))
    catalog.groups.leave(PEER, UUID, "g-1", 1000)  # a copy leaves
    (group,) = catalog.groups.all("p")
    assert (set(group.members), group.copies) == ({web, db}, ())
    catalog.groups.join(GroupRow("p", "g-1", 999, (there,)))
    catalog.groups.leave(URI, UUID, "g-1", 1000)  # the member leaves: its copy is it now
    (group,) = catalog.groups.all("p")
    assert (set(group.members), group.copies, group.pause_ms) == ({there, db}, (), 7)
    assert catalog.groups.of(UUID, "g-1", 1000) == group
    catalog.groups.leave(URI, UUID, "g-1", 1000)  # not a member on URI any more: nothing
    catalog.groups.leave(URI, THIRD, "g-1", 5)  # in no group: nothing
    assert catalog.groups.all("p") == [group]
    catalog.groups.leave(PEER, UUID, "g-1", 1000)  # its last URI: in no group
    (group,) = catalog.groups.all("p")
    assert group.members == (db,)
    assert catalog.groups.of(UUID, "g-1", 1000) is None


def test_holds_are_kept_until_released(catalog: Catalog) -> None:
    hold = HoldRow("p", "g-1", URI, UUID, "web", "suspend", 1000)
    catalog.groups.hold(hold)
    catalog.groups.hold(HoldRow("p", "g-1", URI, OTHER, "db", "freeze", 1000))
    assert [h.domain_name for h in catalog.groups.held()] == ["db", "web"]
    catalog.groups.release(OTHER)
    assert catalog.groups.held() == [hold]
    catalog.groups.release(UUID)
    assert catalog.groups.held() == []


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def two_hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Catalog, Catalog]]:
    """One catalog as two hosts sharing it see it: kvm-a's and kvm-b's."""
    if request.param == "memory":
        memory = MemoryCatalog().as_host("kvm-a")
        yield memory, memory.as_host("kvm-b")
    elif request.param == "postgres":
        with fresh_database(host_id="kvm-a") as database:
            other = DatabaseSettings(database.url, database.password_file, "kvm-b")
            with open_catalog("", database=database) as a, open_catalog("", database=other) as b:
                yield a, b
    else:
        state = str(tmp_path / "state")
        with SQLiteCatalog(state, host="kvm-a") as a, SQLiteCatalog(state, host="kvm-b") as b:
            yield a, b


def test_a_slot_is_taken_once_by_the_host_that_claims_it_first(
    two_hosts: tuple[Catalog, Catalog],
) -> None:
    a, b = two_hosts
    a.runs.start(Run("p", UUID, URI, "web"), "p-1", 60, 61)
    with pytest.raises(ClaimedElsewhere) as refused:
        b.runs.start(Run("p", UUID, "qemu+ssh://b/system", "web"), "p-1b", 60, 62)
    assert refused.value.holder == "kvm-a"
    assert str(refused.value) == (
        "web: host 'kvm-a' claimed it first (policy 'p', slot 60); this host leaves it"
    )
    # Nothing of b's was written: a's run goes on, and it is a's alone to end.
    run = a.runs.get("p", UUID)
    assert run is not None
    assert (run.in_progress, run.uri, run.host_id) == ("p-1", URI, "kvm-a")
    assert [r.in_progress for r in a.runs.unfinished()] == ["p-1"]
    assert b.runs.unfinished() == []
    b.runs.finish("p", UUID, slot=None, error="not mine", now=63)
    assert a.runs.get("p", UUID) == run
    a.runs.start(Run("p", UUID, URI, "web"), "p-1", 60, 64)  # its own retry goes on
    a.runs.finish("p", UUID, slot=60, error=None, now=70)
    # Served: the other host does not take that slot afterwards either ...
    with pytest.raises(ClaimedElsewhere, match="'kvm-a' served it already"):
        b.runs.start(Run("p", UUID, "qemu+ssh://b/system", "web"), "p-1b", 60, 71)
    # ... but the next slot is anyone's: the domain moved to b, say.
    b.runs.start(Run("p", UUID, "qemu+ssh://b/system", "web"), "p-2", 120, 121)
    moved = b.runs.get("p", UUID)
    assert moved is not None
    assert (moved.host_id, moved.last_slot, moved.in_progress) == ("kvm-b", 60, "p-2")
    assert a.runs.unfinished() == []
    assert [r.in_progress for r in b.runs.unfinished()] == ["p-2"]
    with pytest.raises(ClaimedElsewhere, match="'kvm-b' claimed it first"):
        a.runs.start(Run("p", UUID, URI, "web"), "p-2a", 120, 122)


def test_a_row_names_the_host_whose_libvirt_holds_the_snapshot(
    two_hosts: tuple[Catalog, Catalog],
) -> None:
    """held_by: the recording host when its libvirt keeps the metadata, nobody for a
    catalog-only snapshot, nobody while the metadata is out of libvirt (a migration),
    and the host that redefined it afterwards."""
    a, b = two_hosts
    a.record_snapshot(row("held", 100))
    a.record_snapshot(replace(row("only-here", 200), libvirt_metadata=False))

    def holders() -> dict[str, str | None]:
        return {r.name: r.held_by for r in b.snapshots(domain_uuid=UUID)}

    assert holders() == {"held": "kvm-a", "only-here": None}
    a.set_libvirt_metadata(UUID, "held", 100, False)
    assert holders() == {"held": None, "only-here": None}
    b.set_libvirt_metadata(UUID, "held", 100, True)
    assert holders() == {"held": "kvm-b", "only-here": None}
    assert a.owner(UUID, "held", 100) == row("held", 100)  # where it is: not compared


def test_a_group_slot_is_claimed_once(two_hosts: tuple[Catalog, Catalog]) -> None:
    a, b = two_hosts
    a.runs.claim_group("shop", 60, 61)
    a.runs.claim_group("shop", 60, 62)  # its own retry goes on
    with pytest.raises(ClaimedElsewhere) as refused:
        b.runs.claim_group("shop", 60, 63)
    assert str(refused.value) == (
        "group shop: host 'kvm-a' claimed it first (slot 60); this host leaves it"
    )
    b.runs.claim_group("shop", 120, 121)  # the next slot is anyone's
    b.runs.claim_group("other", 60, 64)  # and so is another policy's
    with pytest.raises(ClaimedElsewhere, match="'kvm-b' claimed it first"):
        a.runs.claim_group("shop", 120, 122)
    assert a.runs.all() == []  # a claim is no run


def test_hosts_report_themselves(two_hosts: tuple[Catalog, Catalog]) -> None:
    a, b = two_hosts
    a.runs.seen(HostRow("kvm-a", 100, 11, "0.1.0", (URI,)))
    b.runs.seen(HostRow("kvm-b", 101, 12, "0.1.0", ("qemu+ssh://b/system",)))
    a.runs.seen(HostRow("kvm-a", 130, 11, "0.1.0", (URI,)))
    assert b.runs.hosts() == [
        HostRow("kvm-a", 130, 11, "0.1.0", (URI,)),
        HostRow("kvm-b", 101, 12, "0.1.0", ("qemu+ssh://b/system",)),
    ]


def test_each_host_sees_only_the_holds_it_made(two_hosts: tuple[Catalog, Catalog]) -> None:
    a, b = two_hosts
    hold = HoldRow("shop", "shop-1", URI, UUID, "web", "suspend", 100)
    a.groups.hold(hold)
    assert a.groups.held() == [hold]
    assert b.groups.held() == []  # b must never resume what a suspended
    a.groups.release(UUID)
    assert a.groups.held() == []


def test_the_domain_lock_excludes_a_second_holder_until_released(catalog: Catalog) -> None:
    waited: list[str] = []

    def second(wait: float) -> None:
        try:
            with catalog.domain_lock(UUID, "web", wait=wait):
                waited.append("got it")
        except SnapshotdError as exc:
            waited.append(str(exc))

    with catalog.domain_lock(UUID, "web"):
        refused = threading.Thread(target=second, args=(0.2,))
        refused.start()
        refused.join()
        assert len(waited) == 1
        assert waited[0].startswith("domain 'web' is busy: another snapshotd ")
        assert "for more than 0.2 s; try again later" in waited[0]
        with catalog.domain_lock(OTHER, "db", wait=0):
            pass  # another domain's lock is free
        patient = threading.Thread(target=second, args=(30,))
        patient.start()
        time.sleep(0.3)
        assert len(waited) == 1  # still waiting
    patient.join(timeout=30)
    assert waited[1:] == ["got it"]
    with catalog.domain_lock(UUID, "web", wait=0):
        pass


def test_the_domain_lock_refuses_a_strange_uuid(catalog: Catalog) -> None:
    with (
        pytest.raises(SnapshotdError, match="unexpected UUID"),
        catalog.domain_lock("../../x", "web"),
    ):
        pytest.fail("the lock was given")


def test_a_catalog_names_where_it_is_and_is_its_own_context(catalog: Catalog) -> None:
    assert catalog.location
    with catalog as entered:
        assert entered is catalog


# --- the SQLite catalog --------------------------------------------------------------------


def test_state_dir_and_database_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert not catalog_exists(str(state))
    with open_catalog(str(state)) as opened:
        assert opened.location == str(state / DB_NAME)
    assert catalog_exists(str(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / DB_NAME).stat().st_mode) == 0o600


def test_records_survive_reopen_and_wal_mode(tmp_path: Path) -> None:
    with SQLiteCatalog(str(tmp_path)) as catalog:
        catalog.record_snapshot(row("p-1", 1000))
        catalog.record_operation(
            Operation(at=1, uri="qemu:///system", operation="create", outcome="ok", snapshot="p-1")
        )
    with SQLiteCatalog(str(tmp_path)) as catalog:
        assert catalog.owner(UUID, "p-1", 1000) is not None
        (op,) = catalog.operations()
        assert op.snapshot == "p-1"
        assert op.outcome == "ok"
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_committed_record_survives_kill_9(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from snapshotd.catalog.sqlite import SQLiteCatalog\n"
        "from tests.unit.test_catalog import row\n"
        "c = SQLiteCatalog(sys.argv[1])\n"
        "c.record_snapshot(row('p-9', 9000))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        check=False,
    )
    assert proc.returncode == -9
    with SQLiteCatalog(str(tmp_path)) as catalog:
        assert catalog.owner(UUID, "p-9", 9000) is not None


def test_an_older_catalog_without_group_copies_gets_the_table_when_opened(
    tmp_path: Path,
) -> None:
    """A catalog an older snapshotd made (schema version 2: groups without copies) is
    migrated the first time this snapshotd opens it: it takes copies, keeps its groups,
    and records the latest version (tests/unit/test_catalog_migrations.py has the rest)."""
    state = tmp_path / "state"
    with SQLiteCatalog(str(state)) as catalog:
        catalog.record_snapshot(row("g-1", 1000))
        catalog.groups.record(GroupRow("p", "g-1", 999, (GroupMember(URI, UUID, "web", 1000),)))
    with contextlib.closing(sqlite3.connect(state / DB_NAME)) as db:
        # Back to version 2: without what versions 3, 4 and 5 added.
        db.execute("ALTER TABLE snapshots DROP COLUMN held_by")
        db.execute("DROP TABLE group_copies")
        db.execute("DROP TABLE claims")
        db.execute("DROP TABLE hosts")
        db.execute("DROP TABLE moves")
        db.execute("ALTER TABLE runs DROP COLUMN host_id")
        db.execute("ALTER TABLE snapshots DROP COLUMN host_id")
        db.execute("ALTER TABLE group_holds DROP COLUMN host_id")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        db.commit()
    sqlite._READY.clear()  # as a new process: the schema is looked at again
    with SQLiteCatalog(str(state)) as catalog:
        assert catalog.groups.all("p")[0].copies == ()
        catalog.groups.join(GroupRow("p", "g-1", 999, (GroupMember(PEER, UUID, "web", 1000),)))
        (group,) = catalog.groups.all("p")
        assert group.copies == (GroupMember(PEER, UUID, "web", 1000),)
    with contextlib.closing(sqlite3.connect(state / DB_NAME)) as db:
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == str(LATEST)


def test_the_same_snapshot_cannot_be_recorded_twice(tmp_path: Path) -> None:
    with SQLiteCatalog(str(tmp_path)) as catalog:
        catalog.record_snapshot(row("p-1", 1000))
        with pytest.raises(sqlite3.IntegrityError):
            catalog.record_snapshot(row("p-1", 1000))
        assert len(catalog.snapshots()) == 1


def test_opening_the_catalog_again_keeps_other_connections_locks(tmp_path: Path) -> None:
    """A second Catalog in the same process must not drop the first one's POSIX locks.

    If it did (by opening and closing the database file), another process closing
    its connection would find no locks, checkpoint, and delete the WAL under the
    first connection: the next write reports "disk I/O error" or "file is not a
    database".
    """
    first = SQLiteCatalog(str(tmp_path))
    try:
        first.record_snapshot(row("p-1", 1000))
        first.record_snapshot(row("p-0", 999))
        # A read left open, as a fetchone() leaves its statement until it is reset.
        reading = first._database.connection.execute("SELECT name FROM snapshots")
        assert reading.fetchone() is not None
        with SQLiteCatalog(str(tmp_path)) as second:
            assert second.owner(UUID, "p-1", 1000) is not None
        other = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM snapshots').fetchall(); c.close()"
        )
        subprocess.run([sys.executable, "-c", other, str(tmp_path / DB_NAME)], check=True)
        assert (tmp_path / (DB_NAME + "-wal")).exists()
        reading.close()
        first.record_snapshot(row("p-2", 1001))
        assert [r.name for r in first.snapshots()] == ["p-0", "p-1", "p-2"]
    finally:
        first.close()
    with SQLiteCatalog(str(tmp_path)) as reopened:
        assert [r.name for r in reopened.snapshots()] == ["p-0", "p-1", "p-2"]


def test_the_run_marker_survives_kill_9_and_later_writes_are_full_sync(tmp_path: Path) -> None:
    # runs.start commits without its own fsync (synchronous=NORMAL, WAL): a crash of the
    # process must still leave the marker for the next start to reconcile, and the
    # connection must be back to synchronous=FULL for the snapshot record that follows.
    script = (
        "import os, sys\n"
        "from snapshotd.catalog.api import Run\n"
        "from snapshotd.catalog.sqlite import SQLiteCatalog\n"
        "c = SQLiteCatalog(sys.argv[1])\n"
        "c.runs.start(Run('p', sys.argv[2], 'qemu:///system', 'web'), 'p-1', 60, 61)\n"
        "sync = c._database.connection.execute('PRAGMA synchronous').fetchone()[0]\n"
        "print(sync, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), UUID],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9
    assert proc.stdout.strip() == "2"  # FULL
    with SQLiteCatalog(str(tmp_path)) as catalog:
        (run,) = catalog.runs.unfinished()
    assert (run.policy, run.domain_uuid, run.in_progress, run.in_progress_slot) == (
        "p",
        UUID,
        "p-1",
        60,
    )


def test_a_failed_unsynced_transaction_rolls_back_and_restores_full_sync(tmp_path: Path) -> None:
    def insert_then_fail(catalog: SQLiteCatalog) -> None:
        with catalog._database.transaction(fsync=False):
            catalog._database.connection.execute(
                "INSERT INTO runs (policy, domain_uuid, uri, domain_name) VALUES (?, ?, ?, ?)",
                ("p", UUID, "qemu:///system", "web"),
            )
            raise RuntimeError("boom")

    with SQLiteCatalog(str(tmp_path)) as catalog:
        with pytest.raises(RuntimeError, match="boom"):
            insert_then_fail(catalog)
        assert catalog.runs.all() == []
        db = catalog._database.connection
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_the_domain_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    state = str(tmp_path)
    done = tmp_path / "holder-done"  # written by the holder just before it lets go
    code = (
        "import pathlib, time; from snapshotd.catalog import open_catalog\n"
        f"with open_catalog({state!r}).domain_lock({UUID!r}, 'web'):\n"
        "    print('held', flush=True); time.sleep(1)\n"
        f"    pathlib.Path({str(done)!r}).touch()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with (
            open_catalog(state) as catalog,
            pytest.raises(SnapshotdError) as caught,
            catalog.domain_lock(UUID, "web", wait=0.3),
        ):
            pass
        assert f"domain 'web' is busy: another snapshotd process (pid {holder.pid})" in str(
            caught.value
        )
        assert not done.exists()  # the holder is still inside its lock
        with open_catalog(state) as catalog, catalog.domain_lock(UUID, "web", wait=30):
            # Got only after the holder finished: it wrote its mark before letting go.
            assert done.exists()
    finally:
        holder.wait(timeout=30)


def test_the_file_lock_refuses_a_strange_uuid_before_making_anything(tmp_path: Path) -> None:
    with (
        open_catalog(str(tmp_path)) as catalog,
        pytest.raises(SnapshotdError),
        catalog.domain_lock("../../x", "web"),
    ):
        pass
    assert not (tmp_path / "locks").exists()  # refused before anything was made
