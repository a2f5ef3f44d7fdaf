"""Consistency groups through export, import and replicate, with the fakes
(FakeHypervisor, MemoryCatalog; the SQLite catalog where the import verb's own path
through importing.prepare/define is taken).

tests/integration/test_group_metadata.py does the same against real libvirt.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from snapshotd.actions import groupindex, grouprevert, importing, metadata
from snapshotd.actions.grouprun import GroupOutcome, GroupRun
from snapshotd.actions.prune import prune
from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import GroupMember
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.config.load import parse_policy
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState
from snapshotd.core.policy import Policy
from snapshotd.errors import RequestError
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml

SOURCE = "qemu+ssh://root:hunter2@kvm1/system"  # a member's URI with a password in it
HERE = "test:///importing"


def group_policy(retention: str = "") -> Policy:
    text = (
        "name: shop\n"
        'domains: {include: ["shop-*"], states: [running, paused, shutoff]}\n'
        "group: {consistency: crash}\n"
        "schedule: {every: 1h}\n"
        "snapshot: {}\n"
        f"{retention}"
    )
    parsed = parse_policy(text, "shop.yaml")
    assert isinstance(parsed, Policy), parsed
    return parsed


class Host:
    """One libvirt host of the fakes, with its own catalog."""

    def __init__(self, uri: str, clock: FakeClock) -> None:
        self.hv = FakeHypervisor(uri, clock=clock.timestamp)
        self.catalog = MemoryCatalog()
        self.clock = clock

    def group(self, members: list[DomainInfo]) -> str:
        """One run of the group policy over ``members``: the snapshot's name."""
        run = GroupRun(group_policy(), [(self.hv, m) for m in members], self.clock.now())
        result = run.execute(self.catalog)
        assert result.outcome is GroupOutcome.CREATED, result.error
        return result.name


class World:
    """A source host that took a group of two, and an importing host where the same
    domains (same UUIDs) are defined."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.source = Host(SOURCE, self.clock)
        self.here = Host(HERE, self.clock)
        self.members = [self._domain("shop-db"), self._domain("shop-web")]
        self.name = self.source.group(self.members)
        self.clock.advance(60)

    def _domain(self, name: str) -> DomainInfo:
        directory = self.root / name
        directory.mkdir()
        xml = domain_xml(name, [("vda", str(directory / "vda.qcow2"))])
        made = self.source.hv.define(xml)
        self.here.hv.define(xml, state=DomainState.SHUTOFF)
        return made

    def export(self, domain: DomainInfo, *, catalog: bool = True) -> Path:
        out = self.root / "export" / domain.name
        metadata.export(
            self.source.hv,
            domain.name,
            str(out),
            catalog=self.source.catalog if catalog else None,
        )
        return out

    def import_(self, out: Path, domain: DomainInfo) -> list[str]:
        """import DIR --domain, as its verb runs it, into ``here`` with its MemoryCatalog."""
        docs = metadata.read_documents([str(out)])
        importing.refuse_problems(docs)
        there = self.here.hv.domain(domain.uuid)
        plan = metadata.check_import(self.here.hv, there, docs.items, current=docs.current)
        metadata.run_import(self.here.hv, there, plan, catalog=self.here.catalog)
        return groupindex.record_imported(self.here.hv, self.here.catalog, there, plan, docs.groups)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def index_of(out: Path) -> dict[str, Any]:
    loaded = json.loads((out / metadata.INDEX).read_text())
    assert isinstance(loaded, dict)
    return loaded


# --- export ------------------------------------------------------------------------------


def test_export_records_each_member_s_group_and_the_others_without_credentials(
    world: World,
) -> None:
    db, web = world.members
    world.source.hv.create_snapshot_secure(
        db.name, "<domainsnapshot><name>by-hand</name></domainsnapshot>", CreateFlag(0)
    )
    out = world.export(db)
    entries = {e["name"]: e for e in index_of(out)["snapshots"]}
    assert set(entries) == {world.name, "by-hand"}
    assert "group" not in entries["by-hand"]  # snapshotd made it in no group
    (group,) = world.source.catalog.groups.all("shop")
    assert entries[world.name]["group"] == {
        "policy": "shop",
        "name": world.name,
        "taken_at": group.taken_at,
        "partial": False,
        "pause_ms": group.pause_ms,
        "other_members": [
            {"domain": web.name, "uuid": web.uuid, "uri": "qemu+ssh://root@kvm1/system"}
        ],
    }
    assert "hunter2" not in (out / metadata.INDEX).read_text()
    # Without a catalog (none in the state directory): the index as before, no groups.
    bare = world.export(db, catalog=False)
    assert all("group" not in e for e in index_of(bare)["snapshots"])


# --- import --------------------------------------------------------------------------------


def test_importing_every_member_s_export_rebuilds_the_group(world: World) -> None:
    db, web = world.members
    (made,) = world.source.catalog.groups.all("shop")
    said = world.import_(world.export(db), db)
    # One member's export: the group, with that member, on the importing connection.
    (group,) = world.here.catalog.groups.all("shop")
    assert (group.name, group.taken_at, group.partial) == (world.name, made.taken_at, False)
    created = world.here.hv.snapshot_created(db.uuid, world.name)
    assert created is not None
    assert group.members == (GroupMember(HERE, db.uuid, db.name, created),)
    assert len(said) == 1
    assert (
        f"not yet its other members {web.name} ({web.uuid}, qemu+ssh://root@kvm1/system)"
        in (said[0])
    )
    row = world.here.catalog.owner(db.uuid, world.name, created)
    assert row is not None
    assert (row.policy, row.uri, row.libvirt_metadata) == ("shop", HERE, True)
    # The other member's export: the whole group again.
    said = world.import_(world.export(web), web)
    (group,) = world.here.catalog.groups.all("shop")
    assert {m.domain_name for m in group.members} == {db.name, web.name}
    assert {m.uri for m in group.members} == {HERE}
    assert said[0].endswith("the catalog has all its 2 members")
    # An export imported again changes nothing (libvirt has it: "already defined").
    world.import_(world.export(web), web)
    assert world.here.catalog.groups.all("shop") == [group]
    # The rebuilt group reverts as one, on this connection.
    done = grouprevert.revert_group(world.here.hv, world.here.catalog, "shop", world.name)
    assert {d.domain for d in done} == {db.name, web.name}


def test_retention_on_the_importing_host_keeps_or_deletes_the_group_as_a_unit(
    world: World,
) -> None:
    """The imported group is the policy's there: keep_last 1 and a newer group of the
    same policy delete every member of the imported one, and only its members; a
    member imported alone (the other's export not imported) is the group there."""
    db, web = world.members
    world.import_(world.export(db), db)
    world.import_(world.export(web), web)
    for m in world.members:
        world.here.hv.set_state(m.uuid, DomainState.RUNNING)
    newer = world.here.group([world.here.hv.domain(m.uuid) for m in world.members])
    keep_one = group_policy("retention: {keep_last: 1}\n")
    now = world.clock.now() + dt.timedelta(minutes=1)
    for m in world.members:
        report = prune(
            world.here.hv, world.here.catalog, keep_one, world.here.hv.domain(m.uuid), now
        )
        assert report.deleted == [world.name], report
        assert [r.name for r in world.here.hv.list_snapshots(m.name)] == [newer]
    assert [g.name for g in world.here.catalog.groups.all("shop")] == [newer]


def test_a_member_imported_alone_is_kept_by_a_rule_that_keeps_its_group(world: World) -> None:
    db, _web = world.members
    world.import_(world.export(db), db)
    keep = group_policy("retention: {keep_last: 1}\n")
    report = prune(
        world.here.hv, world.here.catalog, keep, world.here.hv.domain(db.uuid), world.clock.now()
    )
    assert report.deleted == []
    assert [v.keep for v in report.verdicts] == [True]


def test_an_index_without_groups_imports_as_before(world: World) -> None:
    db, _web = world.members
    out = world.export(db, catalog=False)
    assert world.import_(out, db) == []
    assert [r.name for r in world.here.hv.list_snapshots(db.name)] == [world.name]
    assert world.here.catalog.groups.all() == []
    assert world.here.catalog.snapshots() == []  # not made ours: as before


def test_the_import_verb_records_the_group_in_the_state_directory(
    world: World, tmp_path: Path
) -> None:
    """importing.prepare and define, as cmd_import runs them: the SQLite catalog in a
    fresh state directory gets the group; --dry-run says what it would record."""
    db, web = world.members
    state = str(tmp_path / "state")
    for member in (db, web):
        docs = metadata.read_documents([str(world.export(member))])
        there = world.here.hv.domain(member.uuid)
        prepared = importing.prepare(
            world.here.hv,
            there,
            docs,
            state_dir=state,
            from_catalog=False,
            snapshots=[],
            current=None,
        )
        assert prepared.notes == (
            f"would record {member.name}'s snapshot {world.name!r} as a member of group 'shop'",
        )
        defined, said = importing.define(
            world.here.hv, there, prepared.plan, state_dir=state, groups=docs.groups
        )
        assert defined == (world.name,)
        assert len(said) == 1
    with open_catalog(state) as catalog:
        (group,) = catalog.groups.all("shop")
    assert {(m.domain_name, m.uri) for m in group.members} == {(db.name, HERE), (web.name, HERE)}


def test_a_snapshot_the_catalog_has_in_another_group_is_refused_before_libvirt(
    world: World, tmp_path: Path
) -> None:
    db, _web = world.members
    state = str(tmp_path / "state")
    there = world.here.hv.domain(db.uuid)

    def prepare(out: Path) -> tuple[importing.Prepared, metadata.Documents]:
        docs = metadata.read_documents([str(out)])
        prepared = importing.prepare(
            world.here.hv,
            there,
            docs,
            state_dir=state,
            from_catalog=False,
            snapshots=[],
            current=None,
        )
        return prepared, docs

    out = world.export(db)
    prepared, docs = prepare(out)
    importing.define(world.here.hv, there, prepared.plan, state_dir=state, groups=docs.groups)
    for snap in world.here.hv.list_snapshots(db.name):
        world.here.hv.delete_snapshot(db.name, snap.name, metadata_only=True)
    # The same snapshot, its index saying another run of the group took it.
    index = index_of(out)
    index["snapshots"][0]["group"]["taken_at"] += 3600
    (out / metadata.INDEX).write_text(json.dumps(index))
    with pytest.raises(metadata.ImportRefused) as refused:
        prepare(out)
    text = str(refused.value)
    assert f"{out / metadata.INDEX}: snapshots[0].group: snapshot {world.name!r}" in text
    assert "is a member of group 'shop' taken at" in text
    assert "nothing was imported" in text
    assert world.here.hv.list_snapshots(db.name) == []


# --- import: a hostile index -----------------------------------------------------------------

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
OK_OTHER = {"domain": "shop-web", "uuid": UUID, "uri": "qemu:///system"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (None, [], "snapshots[0].group: expected an object, got a list"),
        (None, "shop", "snapshots[0].group: expected an object, got the string 'shop'"),
        ("taken_at", "yesterday", "group.taken_at: expected a whole number, got the string"),
        ("taken_at", True, "group.taken_at: expected a whole number, got the boolean true"),
        ("taken_at", -5, "group.taken_at: -5 is not between 0 and"),
        ("taken_at", 10**30, "group.taken_at: 1000000000000000000000000000000 is not between"),
        ("pause_ms", 1.5, "group.pause_ms: expected a whole number, got the number 1.5"),
        ("partial", "yes", "group.partial: expected true or false, got the string 'yes'"),
        ("policy", "../../etc/passwd", "group.policy: policy name '../../etc/passwd' is not"),
        ("policy", 7, "group.policy: expected a non-empty string, got the number 7"),
        ("policy", "x" * 10_000, "group.policy: 10000 characters long; at most 256"),
        ("name", "../escape", "group.name: snapshot name '../escape' is not allowed"),
        ("name", "shop-other", "'shop-other' is not the name of the snapshot in"),
        ("other_members", {"a": 1}, "group.other_members: expected a list, got an object"),
        (
            "other_members",
            [OK_OTHER] * 5000,
            "other_members: 5000 other members; a group has at most 1000",
        ),
        ("other_members", ["web"], "group.other_members[0]: expected an object"),
        (
            "other_members",
            [OK_OTHER, {**OK_OTHER, "uuid": "not-a-uuid"}],
            "group.other_members[1].uuid: 'not-a-uuid' is not a UUID",
        ),
        (
            "other_members",
            [{**OK_OTHER, "domain": "../../web"}],
            "group.other_members[0].domain: '../../web' cannot name a libvirt domain",
        ),
        (
            "other_members",
            [{**OK_OTHER, "uri": "qemu:///sys\ntem"}],
            "group.other_members[0].uri: 'qemu:///sys\\ntem' is not a libvirt connection URI",
        ),
        ("other_members", [{"uuid": UUID}], "group.other_members[0].domain: expected a non-empty"),
    ],
)
def test_bad_group_data_in_an_index_is_refused_naming_the_file_and_field(
    world: World, field: str | None, value: object, message: str
) -> None:
    db, _web = world.members
    out = world.export(db)
    index = index_of(out)
    if field is None:
        index["snapshots"][0]["group"] = value
    else:
        index["snapshots"][0]["group"][field] = value
    (out / metadata.INDEX).write_text(json.dumps(index))
    docs = metadata.read_documents([str(out)])
    with pytest.raises(metadata.ImportRefused) as refused:
        importing.refuse_problems(docs)
    text = str(refused.value)
    assert f"{out / metadata.INDEX}: " in text
    assert message in text, text
    assert "nothing was imported" in text
    assert len(text) < 2000  # a huge value is cut short, not repeated whole
    assert world.here.hv.list_snapshots(db.name) == []
    assert docs.groups == {}


def test_an_index_nested_too_deeply_or_too_large_is_refused(world: World) -> None:
    db, _web = world.members
    out = world.export(db)
    index = out / metadata.INDEX
    index.write_text('{"snapshots": [{"file": "x", "group": ' + "[" * 100_000 + "]" * 100_000)
    docs = metadata.read_documents([str(out)])
    assert [str(p) for p in docs.problems] == [
        f"{index}: not an index snapshotd wrote: nested too deeply"
    ]
    with index.open("r+b") as f:
        f.truncate(metadata.MAX_DOCUMENT + 1)  # sparse: nothing is written
    docs = metadata.read_documents([str(out)])
    assert [str(p) for p in docs.problems] == [
        f"{index}: larger than {metadata.MAX_DOCUMENT} bytes"
    ]
    assert index.stat().st_size == metadata.MAX_DOCUMENT + 1


# --- replicate ---------------------------------------------------------------------------------


def test_replicate_records_the_target_s_copy_of_each_member(world: World) -> None:
    """Both hosts in one catalog (the source's): each replicated member is a member on
    the target too, so revert --group works there; --remove-source-metadata moves it."""
    db, web = world.members
    target, catalog = world.here.hv, world.source.catalog
    done = metadata.replicate(
        world.source.hv, target, db.name, remove_source_metadata=False, catalog=catalog
    )
    assert done.groups == (("shop", world.name),)
    (group,) = catalog.groups.all("shop")
    assert {m.uri for m in group.members} == {SOURCE}
    assert [(c.uri, c.domain_name) for c in group.copies] == [(HERE, db.name)]
    # Only one member there: revert --group on the target refuses, naming the other.
    with pytest.raises(RequestError) as refused:
        grouprevert.revert_group(target, catalog, "shop", world.name)
    assert f"{web.name} is on qemu+ssh://root@kvm1/system, not this connection" in str(
        refused.value
    )
    metadata.replicate(
        world.source.hv, target, web.name, remove_source_metadata=False, catalog=catalog
    )
    (group,) = catalog.groups.all("shop")
    assert {(c.uri, c.domain_name) for c in group.copies} == {(HERE, db.name), (HERE, web.name)}
    back = grouprevert.revert_group(target, catalog, "shop", world.name)
    assert {b.domain for b in back} == {db.name, web.name}
    # Moving a member: the source's metadata and membership go, the target's stays.
    metadata.replicate(
        world.source.hv, target, db.name, remove_source_metadata=True, catalog=catalog
    )
    (group,) = catalog.groups.all("shop")
    assert {(m.domain_name, m.uri) for m in group.members} == {(db.name, HERE), (web.name, SOURCE)}
    assert [(c.uri, c.domain_name) for c in group.copies] == [(HERE, web.name)]
    assert world.source.hv.list_snapshots(db.name) == []


def test_replicate_without_a_catalog_or_groups_changes_no_catalog(world: World) -> None:
    db, _web = world.members
    before = world.source.catalog.groups.all()
    done = metadata.replicate(world.source.hv, world.here.hv, db.name, remove_source_metadata=False)
    assert done.groups == ()
    assert world.source.catalog.groups.all() == before
    world.source.hv.create_snapshot_secure(
        db.name, "<domainsnapshot><name>by-hand</name></domainsnapshot>", CreateFlag(0)
    )
    other = MemoryCatalog()
    done = metadata.replicate(
        world.source.hv, world.here.hv, db.name, remove_source_metadata=False, catalog=other
    )
    assert done.groups == ()
    assert other.groups.all() == []
