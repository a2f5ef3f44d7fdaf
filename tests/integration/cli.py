"""Run the snapshotd command line as a user would: a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from tests.integration.target import REPO, ROOT, URI, connect_line


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


# export and replicate read the catalog only where one exists: a test that names no
# state directory gets one that does not, never this machine's /var/lib/snapshotd.
NO_STATE = ROOT / "no-state-here"
_READS_A_CATALOG_IF_ANY = {"export", "replicate"}


def snapshotd(*args: str, timeout: float = 120) -> Result:
    # LIBVIRT_DEFAULT_URI: a verb without --connect or a config reaches the tested host.
    env = dict(os.environ, PYTHONPATH=str(REPO), LIBVIRT_DEFAULT_URI=URI)
    if args and args[0] in _READS_A_CATALOG_IF_ANY and "--state-dir" not in args:
        args = (*args, "--state-dir", str(NO_STATE))
    proc = subprocess.run(
        [sys.executable, "-m", "snapshotd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start(*args: str) -> subprocess.Popen[str]:
    """snapshotd with ``args`` in the background, as snapshotd() runs it; the caller
    waits for it (communicate) and kills it by its own handle on failure."""
    env = dict(os.environ, PYTHONPATH=str(REPO), LIBVIRT_DEFAULT_URI=URI)
    return subprocess.Popen(
        [sys.executable, "-m", "snapshotd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def make_settings(root: Path) -> Path:
    """A snapshotd.yaml (connect: the tested URI) and an empty policy directory in ``root``,
    with modes snapshotd trusts; the config file's path."""
    (root / "policies").mkdir(mode=0o755, exist_ok=True)
    config = root / "snapshotd.yaml"
    config.write_text(connect_line())
    config.chmod(0o644)
    return config


def settings_args(root: Path) -> list[str]:
    """The options that point a verb at ``root``'s config, policies and state."""
    return [
        "--config",
        str(root / "snapshotd.yaml"),
        "--policy-dir",
        str(root / "policies"),
        "--state-dir",
        str(root / "state"),
    ]


def files_under(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def snapshot_xml(dom: object, name: str) -> etree._Element:
    """libvirt's own XML for a snapshot, parsed independently of snapshotd."""
    snap = dom.snapshotLookupByName(name, 0)  # type: ignore[attr-defined]
    return etree.fromstring(snap.getXMLDesc(0).encode())


def disk_modes(root: etree._Element) -> dict[str, str]:
    return {d.get("name"): d.get("snapshot") for d in root.iterfind("disks/disk")}


def qemu_img_snapshots(image: Path, *, force_share: bool = False) -> str:
    args = ["qemu-img", "snapshot", "-l"]
    if force_share:
        args.append("-U")  # read while QEMU has the image open
    proc = subprocess.run([*args, str(image)], capture_output=True, text=True, check=True)
    return proc.stdout
