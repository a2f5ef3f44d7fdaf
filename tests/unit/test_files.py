"""Reading qcow2 backing chains and removing files, on real files in a temporary directory."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from snapshotd.adapters import files
from snapshotd.core.model import CreateFlag, DiskPlan, Location, Method, SnapshotSpec


def qcow2(path: Path, backing: str | None) -> None:
    """A qcow2 header with just the fields backing_chain reads."""
    name = backing.encode() if backing else b""
    header = b"QFI\xfb" + struct.pack(">I", 3)
    header += struct.pack(">QI", 512 if name else 0, len(name))
    data = header.ljust(512, b"\0") + name
    path.write_bytes(data)


def test_backing_chain_follows_relative_and_absolute_names(tmp_path: Path) -> None:
    (tmp_path / "base.raw").write_bytes(b"\0" * 1024)
    qcow2(tmp_path / "o1.qcow2", str(tmp_path / "base.raw"))
    (tmp_path / "sub").mkdir()
    qcow2(tmp_path / "sub" / "o2.qcow2", "../o1.qcow2")
    assert files.backing_chain(str(tmp_path / "sub" / "o2.qcow2")) == [
        str(tmp_path / "sub" / "o2.qcow2"),
        str(tmp_path / "o1.qcow2"),
        str(tmp_path / "base.raw"),
    ]


def test_backing_chain_stops_at_a_loop_a_missing_file_and_a_network_name(tmp_path: Path) -> None:
    qcow2(tmp_path / "a.qcow2", "b.qcow2")
    qcow2(tmp_path / "b.qcow2", "a.qcow2")
    assert files.backing_chain(str(tmp_path / "a.qcow2")) == [
        str(tmp_path / "a.qcow2"),
        str(tmp_path / "b.qcow2"),
    ]
    qcow2(tmp_path / "c.qcow2", "gone.qcow2")
    assert files.backing_chain(str(tmp_path / "c.qcow2"))[-1] == str(tmp_path / "gone.qcow2")
    qcow2(tmp_path / "n.qcow2", "nbd://host/export")
    assert files.backing_chain(str(tmp_path / "n.qcow2")) == [str(tmp_path / "n.qcow2")]


def test_remove_files_never_follows_a_symlink(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(keep)
    plain = tmp_path / "plain"
    plain.write_text("x")
    removed = files.remove_files((str(link), str(plain), str(tmp_path / "missing")))
    assert removed == [str(plain)]
    assert keep.read_text() == "precious"
    assert link.is_symlink()


def test_write_private_replaces_a_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    target = tmp_path / "out" / "index.json"
    target.parent.mkdir()
    target.symlink_to(victim)
    files.write_private(target, "new\n")
    assert victim.read_text() == "keep me\n"
    assert not target.is_symlink()
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.json"]


def test_write_private_leaves_no_temporary_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        files.write_private(target, "bad \udc80 text")  # a lone surrogate cannot be encoded
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def _spec(overlay: Path, base: str | None, memory: Path | None = None) -> SnapshotSpec:
    disk = DiskPlan("vda", Location.EXTERNAL, "test", source=base, new_file=str(overlay))
    return SnapshotSpec(
        domain="d",
        name="s",
        description=None,
        memory=Location.EXTERNAL if memory else Location.NO,
        memory_file=str(memory) if memory else None,
        disks=(disk,),
        flags=CreateFlag(0),
        method=Method.QEMU_IMG,
        row=1,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("base_mode", "made_mode", "expected"),
    [
        (0o600, 0o644, 0o600),  # libvirt < 11.10 on a shut-off domain: closed again
        (0o640, 0o644, 0o640),  # the image's group may read it: so may the overlay's
        (0o644, 0o600, 0o600),  # never widened
        (0o600, 0o600, 0o600),
        (0o400, 0o644, 0o600),  # the owner's bits stay: QEMU writes the overlay
    ],
)
def test_an_overlay_is_no_more_readable_than_its_base_image(
    tmp_path: Path, base_mode: int, made_mode: int, expected: int
) -> None:
    base, overlay = tmp_path / "vda.qcow2", tmp_path / "vda.s"
    base.write_bytes(b"image")
    base.chmod(base_mode)
    overlay.write_bytes(b"")
    overlay.chmod(made_mode)
    changed = files.narrow_modes(_spec(overlay, str(base)))
    assert _mode(overlay) == expected
    assert changed == ([] if expected == made_mode else [f"{overlay} {expected:04o}"])


def test_a_memory_file_and_an_overlay_of_a_network_disk_are_the_owners_alone(
    tmp_path: Path,
) -> None:
    overlay, memory = tmp_path / "vda.s", tmp_path / "d.s.memory"
    for path in (overlay, memory):
        path.write_bytes(b"")
        path.chmod(0o644)
    files.narrow_modes(_spec(overlay, None, memory))
    assert (_mode(overlay), _mode(memory)) == (0o600, 0o600)


def test_an_overlay_of_another_group_loses_the_group_bits(tmp_path: Path) -> None:
    base, overlay = tmp_path / "vda.qcow2", tmp_path / "vda.s"
    base.write_bytes(b"image")
    base.chmod(0o660)
    overlay.write_bytes(b"")
    overlay.chmod(0o660)
    os.chown(overlay, -1, base.stat().st_gid + 1)
    files.narrow_modes(_spec(overlay, str(base)))
    assert _mode(overlay) == 0o600


def test_a_symlink_in_an_overlay_s_place_is_not_followed(tmp_path: Path) -> None:
    base, target, overlay = tmp_path / "vda.qcow2", tmp_path / "other", tmp_path / "vda.s"
    base.write_bytes(b"image")
    base.chmod(0o600)
    target.write_bytes(b"someone else's")
    target.chmod(0o644)
    overlay.symlink_to(target)
    assert files.narrow_modes(_spec(overlay, str(base))) == []
    assert _mode(target) == 0o644


def test_a_mode_that_cannot_be_narrowed_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As in the unit, which has no CAP_FOWNER, for an overlay QEMU's user owns."""
    base, overlay = tmp_path / "vda.qcow2", tmp_path / "vda.s"
    base.write_bytes(b"image")
    base.chmod(0o600)
    overlay.write_bytes(b"")
    overlay.chmod(0o644)

    def refuse(_fd: int, _mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "fchmod", refuse)
    assert files.narrow_modes(_spec(overlay, str(base))) == []
    assert f"{overlay}: cannot narrow its mode to 0600 (Operation not permitted)" in caplog.text
    assert f"chmod 0600 {overlay}" in caplog.text
