"""Planner rules beyond the table: several disks, disks by path, disks that
cannot take part, domain states, files and flags (pure, no libvirt)."""

from __future__ import annotations

import pytest

from snapshotd.core.model import (
    CreateFlag,
    DiskInfo,
    DomainInfo,
    DomainState,
    Location,
    Method,
    Request,
    SnapshotRequest,
)
from snapshotd.core.plan import plan_snapshot
from snapshotd.errors import PlanError, RequestError

IMG = "/var/lib/libvirt/images"
QCOW = DiskInfo("vda", format="qcow2", path=f"{IMG}/web.qcow2")
RAW = DiskInfo("vdb", format="raw", path=f"{IMG}/data.img")
CDROM = DiskInfo("sda", device="cdrom", format="raw", path="/iso/debian.iso", readonly=True)
EMPTY_CDROM = DiskInfo("sdb", device="cdrom", format="raw", readonly=True)
SHARED = DiskInfo("vdc", format="raw", path="/srv/shared.img", shareable=True)
BLOCK = DiskInfo("vdd", source_type="block", format="raw", path="/dev/vg0/web")
NETWORK = DiskInfo("vde", source_type="network", format="raw", protocol="rbd")


def dom(*disks: DiskInfo, state: DomainState = DomainState.RUNNING) -> DomainInfo:
    return DomainInfo("web", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", state, disks)


def req(**kw: object) -> SnapshotRequest:
    kw.setdefault("name", "s1")
    return SnapshotRequest(**kw)  # type: ignore[arg-type]


def modes(domain: DomainInfo, request: SnapshotRequest) -> dict[str, str]:
    return {d.target: d.location.value for d in plan_snapshot(domain, request).spec.disks}


# --- two disks, one qcow2 and one raw --------------------------------------


def test_internal_checkpoint_refuses_a_raw_disk_naming_it_and_the_fix() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, RAW), req())
    msg = str(caught.value)
    assert caught.value.disk == "vdb"
    assert "vdb (raw file /var/lib/libvirt/images/data.img)" in msg
    assert "external snapshot" in msg
    assert "convert" in msg


def test_raw_disk_cannot_be_left_out_of_an_internal_snapshot() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, RAW), req(disk=(("vdb", Request.NO),)))
    assert caught.value.disk == "vdb"
    assert "must cover every writable disk" in str(caught.value)


def test_disk_only_external_covers_both_disks_with_overlays_beside_images() -> None:
    spec = plan_snapshot(dom(QCOW, RAW), req(disk_only=True)).spec
    assert spec.method is Method.TRANSACTION
    assert [(d.target, d.location, d.new_file) for d in spec.disks] == [
        ("vda", Location.EXTERNAL, f"{IMG}/web.vda.s1.qcow2"),
        ("vdb", Location.EXTERNAL, f"{IMG}/web.vdb.s1.qcow2"),
    ]
    assert spec.allowed_directories == (IMG,)
    assert CreateFlag.DISK_ONLY in spec.flags


def test_one_disk_excluded_from_an_external_snapshot() -> None:
    m = modes(dom(QCOW, RAW), req(memory=Request.NO, disk=(("vdb", Request.NO),)))
    assert m == {"vda": "external", "vdb": "no"}


def test_omitted_disk_follows_the_explicit_one() -> None:
    m = modes(dom(QCOW, RAW), req(memory=Request.NO, disk=(("vda", Request.EXTERNAL),)))
    assert m == {"vda": "external", "vdb": "external"}


def test_mixing_internal_and_external_disks_is_unsupported() -> None:
    request = req(
        memory=Request.NO,
        disk=(("vda", Request.INTERNAL), ("vdb", Request.EXTERNAL)),
    )
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, RAW, state=DomainState.SHUTOFF), request)
    assert caught.value.kind == "unsupported"
    assert "vda ask for internal and vdb for external" in str(caught.value)


def test_offline_internal_of_raw_disk_is_refused_before_libvirt() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, RAW, state=DomainState.SHUTOFF), req())
    assert caught.value.disk == "vdb"


def test_offline_external_is_disk_only_via_qemu_img() -> None:
    spec = plan_snapshot(
        dom(QCOW, RAW, state=DomainState.SHUTOFF), req(disks=Request.EXTERNAL)
    ).spec
    assert spec.method is Method.QEMU_IMG
    assert spec.flags & CreateFlag.DISK_ONLY
    assert {d.location for d in spec.disks} == {Location.EXTERNAL}


# --- disks by path ------------------------------------------------------------


def test_disk_named_by_its_source_path() -> None:
    m = modes(
        dom(QCOW, RAW),
        req(memory=Request.NO, disk=((f"{IMG}/data.img", Request.NO),)),
    )
    assert m == {"vda": "external", "vdb": "no"}


def test_path_with_redundant_parts_still_matches() -> None:
    m = modes(
        dom(QCOW, RAW),
        req(memory=Request.NO, disk=((f"{IMG}//./data.img", Request.NO),)),
    )
    assert m["vdb"] == "no"


def test_a_path_backing_two_disks_is_ambiguous_and_lists_both_targets() -> None:
    twin = DiskInfo("vdz", format="raw", path=f"{IMG}/data.img")
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, RAW, twin), req(disk=((f"{IMG}/data.img", Request.NO),)))
    assert "backs disks vdb and vdz" in str(caught.value)
    assert "by its target" in str(caught.value)


def test_unknown_disk_lists_the_domains_disks() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW), req(disk=(("vdq", Request.NO),)))
    assert "no disk is named 'vdq'" in str(caught.value)
    assert "vda (qcow2 file" in str(caught.value)


def test_same_disk_twice_with_different_requests() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(
            dom(QCOW),
            req(disk=(("vda", Request.NO), (f"{IMG}/web.qcow2", Request.EXTERNAL))),
        )
    assert "requested twice" in str(caught.value)


# --- disks that cannot take part --------------------------------------------------


@pytest.mark.parametrize("odd", [CDROM, EMPTY_CDROM], ids=["cdrom", "empty-cdrom"])
def test_cdrom_gets_snapshot_no_in_an_internal_checkpoint(odd: DiskInfo) -> None:
    spec = plan_snapshot(dom(QCOW, odd), req()).spec
    assert spec.method is Method.SAVEVM
    by = {d.target: d for d in spec.disks}
    assert by[odd.target].location is Location.NO
    assert "cdrom" in by[odd.target].reason


def test_explicit_request_on_a_cdrom_is_an_error() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, CDROM), req(memory=Request.NO, disk=(("sda", Request.EXTERNAL),)))
    assert caught.value.disk == "sda"
    assert "Drop the request for sda" in str(caught.value)


def test_readonly_disk_is_left_out() -> None:
    ro = DiskInfo("vdf", format="qcow2", path=f"{IMG}/base.qcow2", readonly=True)
    assert modes(dom(QCOW, ro), req(disk_only=True)) == {"vda": "external", "vdf": "no"}


def test_shareable_disk_is_left_out_of_external_and_named() -> None:
    spec = plan_snapshot(dom(QCOW, SHARED), req(disk_only=True)).spec
    shared = {d.target: d for d in spec.disks}["vdc"]
    assert shared.location is Location.NO
    assert "shareable" in shared.reason


def test_block_disk_without_directory_is_left_out_when_omitted() -> None:
    spec = plan_snapshot(dom(QCOW, BLOCK), req(disk_only=True)).spec
    block = {d.target: d for d in spec.disks}["vdd"]
    assert block.location is Location.NO
    assert "--directory" in block.reason


def test_block_disk_explicitly_external_without_directory_is_an_error() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(BLOCK), req(disk_only=True, disk=(("vdd", Request.EXTERNAL),)))
    assert caught.value.disk == "vdd"
    assert "set a snapshot directory" in str(caught.value)


def test_block_and_network_disks_get_overlays_in_a_configured_directory() -> None:
    spec = plan_snapshot(
        dom(BLOCK, NETWORK), req(disk_only=True, directory="/var/lib/snap/{domain}")
    ).spec
    assert [d.new_file for d in spec.disks] == [
        "/var/lib/snap/web/web.vdd.s1.qcow2",
        "/var/lib/snap/web/web.vde.s1.qcow2",
    ]
    assert spec.allowed_directories == ("/var/lib/snap",)


def test_only_block_disk_and_no_directory_leaves_nothing_to_snapshot() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(BLOCK), req(disk_only=True))
    assert "nothing to snapshot" in str(caught.value)
    assert "vdd" in str(caught.value)


def test_network_disk_cannot_hold_internal_snapshot() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(NETWORK), req())
    assert "network disk" in str(caught.value)


def test_domain_xml_snapshot_no_is_honoured_for_default_disks() -> None:
    scratch = DiskInfo("vdg", format="qcow2", path=f"{IMG}/scratch.qcow2", snapshot_default="no")
    assert modes(dom(QCOW, scratch), req(disk_only=True)) == {"vda": "external", "vdg": "no"}


# --- domain states -------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "kind", "words"),
    [
        (DomainState.PMSUSPENDED, "unsupported", "pmsuspended"),
        (DomainState.SHUTDOWN, "refused", "shutting down"),
        (DomainState.CRASHED, "refused", "crashed"),
        (DomainState.NOSTATE, "refused", "no state"),
    ],
)
def test_states_that_cannot_be_snapshotted(state: DomainState, kind: str, words: str) -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, state=state), req())
    assert caught.value.kind == kind
    assert words in str(caught.value)
    assert "'web'" in str(caught.value)


def test_blocked_is_online() -> None:
    spec = plan_snapshot(dom(QCOW, state=DomainState.BLOCKED), req()).spec
    assert spec.method is Method.SAVEVM


# --- files -------------------------------------------------------------------------


def test_external_memory_without_directory_is_refused() -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW), req(memory=Request.EXTERNAL))
    assert "--directory" in str(caught.value)


def test_external_memory_file_and_overlay_in_directory() -> None:
    spec = plan_snapshot(
        dom(QCOW), req(memory=Request.EXTERNAL, directory="/var/lib/snap/{domain}")
    ).spec
    assert spec.memory_file == "/var/lib/snap/web/web.s1.memory"
    assert spec.disks[0].new_file == "/var/lib/snap/web/web.vda.s1.qcow2"
    assert spec.method is Method.MIGRATE_TRANSACTION
    assert spec.new_files == (
        "/var/lib/snap/web/web.vda.s1.qcow2",
        "/var/lib/snap/web/web.s1.memory",
    )


@pytest.mark.parametrize(
    ("directory", "words"),
    [
        ("/var/lib/snap/../../etc", "must not contain '..'"),
        ("relative/dir", "absolute path"),
        ("/var/lib/snap/\x00x", "control character"),
        ("/var/lib/snap/\nx", "control character"),
        ("/var/lib/{domain.__class__}", "uses {domain.__class__}"),
        ("/var/lib/{policy}", "uses {policy}"),
    ],
)
def test_bad_directories_are_refused(directory: str, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        plan_snapshot(dom(QCOW), req(disk_only=True, directory=directory))
    assert words in str(caught.value)


@pytest.mark.parametrize("name", ["..", "a/b", "x\x00", ".hidden", "-rf", "a b", "a\nb", ""])
def test_bad_snapshot_names_are_refused(name: str) -> None:
    with pytest.raises(RequestError):
        plan_snapshot(dom(QCOW), req(name=name))


@pytest.mark.parametrize("domain_name", ["..", "evil/../../etc", "a\nb"])
def test_domain_name_cannot_escape_the_directory(domain_name: str) -> None:
    evil = DomainInfo(domain_name, "u", DomainState.RUNNING, (QCOW,))
    with pytest.raises(RequestError):
        plan_snapshot(evil, req(disk_only=True, directory="/var/lib/snap/{domain}"))


def test_file_template_with_slash_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        plan_snapshot(dom(QCOW), req(disk_only=True, disk_file_template="../{disk}.qcow2"))
    assert "contains '/'" in str(caught.value)


def test_two_disks_writing_the_same_overlay_are_refused() -> None:
    a = DiskInfo("vda", format="qcow2", path="/a/disk.qcow2")
    b = DiskInfo("vdb", format="qcow2", path="/b/disk.qcow2")
    with pytest.raises(RequestError) as caught:
        plan_snapshot(
            dom(a, b),
            req(disk_only=True, directory="/snap", disk_file_template="{snapshot}.qcow2"),
        )
    assert "would both be written to /snap/s1.qcow2" in str(caught.value)


def test_overlay_name_equal_to_a_disk_image_is_refused() -> None:
    a = DiskInfo("vda", format="qcow2", path="/a/disk.qcow2")
    with pytest.raises(RequestError) as caught:
        plan_snapshot(dom(a), req(disk_only=True, disk_file_template="disk.qcow2"))
    assert "written over the image of disk vda" in str(caught.value)


# --- flags -------------------------------------------------------------------------


def test_quiesce_on_disk_only_running_domain() -> None:
    spec = plan_snapshot(dom(QCOW), req(disk_only=True, quiesce=True)).spec
    assert spec.flags & CreateFlag.QUIESCE
    assert spec.flags & CreateFlag.DISK_ONLY


@pytest.mark.parametrize(
    ("state", "kw"),
    [
        (DomainState.RUNNING, {}),
        (DomainState.SHUTOFF, {"disks": Request.EXTERNAL}),
        (DomainState.PAUSED, {"disk_only": True}),
    ],
    ids=["with-memory", "offline", "paused"],
)
def test_quiesce_refused_where_the_agent_cannot_help(
    state: DomainState, kw: dict[str, object]
) -> None:
    with pytest.raises(PlanError) as caught:
        plan_snapshot(dom(QCOW, state=state), req(quiesce=True, **kw))
    assert "quiesce" in str(caught.value)


def test_live_needs_external_memory() -> None:
    with pytest.raises(PlanError):
        plan_snapshot(dom(QCOW), req(live=True))
    spec = plan_snapshot(dom(QCOW), req(live=True, memory=Request.EXTERNAL, directory="/snap")).spec
    assert spec.flags & CreateFlag.LIVE


def test_reuse_external_only_with_external_disks() -> None:
    with pytest.raises(RequestError):
        plan_snapshot(dom(QCOW), req(reuse_external=True))
    spec = plan_snapshot(dom(QCOW), req(disk_only=True, reuse_external=True)).spec
    assert spec.flags & CreateFlag.REUSE_EXT


def test_atomic_and_no_metadata_follow_the_request() -> None:
    spec = plan_snapshot(dom(QCOW), req(atomic=False, no_metadata=True, disk_only=True)).spec
    assert not spec.flags & CreateFlag.ATOMIC
    assert spec.flags & CreateFlag.NO_METADATA
