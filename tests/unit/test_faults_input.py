"""Fault case 14, the parts that need no libvirt: names and paths refused by the
command line before it connects to libvirt or writes a file.

Every command here names a connection URI that cannot work (a socket that does not
exist): had snapshotd connected, it would fail with exit 1 and a connection error, not
exit 2 with the name's problem.  tests/integration/test_faults_input.py runs the same
refusals against a real domain and shows that it is left as it was.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from snapshotd import cli

DEAD = "qemu+unix:///system?socket=/nonexistent/snapshotd-faults/none.sock"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    out = io.StringIO()
    try:
        code = cli.main(argv, out=out)
    except SystemExit as exc:  # argparse refuses an argument this way
        code = int(exc.code or 0)
    return code, capsys.readouterr().err + out.getvalue()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Each: the command line, the option argparse names, and a part of the message.
REFUSED = [
    (["take", "--domain", "web/../etc"], "--domain", "allows no '/'"),
    (["take", "--domain", "web\nforged log line"], "--domain", "allows no a newline"),
    (["list", "--domain", "../web"], "--domain", "allows no '/'"),
    (["export", "--domain", "/etc/passwd"], "--domain", "allows no '/'"),
    (["revert", "--domain", "a\0b", "snap"], "--domain", "allows no NUL"),
    (["take", "--domain", ""], "--domain", "is empty"),
    (["take", "--domain", "web", "--name", "../escape"], "--name", "is not allowed"),
    (["take", "--domain", "web", "--name", "a/b"], "--name", "is not allowed"),
    (["take", "--domain", "web", "--name", "/abs"], "--name", "is not allowed"),
    (["take", "--domain", "web", "--name", "a\nb"], "--name", "is not allowed"),
    (["take", "--domain", "web", "--name", "a\0b"], "--name", "is not allowed"),
    (["plan", "--domain", "web", "--name", ".hidden"], "--name", "is not allowed"),
    (["take", "--domain", "web", "--directory", "../up"], "--directory", "absolute path"),
    (["take", "--domain", "web", "--directory", "rel/dir"], "--directory", "absolute path"),
    (["take", "--domain", "web", "--directory", "/var/x/../../etc"], "--directory", "'..'"),
    (["take", "--domain", "web", "--directory", "/tmp/a\nb"], "--directory", "control"),
    (["take", "--domain", "web", "--directory", "/tmp/a\0b"], "--directory", "control"),
    (["export", "--domain", "web", "--out", "out\nforged"], "--out", "control character"),
    (["export", "--domain", "web", "--out", ""], "--out", "is empty"),
]


@pytest.mark.parametrize(("argv", "option", "message"), REFUSED, ids=[repr(r[0]) for r in REFUSED])
def test_fault_14_names_and_paths_refused_before_libvirt_or_a_file(
    argv: list[str],
    option: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """14. Names and paths with `../`, `/`, NUL, newlines, absolute paths, or a symlink
    pointing out of the allowed directory: rejected before any libvirt call or file
    write."""
    monkeypatch.chdir(tmp_path)  # export's default --out and any stray file land here
    code, err = run([*argv, "--connect", DEAD, "--state-dir", str(tmp_path / "state")], capsys)
    assert code == 2, err
    assert f"argument {option}" in err  # the error names the option ...
    assert message in err  # ... and what is wrong with it
    assert "none.sock" not in err  # libvirt was never asked
    assert tree(tmp_path) == []  # no file or directory was made


def snapshot_doc(name: str, parent: str | None = None) -> str:
    parent_xml = f"<parent><name>{parent}</name></parent>" if parent else ""
    return (
        f"<domainsnapshot><name>{name}</name><state>shutoff</state>{parent_xml}"
        "<creationTime>1700000000</creationTime></domainsnapshot>\n"
    )


def export_dir(root: Path, index_files: list[str]) -> Path:
    out = root / "export"
    out.mkdir()
    entries = [{"file": f, "name": f"s{i}", "parent": None} for i, f in enumerate(index_files)]
    (out / "index.json").write_text(
        '{"format": "snapshotd-export/1", "current": null, "snapshots": '
        + str(entries).replace("'", '"').replace("None", "null")
        + "}\n"
    )
    return out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("index-dotdot", "names a file outside it"),
        ("index-absolute", "names a file outside it"),
        ("index-subdirectory", "names a file outside it"),
        ("index-newline", "names a file outside it"),
        ("index-hidden", "names a file outside it"),
        ("document-symlink-out", "is a symlink to"),
        ("unindexed-symlink-out", "is a symlink to"),
        ("index-symlink-out", "is a symlink to"),
    ],
)
def test_fault_14_import_reads_nothing_from_outside_the_export_directory(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """14. Names and paths with `../`, `/`, NUL, newlines, absolute paths, or a symlink
    pointing out of the allowed directory: rejected before any libvirt call or file
    write.  (Import file names: an export directory's index and its files.)"""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.xml").write_text(snapshot_doc("stolen"))
    (outside / "index.json").write_text('{"snapshots": []}\n')
    named = {
        "index-dotdot": "../outside/secret.xml",
        "index-absolute": str(outside / "secret.xml"),
        "index-subdirectory": "sub/secret.xml",
        "index-newline": "a\nb.xml",
        "index-hidden": ".secret.xml",
        "document-symlink-out": "0001-a.xml",
    }
    if case in named:
        out = export_dir(tmp_path, [named[case]])
        culprit = out / ("index.json" if case != "document-symlink-out" else "0001-a.xml")
        if case == "document-symlink-out":
            (out / "0001-a.xml").symlink_to(outside / "secret.xml")
    else:
        out = tmp_path / "export"
        out.mkdir()
        if case == "unindexed-symlink-out":
            (out / "0001-a.xml").symlink_to(outside / "secret.xml")
            culprit = out / "0001-a.xml"
        else:
            (out / "index.json").symlink_to(outside / "index.json")
            culprit = out / "index.json"
    before = {p: os.lstat(p).st_mtime_ns for p in (*out.iterdir(), *outside.iterdir())}
    code, err = run(["import", "--domain", "web", "--connect", DEAD, str(out)], capsys)
    assert code == 2, err
    assert str(culprit) in err
    assert message in err
    assert "nothing was imported" in err
    assert "stolen" not in err  # the outside document was never read
    assert "none.sock" not in err  # refused before connecting
    after = {p: os.lstat(p).st_mtime_ns for p in (*out.iterdir(), *outside.iterdir())}
    assert after == before
