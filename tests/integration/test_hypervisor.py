"""snapshotd.adapters.hypervisor against the real libvirtd (target.URI) and QEMU domains."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from snapshotd.adapters.hypervisor import Hypervisor, SnapshotRecord
from snapshotd.core.model import CreateFlag, DomainState
from snapshotd.errors import LibvirtError, NotFoundError
from tests.integration.domains import DiskSpec, DomainFactory, ScratchDomain, remove_domain
from tests.integration.target import URI

THREE_DISKS = (
    DiskSpec("vda", "qcow2"),
    DiskSpec("vdb", "raw", shareable=True),
    DiskSpec("hdc", "raw", device="cdrom", readonly=True, empty=True),
)


def internal_images(path: Path) -> list[str]:
    """The names of the internal snapshots inside a qcow2 image, as qemu-img sees them."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


def snapshot_named(xml: str) -> tuple[str | None, str | None]:
    root = etree.fromstring(xml.encode())
    return root.findtext("name"), root.findtext("state")


def external_xml(name: str, overlay: Path) -> str:
    return (
        f"<domainsnapshot><name>{name}</name><disks>"
        f"<disk name='vda' snapshot='external'><source file='{overlay}'/></disk>"
        "</disks></domainsnapshot>"
    )


# --- connection ------------------------------------------------------------------------------


def test_open_reports_version_and_closes(libvirt_conn: Any) -> None:
    with Hypervisor.open(URI) as hv:
        assert hv.uri == URI
        major, minor, micro = hv.libvirt_version()
        assert major * 1_000_000 + minor * 1_000 + micro == libvirt_conn.getLibVersion()
        assert (major, minor) >= (9, 0)
    with pytest.raises(LibvirtError, match="closed") as err:
        hv.list_domains()
    assert not err.value.transient
    hv.close()  # a second close is harmless


def test_unknown_uri_is_a_permanent_error() -> None:
    with pytest.raises(LibvirtError) as err:
        Hypervisor.open("bogus:///nowhere")
    assert err.value.operation == "connect to bogus:///nowhere"
    assert (err.value.code, err.value.transient) == (libvirt.VIR_ERR_NO_CONNECT, False)


def test_unreachable_libvirtd_is_a_transient_error(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path}/no-libvirtd.sock"
    with pytest.raises(LibvirtError) as err:
        Hypervisor.open(uri)
    assert (err.value.code, err.value.transient) == (libvirt.VIR_ERR_SYSTEM_ERROR, True)
    assert "Failed to connect socket" in err.value.reason


# --- domains ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("running", DomainState.RUNNING),
        ("paused", DomainState.PAUSED),
        ("shutoff", DomainState.SHUTOFF),
    ],
)
def test_list_domains_reports_state_and_disks(
    hypervisor: Hypervisor,
    domain_factory: DomainFactory,
    virt_type: str,
    state: str,
    expected: DomainState,
) -> None:
    made = domain_factory(THREE_DISKS, state)

    found = [d for d in hypervisor.list_domains() if d.name == made.name]

    assert len(found) == 1
    info = found[0]
    assert (info.uuid, info.state, info.hypervisor) == (made.uuid, expected, virt_type)
    vda, vdb, hdc = info.disks
    assert (vda.target, vda.format, vda.path, vda.device) == (
        "vda",
        "qcow2",
        str(made.disks["vda"]),
        "disk",
    )
    assert (vdb.target, vdb.format, vdb.path, vdb.shareable) == (
        "vdb",
        "raw",
        str(made.disks["vdb"]),
        True,
    )
    assert (hdc.target, hdc.device, hdc.readonly, hdc.empty) == ("hdc", "cdrom", True, True)
    assert hypervisor.domain(made.name) == info
    assert hypervisor.domain(made.uuid) == info  # by UUID too


def test_domain_xml_live_and_inactive(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec()], "running")

    live = etree.fromstring(hypervisor.domain_xml(made.name).encode())
    inactive = etree.fromstring(hypervisor.domain_xml(made.name, inactive=True).encode())

    assert live.get("id") is not None  # only a running domain's live XML has an id
    assert inactive.get("id") is None
    assert live.findtext("uuid") == inactive.findtext("uuid") == made.uuid


# --- snapshots -------------------------------------------------------------------------------


def test_internal_snapshot_of_shutoff_domain(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "qcow2")], "shutoff")

    xml = hypervisor.create_snapshot(
        made.name, "<domainsnapshot><name>s1</name></domainsnapshot>", CreateFlag(0)
    )

    assert snapshot_named(xml) == ("s1", "shutoff")
    assert hypervisor.snapshot_xml(made.name, "s1") == xml
    [record] = hypervisor.list_snapshots(made.name)
    assert record == SnapshotRecord(name="s1", xml=xml, is_current=True, parent=None)
    assert internal_images(made.image("vda")) == ["s1"]  # qemu-img wrote it into the image

    hypervisor.delete_snapshot(made.name, "s1")

    assert hypervisor.list_snapshots(made.name) == []
    assert internal_images(made.image("vda")) == []


def test_snapshots_are_listed_parents_first(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "qcow2")], "running")
    for name in ("a", "b", "c"):
        hypervisor.create_snapshot(
            made.name, f"<domainsnapshot><name>{name}</name></domainsnapshot>", CreateFlag(0)
        )

    records = hypervisor.list_snapshots(made.name)

    assert [(r.name, r.parent, r.is_current) for r in records] == [
        ("a", None, False),
        ("b", "a", False),
        ("c", "b", True),
    ]
    assert [snapshot_named(r.xml) for r in records] == [
        ("a", "running"),
        ("b", "running"),
        ("c", "running"),
    ]


def test_no_metadata_snapshot_returns_the_request(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "qcow2")], "shutoff")
    request = "<domainsnapshot><name>quiet</name></domainsnapshot>"

    xml = hypervisor.create_snapshot(made.name, request, CreateFlag.NO_METADATA)

    assert xml == request
    assert hypervisor.list_snapshots(made.name) == []  # libvirt forgot it ...
    assert internal_images(made.image("vda")) == ["quiet"]  # ... the image did not


def test_external_disk_only_snapshot_of_running_domain(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "qcow2")], "running")
    overlay = made.directory / "vda.e1.qcow2"

    xml = hypervisor.create_snapshot(made.name, external_xml("e1", overlay), CreateFlag.DISK_ONLY)

    assert snapshot_named(xml) == ("e1", "disk-snapshot")
    assert overlay.is_file()
    assert hypervisor.domain(made.name).disks[0].path == str(overlay)  # QEMU writes there now
    [record] = hypervisor.list_snapshots(made.name)
    assert (record.name, record.is_current, record.parent) == ("e1", True, None)

    hypervisor.delete_snapshot(made.name, "e1")  # libvirt 9.0 can delete external ones

    assert hypervisor.list_snapshots(made.name) == []
    assert not overlay.exists()  # committed into vda.qcow2, then removed
    assert hypervisor.domain(made.name).disks[0].path == str(made.disks["vda"])
    assert hypervisor.domain(made.name).state is DomainState.RUNNING


def test_metadata_only_delete_keeps_the_data(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "qcow2")], "paused")
    hypervisor.create_snapshot(
        made.name, "<domainsnapshot><name>m</name></domainsnapshot>", CreateFlag(0)
    )

    hypervisor.delete_snapshot(made.name, "m", metadata_only=True)

    assert hypervisor.list_snapshots(made.name) == []
    assert internal_images(made.image("vda")) == ["m"]


# --- errors ----------------------------------------------------------------------------------


def test_unknown_domain_is_not_found(hypervisor: Hypervisor, session_prefix: str) -> None:
    missing = session_prefix + "never-made"
    calls: list[Callable[[], object]] = [
        lambda: hypervisor.domain(missing),
        lambda: hypervisor.domain("6b0c2a4e-0000-4000-8000-000000000000"),
        lambda: hypervisor.domain_xml(missing),
        lambda: hypervisor.list_snapshots(missing),
        lambda: hypervisor.create_snapshot(missing, "<domainsnapshot/>", CreateFlag(0)),
        lambda: hypervisor.delete_snapshot(missing, "s1"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match="not found: no domain has that name"):
            call()


def test_a_domain_found_by_uuid_and_then_redefined_or_undefined(
    hypervisor: Hypervisor, domain_factory: DomainFactory, libvirt_conn: Any
) -> None:
    """Handles kept by UUID follow the UUID: a redefinition is seen, an undefinition
    is reported as not found, and a new domain by the old name is not mistaken for it."""
    made = domain_factory([DiskSpec()], "shutoff")
    uuid = made.dom.UUIDString()
    assert hypervisor.domain_state(uuid) is DomainState.SHUTOFF
    assert hypervisor.domain(uuid).name == made.name
    xml = made.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    # Redefined with the same UUID and a new description: the kept handle sees it.
    libvirt_conn.defineXML(xml.replace("</name>", "</name><description>again</description>", 1))
    assert "again" in hypervisor.domain_xml(uuid, inactive=True)
    made.dom.undefine()
    assert hypervisor.domain_state(uuid) is None
    with pytest.raises(NotFoundError, match="not found"):
        hypervisor.domain_xml(uuid)
    with pytest.raises(NotFoundError, match="not found"):
        hypervisor.snapshot_created(uuid, "any")
    # The same name, a new UUID: looking up the old UUID still finds nothing.
    libvirt_conn.defineXML(xml.replace(f"<uuid>{uuid}</uuid>", "", 1))
    assert hypervisor.domain(made.name).uuid != uuid
    assert hypervisor.domain_state(uuid) is None


def test_unknown_snapshot_is_not_found(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec()], "shutoff")

    with pytest.raises(NotFoundError, match="has no snapshot 'nosuch'"):
        hypervisor.snapshot_xml(made.name, "nosuch")
    with pytest.raises(NotFoundError, match="has no snapshot 'nosuch'"):
        hypervisor.delete_snapshot(made.name, "nosuch")


@pytest.mark.parametrize(
    ("xml", "code", "reason"),
    [
        (
            "<notasnapshot/>",
            libvirt.VIR_ERR_XML_ERROR,
            "expecting root element of 'domainsnapshot'",
        ),
        ("<domainsnapshot><name>", libvirt.VIR_ERR_XML_DETAIL, "Premature end of data"),
    ],
)
def test_bad_snapshot_xml_is_a_permanent_error(
    hypervisor: Hypervisor, domain_factory: DomainFactory, xml: str, code: int, reason: str
) -> None:
    made = domain_factory([DiskSpec()], "shutoff")

    with pytest.raises(LibvirtError) as err:
        hypervisor.create_snapshot(made.name, xml, CreateFlag(0))

    assert not err.value.transient
    assert err.value.code == code
    assert (err.value.operation, err.value.domain) == ("create snapshot", made.name)
    assert reason in err.value.reason
    assert reason in str(err.value)
    assert hypervisor.list_snapshots(made.name) == []


def test_internal_snapshot_of_raw_disk_is_refused(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "raw")], "running")

    with pytest.raises(LibvirtError) as err:
        hypervisor.create_snapshot(
            made.name, "<domainsnapshot><name>x</name></domainsnapshot>", CreateFlag(0)
        )

    assert not err.value.transient
    assert err.value.code == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    assert "internal snapshot for disk vda unsupported for storage type raw" in err.value.reason


def test_existing_overlay_file_is_refused(
    hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    made = domain_factory([DiskSpec("vda", "qcow2")], "running")
    overlay = made.directory / "taken.qcow2"
    overlay.write_bytes(b"someone else's data")

    with pytest.raises(LibvirtError) as err:
        hypervisor.create_snapshot(made.name, external_xml("e", overlay), CreateFlag.DISK_ONLY)

    assert not err.value.transient
    assert err.value.code == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
    assert "already exists" in err.value.reason
    assert overlay.read_bytes() == b"someone else's data"


# --- the fixtures themselves -------------------------------------------------------------


def _gone(conn: Any, domain: ScratchDomain) -> bool:
    names = {str(d.name()) for d in conn.listAllDomains(0)}
    return domain.name not in names and not domain.directory.exists()


def test_factory_teardown_leaves_nothing_behind(
    libvirt_conn: Any, hypervisor: Hypervisor, domain_factory: DomainFactory
) -> None:
    # The hardest case: running, with internal and external snapshots whose overlay
    # and metadata must all go.
    made = domain_factory([DiskSpec("vda", "qcow2"), DiskSpec("vdb", "qcow2")], "running")
    hypervisor.create_snapshot(
        made.name, "<domainsnapshot><name>i</name></domainsnapshot>", CreateFlag(0)
    )
    hypervisor.create_snapshot(
        made.name, external_xml("e", made.directory / "vda.e.qcow2"), CreateFlag.DISK_ONLY
    )
    shutoff = domain_factory([DiskSpec("vda", "raw")], "shutoff")
    assert made.directory.is_dir()
    assert {made.name, shutoff.name} <= {str(d.name()) for d in libvirt_conn.listAllDomains(0)}

    domain_factory.cleanup()  # what the fixture's teardown runs

    assert _gone(libvirt_conn, made)
    assert _gone(libvirt_conn, shutoff)
    with pytest.raises(NotFoundError):
        hypervisor.domain(made.uuid)
    domain_factory.cleanup()  # the fixture's own teardown: nothing left to do


def test_session_sweep_removes_every_prefixed_domain(
    libvirt_conn: Any, session_prefix: str, virt_type: str, tmp_path: Path
) -> None:
    sub = DomainFactory(libvirt_conn, session_prefix + "sweep-", tmp_path / "root", virt_type)
    made = [sub([DiskSpec()], "running"), sub([DiskSpec()], "paused"), sub([], "shutoff")]
    made[0].dom.undefine()  # now transient: it goes when destroyed

    swept = sub.sweep()

    assert sorted(swept) == sorted(d.name for d in made)
    assert not any(str(d.name()).startswith(sub.prefix) for d in libvirt_conn.listAllDomains(0))
    assert not sub.root.exists()


def test_removal_never_touches_foreign_domains(libvirt_conn: Any, session_prefix: str) -> None:
    with pytest.raises(ValueError, match="lacks the prefix"):
        remove_domain(libvirt_conn, "production-db", session_prefix)
