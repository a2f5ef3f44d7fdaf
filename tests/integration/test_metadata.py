"""Snapshot metadata outside libvirt, against real libvirt and QEMU: the catalog,
export/import, replicate to a second (embedded) QEMU driver, revert."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from snapshotd.catalog import open_catalog
from tests.integration.cli import Result, make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain, commit_active
from tests.integration.target import URI, peer_xml

NAME = "{policy}-{time:%Y%m%dT%H%M%S%fZ}"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    make_settings(tmp_path)
    return tmp_path


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}\nout: {result.out}\nerr: {result.err}"
    return result


def tree(dom: Any) -> dict[str, str | None]:
    """name -> parent name, as libvirt reports them."""
    found: dict[str, str | None] = {}
    for snap in dom.listAllSnapshots(0):
        try:
            parent = snap.getParent(0).getName()
        except libvirt.libvirtError:
            parent = None
        found[snap.getName()] = parent
    return found


def current(dom: Any) -> str | None:
    return dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else None


def internal(dom: ScratchDomain, name: str) -> None:
    xml = f"<domainsnapshot><name>{name}</name></domainsnapshot>"
    dom.dom.snapshotCreateXML(xml, 0)


# --- metadata: catalog ---------------------------------------------------------------------


def test_catalog_only_snapshots_listed_pruned_safely_and_redefined(
    domain_factory: DomainFactory, state: Path
) -> None:
    dom = domain_factory(state="running")
    snaps = dom.directory / "snaps"
    policy = state / "policies" / "cat.yaml"
    policy.write_text(
        f"""
domains: {{include: ["{dom.name}"]}}
schedule: {{every: 1h}}
snapshot:
  name: "{NAME}"
  memory: "no"
  disks: external
  disk_only: true
  directory: {snaps}
  metadata: catalog
retention: {{keep_last: 1}}
"""
    )
    policy.chmod(0o644)
    for _ in range(3):
        ok(snapshotd("take", "--policy", "cat", *settings_args(state)))
    assert dom.dom.listAllSnapshots(0) == []  # libvirt keeps no metadata
    listed = json.loads(
        ok(snapshotd("list", "--domain", dom.name, "--json", *settings_args(state))).out
    )
    assert len(listed) == 3
    assert all(s["catalog_only"] for s in listed)
    overlays = sorted(snaps.glob("*.qcow2"))
    assert len(overlays) == 3
    # Every overlay is still in vda's backing chain: retention keeps them and says why.
    report = json.loads(ok(snapshotd("prune", "--json", *settings_args(state))).out)
    (entry,) = report
    assert entry["deleted"] == []
    assert len(entry["kept_in_use"]) == 2
    assert all("current backing chain" in k["reason"] for k in entry["kept_in_use"])
    assert all("virsh blockcommit" in k["reason"] for k in entry["kept_in_use"])
    assert sorted(snaps.glob("*.qcow2")) == overlays

    # Merge the overlays back into the base image; now the old ones are free to go.
    commit_active(dom.dom, "vda")
    report = json.loads(ok(snapshotd("prune", "--json", *settings_args(state))).out)
    (entry,) = report
    newest = listed[-1]["name"]
    assert sorted(entry["deleted"]) == sorted(s["name"] for s in listed[:-1])
    remaining = sorted(snaps.glob("*.qcow2"))
    assert remaining == [p for p in overlays if newest in p.name]
    assert dom.state() == libvirt.VIR_DOMAIN_RUNNING
    listed = json.loads(
        ok(snapshotd("list", "--domain", dom.name, "--json", *settings_args(state))).out
    )
    assert [s["name"] for s in listed] == [newest]

    # On demand, the kept one goes into libvirt.
    ok(
        snapshotd(
            "import",
            "--domain",
            dom.name,
            "--from-catalog",
            "--snapshot",
            newest,
            *settings_args(state),
        )
    )
    assert list(tree(dom.dom)) == [newest]
    listed = json.loads(
        ok(snapshotd("list", "--domain", dom.name, "--json", *settings_args(state))).out
    )
    assert [(s["name"], s["catalog_only"]) for s in listed] == [(newest, False)]


# --- transient domains --------------------------------------------------------------------------


def test_a_transient_domain_gets_its_snapshot_back_from_the_catalog(
    domain_factory: DomainFactory, state: Path, libvirt_conn: Any
) -> None:
    made = domain_factory(state="shutoff")
    xml = made.dom.XMLDesc(0)
    made.dom.undefine()  # from now on only a transient domain by this name exists
    dom = libvirt_conn.createXML(xml, 0)
    ok(
        snapshotd(
            "take",
            "--domain",
            made.name,
            "--memory",
            "internal",
            "--name",
            "saved",
            *settings_args(state),
        )
    )
    assert [s.getName() for s in dom.listAllSnapshots(0)] == ["saved"]
    dom.destroy()  # the domain, and libvirt's metadata with it, are gone
    dom = libvirt_conn.createXML(xml, 0)
    assert dom.listAllSnapshots(0) == []
    result = ok(snapshotd("import", "--domain", made.name, "--from-catalog", *settings_args(state)))
    assert "saved" in result.out
    assert [s.getName() for s in dom.listAllSnapshots(0)] == ["saved"]
    dom.suspend()  # a state the snapshot does not have
    result = ok(snapshotd("revert", "--domain", made.name, "saved", *settings_args(state)))
    assert "it is running" in result.out
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert current(dom) == "saved"


def test_revert_redefines_from_the_catalog_and_reverts_external_where_libvirt_can(
    domain_factory: DomainFactory, state: Path
) -> None:
    """Metadata gone from libvirt, snapshots in the catalog: revert redefines them first.
    libvirt before 9.9 refuses an external revert, and snapshotd passes its answer on with
    what to do instead; newer libvirt reverts (libvirt 11.3 crashed here when snapshotd
    redefined without a current snapshot), and the catalog then lists the new overlay."""
    dom = domain_factory(state="shutoff")
    ok(snapshotd("take", "--domain", dom.name, "--name", "inside", *settings_args(state)))
    ok(
        snapshotd(
            "take",
            "--domain",
            dom.name,
            "--disks",
            "external",
            "--name",
            "outside",
            *settings_args(state),
        )
    )
    for snap in reversed(dom.dom.listAllSnapshots(0)):
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    conn = dom.dom.connect()
    result = snapshotd("revert", "--domain", dom.name, "outside", *settings_args(state))
    if conn.getLibVersion() < 9_009_000:
        assert result.code == 2, result
        assert "revert to external snapshot not supported yet" in result.err  # libvirt's words
        assert f"vda: {dom.directory / 'vda.qcow2'}" in result.err
    else:
        ok(result)
        assert current(dom.dom) == "outside"
        on = disk_source(dom)
        assert on != str(dom.directory / "vda.outside.qcow2")  # a new overlay, by libvirt
        with open_catalog(str(state / "state")) as catalog:
            row = catalog.find(dom.uuid, "outside")
        assert row is not None
        assert row.files == (on,)
    ok(snapshotd("revert", "--domain", dom.name, "inside", *settings_args(state)))
    assert current(dom.dom) == "inside"
    missing = snapshotd("revert", "--domain", dom.name, "never", *settings_args(state))
    assert missing.code == 2
    assert "no snapshot 'never'" in missing.err
    assert conn.getLibVersion() > 0  # libvirtd is still there


def test_retention_after_an_external_revert_deletes_exactly_the_pruned_snapshots_files(
    domain_factory: DomainFactory, state: Path
) -> None:
    """Two external snapshots of a shut-off domain, a revert to the older (libvirt 11
    replaces the overlay and rewrites the snapshot's disk source; libvirt before 9.9
    refuses), a third snapshot, then retention keep_last 1.  The catalog lists only files
    that exist, after the revert and after the prune; nothing the disk or a kept snapshot
    uses is deleted, no image is left that nothing uses, and nothing else goes."""
    dom = domain_factory(state="shutoff")
    snaps = dom.directory / "snaps"
    policy = state / "policies" / "rv.yaml"
    policy.write_text(
        f"""
domains: {{include: ["{dom.name}"], states: [shutoff]}}
schedule: {{every: 1h}}
snapshot: {{name: "{NAME}", disks: external, directory: {snaps}}}
retention: {{keep_last: 3}}
"""
    )
    policy.chmod(0o644)
    bystander = dom.directory / "vda.qcow2.notes"  # named like a disk's file, not one
    bystander.write_text("not snapshotd's\n")
    for _ in range(2):
        ok(snapshotd("take", "--policy", "rv", *settings_args(state)))
    first = sorted(s.getName() for s in dom.dom.listAllSnapshots(0))[0]
    result = snapshotd("revert", "--domain", dom.name, first, *settings_args(state))
    if result.code == 2:  # libvirt before 9.9: refused, nothing changed
        assert "revert to external snapshot not supported yet" in result.err, result
    else:
        ok(result)
        assert current(dom.dom) == first
    ok(snapshotd("take", "--policy", "rv", *settings_args(state)))

    with open_catalog(str(state / "state")) as catalog:
        rows = catalog.snapshots(domain_uuid=dom.uuid)
    assert len(rows) == 3
    listed = {row.name: set(row.files) for row in rows}
    before = {str(p) for d in (dom.directory, snaps) for p in d.iterdir()}
    policy.write_text(policy.read_text().replace("keep_last: 3", "keep_last: 1"))
    pruned = snapshotd("prune", "--json", *settings_args(state))
    (entry,) = json.loads(pruned.out)
    # What libvirt refuses to delete stays, with libvirt's reason: 9.0 any external
    # snapshot of a shut-off domain with a child ("could not find base disk source");
    # 11 one with two children (after the revert, the older has the second and the third).
    refusals = ("could not find base disk source", "multiple children snapshots not supported")
    failed = {f["snapshot"] for f in entry["failed"]}
    assert pruned.code == (1 if failed else 0), pruned
    assert all(any(r in f["error"] for r in refusals) for f in entry["failed"]), entry["failed"]
    after = {str(p) for d in (dom.directory, snaps) for p in d.iterdir()}
    chain = set(backing_files(disk_source(dom)))
    deleted = set(entry["deleted"])
    kept = {k["snapshot"] for k in entry["kept_in_use"]}
    assert deleted | kept | failed == {row.name for row in rows[:-1]}, entry
    # The catalog is true after the revert: no row lists a file that is gone.
    assert set().union(*listed.values()) <= before, (listed, before)
    # ... and after the prune (libvirt 11 deleting the second snapshot also deleted the
    # first one's overlay, which held only the second's data, and handed the first the
    # overlay the revert made).
    # The catalog mirrors libvirt's XML; where snapshotd sees the files (a local URI) it
    # lists only those that exist (libvirt 11.3 goes on naming a parent's overlay it
    # deleted with a child).
    with open_catalog(str(state / "state")) as catalog:
        live = {row.name: set(row.files) for row in catalog.snapshots(domain_uuid=dom.uuid)}
    libvirts = {s.getName(): snapshot_files(s.getXMLDesc(0)) for s in dom.dom.listAllSnapshots(0)}
    if "//" in URI and not URI.split("//", 1)[1].split("/", 1)[0]:  # no host: local
        libvirts = {name: found & after for name, found in libvirts.items()}
    assert live == libvirts
    owned = set().union(*live.values()) & after
    # Exactly the right files: nothing the disk or a kept snapshot uses went, and every
    # disk image left is used by the disk or owned by a kept snapshot.
    needed = chain | {f for path in owned for f in backing_files(path)}
    assert not (before - after) & needed, (before - after, needed)
    images = {p for p in after if p.endswith(".qcow2") or p.rsplit(".", 1)[-1].isdigit()}
    assert images <= needed, (images, needed)
    assert not after - before  # prune makes no file
    assert chain <= after  # every file the disk reads from is there
    assert bystander.read_text() == "not snapshotd's\n"
    remaining = [s.getName() for s in dom.dom.listAllSnapshots(0)]
    assert sorted(remaining) == sorted({row.name for row in rows} - deleted)


def snapshot_files(xml: str) -> set[str]:
    """The files libvirt's snapshot XML says the snapshot made: external disks (and the
    overlays a revert made, ``<revertDisks>``) and an external memory file."""
    root = etree.fromstring(xml.encode())
    found = {
        str(source.get("file"))
        for source in root.xpath("(disks|revertDisks)/disk[@snapshot='external']/source[@file]")
    }
    memory = root.find("memory")
    if memory is not None and memory.get("snapshot") == "external" and memory.get("file"):
        found.add(str(memory.get("file")))
    return found


def backing_files(image: str) -> list[str]:
    """The files of ``image``'s backing chain, top first (qemu-img reads each one)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "--backing-chain", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [layer["filename"] for layer in json.loads(out)]


def disk_source(dom: ScratchDomain, target: str = "vda") -> str:
    """The file a domain's disk uses now, from its live definition."""
    root = etree.fromstring(dom.dom.XMLDesc(0))
    for disk in root.iterfind("devices/disk"):
        if disk.find("target").get("dev") == target:
            return str(disk.find("source").get("file"))
    raise AssertionError(f"{dom.name} has no disk {target}")


# --- export / import ----------------------------------------------------------------------------


def three_levels(dom: ScratchDomain) -> None:
    """s1 -> s2 -> s3, then back to s2: the current snapshot is not the newest."""
    for name in ("s1", "s2", "s3"):
        internal(dom, name)
    dom.dom.revertToSnapshot(dom.dom.snapshotLookupByName("s2", 0), 0)


def test_export_then_import_restores_the_tree_and_current(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory(state="shutoff")
    three_levels(dom)
    before = tree(dom.dom)
    out = tmp_path / "export"
    ok(snapshotd("export", "--domain", dom.name, "--out", str(out)))
    index = json.loads((out / "index.json").read_text())
    assert index["current"] == "s2"
    assert [e["name"] for e in index["snapshots"]] == ["s1", "s2", "s3"]
    assert (out / index["snapshots"][0]["file"]).stat().st_mode & 0o777 == 0o600
    assert index["secure"] is False
    secure = tmp_path / "secure"
    ok(snapshotd("export", "--domain", dom.name, "--out", str(secure), "--secure"))
    assert json.loads((secure / "index.json").read_text())["secure"] is True
    for snap in reversed(dom.dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)):
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    dry = ok(snapshotd("import", "--domain", dom.name, "--dry-run", str(out)))
    assert "[would redefine as current]" in dry.out
    assert dom.dom.listAllSnapshots(0) == []
    ok(snapshotd("import", "--domain", dom.name, str(out)))
    assert tree(dom.dom) == before
    assert current(dom.dom) == "s2"


@pytest.fixture
def exported(domain_factory: DomainFactory, tmp_path: Path) -> tuple[ScratchDomain, Path]:
    dom = domain_factory(state="shutoff")
    internal(dom, "a")
    internal(dom, "b")
    out = tmp_path / "export"
    ok(snapshotd("export", "--domain", dom.name, "--out", str(out)))
    dom.dom.snapshotLookupByName("b", 0).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    dom.dom.snapshotLookupByName("a", 0).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    internal(dom, "other")  # present before the import; must survive a failed one
    return dom, out


def files_of(out: Path) -> tuple[Path, Path]:
    first, second = sorted(out.glob("*.xml"))
    return first, second


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("uuid", "belongs to the domain with UUID 00000000-1111-2222-3333-444444444444"),
        ("parent", "the parent of 'b', 'a', is neither among the snapshots imported"),
        ("cycle", "the parents form a cycle: a -> b -> a"),
        ("not-xml", "not well-formed XML"),
        ("not-snapshot", "<domainsnapshot>"),
        ("truncated", "not well-formed XML"),
    ],
)
def test_broken_imports_change_nothing(
    exported: tuple[ScratchDomain, Path], tmp_path: Path, damage: str, message: str
) -> None:
    dom, out = exported
    first, second = files_of(out)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "index.json").unlink()
    a, b = bad / first.name, bad / second.name
    text_a, text_b = a.read_text(), b.read_text()
    uuid = dom.uuid
    culprit = b
    if damage == "uuid":
        b.write_text(text_b.replace(uuid, "00000000-1111-2222-3333-444444444444"))
    elif damage == "parent":
        a.unlink()
    elif damage == "cycle":
        a.write_text(
            text_a.replace("<name>a</name>", "<name>a</name>\n  <parent><name>b</name></parent>", 1)
        )
        culprit = a
    elif damage == "not-xml":
        b.write_text("this is not XML\n")
    elif damage == "not-snapshot":
        b.write_text("<domain><name>x</name></domain>\n")
    elif damage == "truncated":
        b.write_text(text_b[: len(text_b) // 2])
    before = tree(dom.dom)
    result = snapshotd("import", "--domain", dom.name, str(bad))
    assert result.code == 2, result
    assert str(culprit) in result.err
    assert message in result.err
    assert "nothing was imported" in result.err
    assert tree(dom.dom) == before == {"other": None}


def test_a_redefine_failing_midway_is_rolled_back(
    exported: tuple[ScratchDomain, Path], tmp_path: Path
) -> None:
    dom, out = exported
    _first, second = files_of(out)
    # Passes snapshotd's checks, but libvirt refuses the domain definition inside.
    text = second.read_text()
    second.write_text(text.replace("<domain type='", "<domain type='bogus", 1))
    result = snapshotd("import", "--domain", dom.name, str(out))
    assert result.code == 1, result
    assert "redefining snapshot 'b'" in result.err
    assert "removed again" in result.err
    assert tree(dom.dom) == {"other": None}
    assert current(dom.dom) == "other"


def test_dry_run_validates_libvirts_own_snapshot_xml() -> None:
    out = peer_xml() / "out"
    files = sorted(str(p) for p in out.glob("*.xml"))
    assert len(files) >= 10
    result = ok(snapshotd("import", "--dry-run", *files))
    assert result.out.count("[valid") == len(files)


# --- replicate ------------------------------------------------------------------------------------


@pytest.fixture
def embed_root(domain_factory: DomainFactory) -> Iterator[Path]:
    """The root of a second, independent QEMU driver (qemu:///embed?root=DIR).

    A process that opens the embedded driver holds it (and its pid file) until it
    exits, so the test reaches it only from short-lived helper processes.
    """
    # Short: QEMU's monitor socket lives under it, and socket paths stop at 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="e", dir=domain_factory.root.parent))
    (root / "etc").mkdir()
    (root / "etc" / "qemu.conf").write_text('user = "root"\ngroup = "root"\n')
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


EMBED_PRELUDE = """
import json, sys, threading, libvirt
libvirt.registerErrorHandler(lambda _c, _e: None, None)
libvirt.virEventRegisterDefaultImpl()
threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                 daemon=True).start()
conn = libvirt.open(sys.argv[1])
def tree(dom):
    found = {}
    for snap in dom.listAllSnapshots(0):
        try:
            found[snap.getName()] = snap.getParent(0).getName()
        except libvirt.libvirtError:
            found[snap.getName()] = None
    return found
"""


def in_embed(root: Path, code: str, *args: str) -> Any:
    """Run ``code`` against the embedded driver in a helper process; it sets ``result``."""
    script = EMBED_PRELUDE + code + "\nprint(json.dumps(result))\n"
    done = subprocess.run(
        [sys.executable, "-c", script, f"qemu:///embed?root={root}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# The embedded driver is this machine's QEMU: a second host's snapshots name its QEMU's
# machine type (replicate refuses that, test_two_hosts.py replicates between hosts).
@pytest.mark.local_only
def test_replicate_to_a_second_driver_and_remove_the_source_metadata(
    domain_factory: DomainFactory, embed_root: Path
) -> None:
    dom = domain_factory(state="shutoff")
    three_levels(dom)
    before = tree(dom.dom)
    uri = f"qemu:///embed?root={embed_root}"
    definition = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    in_embed(embed_root, "conn.defineXML(sys.argv[2]); result = True", definition)
    result = ok(
        snapshotd(
            "replicate",
            "--domain",
            dom.name,
            "--to",
            uri,
            "--remove-source-metadata",
            timeout=120,
        )
    )
    assert "replicated 3 snapshots" in result.out
    assert dom.dom.listAllSnapshots(0) == []  # the source's metadata only
    there = in_embed(
        embed_root,
        "dom = conn.lookupByUUIDString(sys.argv[2])\n"
        "result = {'tree': tree(dom), 'current': dom.snapshotCurrent(0).getName()}\n"
        "dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)",
        dom.uuid,
    )
    assert there == {"tree": before, "current": "s2"}
    # The snapshots' data never moved: QEMU's image still holds all three.
    listing = subprocess.run(
        ["qemu-img", "snapshot", "-l", str(dom.image("vda"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(name in listing for name in ("s1", "s2", "s3"))


def test_replicate_needs_the_domain_on_the_target(
    domain_factory: DomainFactory, embed_root: Path
) -> None:
    dom = domain_factory(state="shutoff")
    internal(dom, "only")
    result = snapshotd(
        "replicate", "--domain", dom.name, "--to", f"qemu:///embed?root={embed_root}"
    )
    assert result.code == 2
    assert f"has no domain with UUID {dom.uuid}" in result.err
    assert [s.getName() for s in dom.dom.listAllSnapshots(0)] == ["only"]


def test_list_tree_draws_branches_as_virsh_does(domain_factory: DomainFactory) -> None:
    dom = domain_factory(state="shutoff")
    three_levels(dom)  # s1 -> s2 -> s3, current s2
    dom.dom.revertToSnapshot(dom.dom.snapshotLookupByName("s1", 0), 0)
    internal(dom, "s4")  # a second child of s1
    dom.dom.revertToSnapshot(dom.dom.snapshotLookupByName("s3", 0), 0)
    ours = ok(snapshotd("list", "--domain", dom.name, "--tree")).out.splitlines()
    virsh = subprocess.run(
        ["virsh", "-c", URI, "snapshot-list", dom.name, "--tree"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert any(line.endswith("+- s3 *") for line in ours)  # the current one is marked
    assert [line.removesuffix(" *") for line in ours] == virsh[:-1]  # virsh ends with ""
    forest = json.loads(ok(snapshotd("list", "--domain", dom.name, "--tree", "--json")).out)
    assert [(n["name"], [c["name"] for c in n["children"]]) for n in forest] == [
        ("s1", ["s2", "s4"])
    ]
