"""The CLI against real domains: several disks, disks by path, disks that cannot
take part, files, and the plan/take/list verbs' output."""

from __future__ import annotations

import json
from pathlib import Path

from lxml import etree

from tests.integration.cli import disk_modes, files_under, snapshot_xml, snapshotd
from tests.integration.domains import DiskSpec, DomainFactory
from tests.integration.target import URI

QCOW_RAW = (DiskSpec("vda", "qcow2"), DiskSpec("vdb", "raw"))


def test_two_disks_internal_checkpoint_refused_naming_the_raw_disk(
    domain_factory: DomainFactory,
) -> None:
    dom = domain_factory(QCOW_RAW, state="running")
    before = files_under(dom.directory)
    result = snapshotd("take", "--domain", dom.name, "--name", "full")
    assert result.code == 2
    assert "disk vdb" in result.err
    assert "raw" in result.err
    assert "external snapshot" in result.err
    assert dom.dom.snapshotNum(0) == 0
    assert files_under(dom.directory) == before


def test_two_disks_disk_only_external_on_both(domain_factory: DomainFactory) -> None:
    dom = domain_factory(QCOW_RAW, state="running")
    result = snapshotd("take", "--domain", dom.name, "--name", "both", "--disk-only")
    assert result.code == 0, result.err
    root = snapshot_xml(dom.dom, "both")
    assert root.findtext("state") == "disk-snapshot"
    assert disk_modes(root) == {"vda": "external", "vdb": "external"}
    assert (dom.directory / f"{dom.name}.vda.both.qcow2").is_file()
    assert (dom.directory / f"{dom.name}.vdb.both.qcow2").is_file()
    assert "disk vdb: external ->" in result.out


def test_disk_addressed_by_path_is_left_out(domain_factory: DomainFactory) -> None:
    dom = domain_factory(QCOW_RAW, state="running")
    raw = dom.disks["vdb"]
    assert raw is not None
    result = snapshotd(
        "take", "--domain", dom.name, "--name", "bypath", "--memory", "no", "--disk", f"{raw}=no"
    )
    assert result.code == 0, result.err
    assert disk_modes(snapshot_xml(dom.dom, "bypath")) == {"vda": "external", "vdb": "no"}
    assert not (dom.directory / f"{dom.name}.vdb.bypath.qcow2").exists()


def test_offline_two_disks(domain_factory: DomainFactory) -> None:
    dom = domain_factory(QCOW_RAW, state="shutoff")
    refused = snapshotd("take", "--domain", dom.name, "--name", "internal")
    assert refused.code == 2
    assert "disk vdb" in refused.err
    assert dom.dom.snapshotNum(0) == 0

    result = snapshotd(
        "take", "--domain", dom.name, "--name", "ext", "--disks", "external", "--disk", "vdb=no"
    )
    assert result.code == 0, result.err
    assert disk_modes(snapshot_xml(dom.dom, "ext")) == {"vda": "external", "vdb": "no"}
    assert (dom.directory / f"{dom.name}.vda.ext.qcow2").is_file()


def test_a_path_backing_two_disks_is_ambiguous(domain_factory: DomainFactory) -> None:
    dom = domain_factory(QCOW_RAW, state="shutoff")
    vda, vdb = dom.disks["vda"], dom.disks["vdb"]
    assert vda is not None
    assert vdb is not None
    # Point vdb at vda's image (libvirt allows defining this; it is the user's problem).
    xml = dom.dom.XMLDesc(0).replace(f"'{vdb}'", f"'{vda}'").replace("type='raw'", "type='qcow2'")
    dom.dom.connect().defineXML(xml)
    result = snapshotd("plan", "--domain", dom.name, "--disk", f"{vda}=no")
    assert result.code == 2
    assert f"path {vda} backs disks vda and vdb" in result.err
    assert "by its target" in result.err


def test_cdrom_readonly_and_shareable_disks_get_snapshot_no(domain_factory: DomainFactory) -> None:
    disks = (
        DiskSpec("vda", "qcow2"),
        DiskSpec("sda", "raw", device="cdrom", readonly=True, empty=True),
        DiskSpec("vdb", "raw", readonly=True),
        DiskSpec("vdc", "raw", shareable=True),
    )
    dom = domain_factory(disks, state="running")
    result = snapshotd("take", "--domain", dom.name, "--name", "odd", "--disk-only")
    assert result.code == 0, result.err
    assert disk_modes(snapshot_xml(dom.dom, "odd")) == {
        "vda": "external",
        "sda": "no",
        "vdb": "no",
        "vdc": "no",
    }
    # The plan says why each was left out.
    plan = snapshotd("plan", "--domain", dom.name, "--name", "p", "--disk-only", "--json")
    assert plan.code == 0, plan.err
    reasons = {d["target"]: d["reason"] for d in json.loads(plan.out)["disks"]}
    assert "cdrom" in reasons["sda"]
    assert "read-only" in reasons["vdb"]
    assert "shareable" in reasons["vdc"]
    # Asking for the cdrom explicitly is an error naming it.
    explicit = snapshotd("take", "--domain", dom.name, "--disk-only", "--disk", "sda=external")
    assert explicit.code == 2
    assert "disk sda" in explicit.err


def test_plan_changes_nothing_and_reports_row_xml_and_flags(
    domain_factory: DomainFactory,
) -> None:
    dom = domain_factory(state="running")
    before = files_under(dom.directory)
    result = snapshotd("plan", "--domain", dom.name, "--name", "p1", "--disk-only", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["row"]["number"] == 8
    assert data["method"] == "transaction"
    assert data["flags"] == ["DISK_ONLY", "ATOMIC"]
    assert data["flags_value"] == 16 | 128
    root = etree.fromstring(data["xml"].encode())
    assert root.find("memory").get("snapshot") == "no"
    assert dom.dom.snapshotNum(0) == 0
    assert files_under(dom.directory) == before

    text = snapshotd("plan", "--domain", dom.name, "--name", "p1")
    assert text.code == 0
    assert "state table row 7: online omit omit off | memory=int disk=int, via savevm" in text.out
    assert "<domainsnapshot>" in text.out


def test_existing_overlay_file_is_never_overwritten(domain_factory: DomainFactory) -> None:
    dom = domain_factory(state="running")
    overlay = dom.directory / f"{dom.name}.vda.taken.qcow2"
    overlay.write_bytes(b"precious")
    result = snapshotd("take", "--domain", dom.name, "--name", "taken", "--disk-only")
    assert result.code == 2
    assert f"{overlay} already exists" in result.err
    assert overlay.read_bytes() == b"precious"
    assert dom.dom.snapshotNum(0) == 0


def test_directory_escaping_through_a_symlink_is_refused(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory(state="running")
    root = dom.directory / "snaproot"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / dom.name).symlink_to(elsewhere)
    result = snapshotd(
        "take", "--domain", dom.name, "--disk-only", "--directory", f"{root}/{{domain}}"
    )
    assert result.code == 2
    assert "through a symlink" in result.err
    assert list(elsewhere.iterdir()) == []
    assert dom.dom.snapshotNum(0) == 0


def test_list_shows_hierarchy_and_current(domain_factory: DomainFactory) -> None:
    dom = domain_factory(state="shutoff")
    for name in ("first", "second"):
        made = snapshotd("take", "--domain", dom.name, "--name", name, "--description", name)
        assert made.code == 0, made.err
    result = snapshotd("list", "--domain", dom.name, "--json", "--connect", URI)
    assert result.code == 0, result.err
    items = {item["name"]: item for item in json.loads(result.out)}
    assert set(items) == {"first", "second"}
    assert items["second"]["parent"] == "first"
    assert items["first"]["parent"] is None
    assert items["second"]["current"] is True
    assert items["first"]["current"] is False
    assert items["first"]["state"] == "shutoff"
    assert items["first"]["memory"] == "no"
    assert items["first"]["disks"] == [{"target": "vda", "snapshot": "internal", "file": None}]
    table = snapshotd("list", "--domain", dom.name)
    assert table.code == 0
    assert "second *" in table.out


def test_unknown_domain_and_bad_connection(domain_factory: DomainFactory) -> None:
    missing = snapshotd("plan", "--domain", "snapshotd-test-no-such-domain")
    assert missing.code == 2
    assert "snapshotd-test-no-such-domain" in missing.err
    bad = snapshotd("list", "--domain", "x", "--connect", "test+unix:///nonexistent/socket")
    assert bad.code == 1
    assert "nonexistent" in bad.err


def test_quiesce_on_paused_domain_is_refused(domain_factory: DomainFactory) -> None:
    dom = domain_factory(state="paused")
    result = snapshotd("take", "--domain", dom.name, "--disk-only", "--quiesce")
    assert result.code == 2
    assert "paused" in result.err
    assert dom.dom.snapshotNum(0) == 0


def test_quiesce_without_guest_agent_fails_cleanly(domain_factory: DomainFactory) -> None:
    dom = domain_factory(state="running")
    before = files_under(dom.directory)
    result = snapshotd("take", "--domain", dom.name, "--disk-only", "--quiesce", "--name", "q")
    assert result.code == 1
    assert dom.name in result.err
    assert "agent" in result.err.lower()
    assert dom.dom.snapshotNum(0) == 0
    assert files_under(dom.directory) == before
    assert dom.state() == 1
