"""Reading qcow2 backing chains and removing files, on real files in a temporary directory."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from snapshotd.adapters import files


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
