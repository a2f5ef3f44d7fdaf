"""Every row of the seed's state table, on real QEMU domains through `snapshotd take`.

Valid rows: a domain is put in the row's state, `snapshotd take` runs with the
row's requests, and libvirt's own snapshot XML afterwards shows the memory and disk
modes the row promises; external files exist; internal snapshots show in
`qemu-img snapshot -l`.  Invalid and unsupported rows: exit 2, the row's reason,
and libvirt has no new snapshot and the disk no new file.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.cli import (
    disk_modes,
    files_under,
    qemu_img_snapshots,
    snapshot_xml,
    snapshotd,
)
from tests.integration.domains import DomainFactory
from tests.tablerows import Expected, load_rows

ROWS = load_rows()


def _args(memory: str, disk: str, disk_only: bool) -> list[str]:
    args = []
    if memory != "omit":
        args += ["--memory", memory]
    if disk != "omit":
        args += ["--disks", disk]
    if disk_only:
        args.append("--disk-only")
    return args


def _valid_cases() -> list[Any]:
    cases = []
    for row in ROWS:
        if row.outcome != "ok":
            continue
        states = ["running", "paused"] if row.online else ["shutoff"]
        for state in states:
            for memory, disk, flag in row.combinations():
                ident = (
                    f"row{row.number}-{state}-mem_{memory}-disk_{disk}-{'on' if flag else 'off'}"
                )
                cases.append(pytest.param(row, state, memory, disk, flag, id=ident))
    return cases


@pytest.mark.parametrize(("row", "state", "memory", "disk", "disk_only"), _valid_cases())
def test_valid_row_on_real_domain(
    domain_factory: DomainFactory,
    row: Expected,
    state: str,
    memory: str,
    disk: str,
    disk_only: bool,
) -> None:
    dom = domain_factory(state=state)
    snapdir = dom.directory / "snaps"
    name = f"row{row.number}"
    result = snapshotd(
        "take",
        "--domain",
        dom.name,
        "--name",
        name,
        "--directory",
        str(snapdir),
        *_args(memory, disk, disk_only),
    )
    assert result.code == 0, result.err
    assert f"state table row {row.number}:" in result.out

    root = snapshot_xml(dom.dom, name)
    mem = root.find("memory")
    assert mem is not None
    assert mem.get("snapshot") == row.memory_result
    expected_disk = "external" if row.disk_result == "default" else row.disk_result
    assert disk_modes(root) == {"vda": expected_disk}

    image = dom.disks["vda"]
    assert image is not None
    if row.memory_result == "external":
        memory_file = snapdir / f"{dom.name}.{name}.memory"
        assert mem.get("file") == str(memory_file)
        assert memory_file.is_file()
        assert memory_file.stat().st_size > 0
    if expected_disk == "external":
        overlay = root.find("disks/disk/source")
        assert overlay is not None
        new_file = snapdir / f"{dom.name}.vda.{name}.qcow2"
        assert overlay.get("file") == str(new_file)
        assert new_file.is_file()
        # The domain now writes to the overlay, whose backing file is the old image.
        assert str(new_file) in dom.dom.XMLDesc(0)
    if expected_disk == "internal" or row.memory_result == "internal":
        listing = qemu_img_snapshots(image, force_share=row.online)
        assert name in listing
    if row.online and row.memory_result == "no":
        assert root.findtext("state") == "disk-snapshot"
    elif row.online:
        assert root.findtext("state") == state
    else:
        assert root.findtext("state") in {"shutoff", "disk-snapshot"}
    # The domain is still in the state it was in.
    assert dom.state() == {"running": 1, "paused": 3, "shutoff": 5}[state]


def _refused_rows() -> list[Any]:
    return [
        pytest.param(row, id=f"row{row.number}-{row.outcome}")
        for row in ROWS
        if row.outcome != "ok"
    ]


@pytest.mark.parametrize("row", _refused_rows())
def test_refused_row_changes_nothing(domain_factory: DomainFactory, row: Expected) -> None:
    dom = domain_factory(state="running" if row.online else "shutoff")
    before = files_under(dom.directory)
    for memory, disk, flag in row.combinations():
        result = snapshotd(
            "take",
            "--domain",
            dom.name,
            "--name",
            "refused",
            "--directory",
            str(dom.directory / "snaps"),
            *_args(memory, disk, flag),
        )
        assert result.code == 2, (memory, disk, flag, result.out, result.err)
        if row.outcome == "invalid":
            assert f"invalid combination ({row.reason})" in result.err
        else:
            assert "unsupported for now" in result.err
        assert f"[seed table row {row.number}]" in result.err
        assert dom.name in result.err
        assert dom.dom.snapshotNum(0) == 0
        assert files_under(dom.directory) == before
