"""Progress on a terminal for a long external memory snapshot, against real QEMU.

A guest with no OS has RAM full of zero pages, which QEMU saves in no time.  This test
loads 512 MiB of random bytes into the guest's RAM with QEMU's loader device, so the
memory file takes a second or two to write, and runs `snapshotd take` with its stderr
on a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.cli import REPO
from tests.integration.domains import DiskSpec, DomainFactory, ScratchDomain
from tests.integration.target import URI, connect_line

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def noisy_domain(domain_factory: DomainFactory, libvirt_conn: Any) -> ScratchDomain:
    dom = domain_factory(state="shutoff", memory_mib=768)
    blob = dom.directory / "noise.bin"
    with blob.open("wb") as f:
        for _ in range(64):
            f.write(os.urandom(8 << 20))
    xml = dom.dom.XMLDesc(0).replace("<domain type=", f"<domain xmlns:qemu='{QEMU_NS}' type=", 1)
    loader = f"loader,file={blob},addr=0x1000000,force-raw=on"
    xml = xml.replace(
        "</domain>",
        f"<qemu:commandline><qemu:arg value='-device'/><qemu:arg value='{loader}'/>"
        "</qemu:commandline></domain>",
    )
    libvirt_conn.defineXML(xml)
    dom.dom.create()
    return dom


def read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def take(dom: ScratchDomain, *, terminal: bool) -> tuple[int, str]:
    master, slave = pty.openpty()
    target = slave if terminal else subprocess.PIPE
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snapshotd",
            "take",
            "--domain",
            dom.name,
            "--memory",
            "external",
            "--directory",
            str(dom.directory / "snaps"),
            "--name",
            f"m{terminal:d}",
            "--state-dir",
            str(dom.directory / "state"),
            "--connect",
            URI,
        ],
        stdout=subprocess.DEVNULL,
        stderr=target,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=REPO,
        check=False,
    )
    os.close(slave)
    text = read_all(master) if terminal else (proc.stderr or b"").decode()
    os.close(master)
    return proc.returncode, text


def test_an_external_memory_snapshot_shows_progress_on_a_terminal_only(
    domain_factory: DomainFactory, libvirt_conn: Any
) -> None:
    dom = noisy_domain(domain_factory, libvirt_conn)
    code, text = take(dom, terminal=True)
    assert code == 0, text
    shown = [int(p) for p in re.findall(rf"memory of {re.escape(dom.name)}: +(\d+)% \(", text)]
    assert shown, f"no progress on the terminal: {text!r}"
    assert any(0 < p < 100 for p in shown), shown  # seen while it was being written
    assert shown == sorted(shown)
    assert text.endswith("\n")
    assert Path(dom.directory / "snaps").is_dir()
    code, text = take(dom, terminal=False)
    assert code == 0
    assert "%" not in text  # quiet when stderr is not a terminal


def test_retention_merging_an_external_snapshot_shows_progress(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory([DiskSpec(size=4 << 30)], state="running")
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755)
    config = tmp_path / "snapshotd.yaml"
    config.write_text(connect_line())
    config.chmod(0o644)
    policy = policies / "ext.yaml"
    body = f"""
domains: {{include: ["{dom.name}"]}}
schedule: {{every: 1h}}
snapshot:
  name: "{{policy}}-{{time:%Y%m%dT%H%M%S%fZ}}"
  disks: external
  disk_only: true
  directory: {dom.directory / "snaps"}
"""
    policy.write_text(body)
    policy.chmod(0o644)
    paths = [
        "--config",
        str(config),
        "--policy-dir",
        str(policies),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def snapshotd(*args: str, stderr: Any = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "snapshotd", *args, *paths],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=REPO,
            check=False,
        )

    assert snapshotd("take", "--policy", "ext").returncode == 0
    # Give the first snapshot's overlay 3 GiB of data, so that merging it takes a while
    # (1.5 GiB merged on the second host under the test command's load between two
    # samples once, the first sample late as its connection goes over ssh).
    (overlay,) = (dom.directory / "snaps").glob("*.qcow2")
    dom.dom.destroy()
    subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 0 1536M",  # one request of qemu-io is below 2 GiB
            "-c",
            "write -P 0xab 1536M 1536M",
            str(overlay),
        ],
        check=True,
        capture_output=True,
    )
    dom.dom.create()
    assert snapshotd("take", "--policy", "ext").returncode == 0
    policy.write_text(body + "retention: {keep_last: 1}\n")
    master, slave = pty.openpty()
    started = time.monotonic()
    done = snapshotd("prune", stderr=slave)
    took = time.monotonic() - started
    os.close(slave)
    text = read_all(master)
    os.close(master)
    assert done.returncode == 0, text
    assert "deleted ext-" in done.stdout.decode()
    shown = [int(p) for p in re.findall(rf"retention of {re.escape(dom.name)}: +(\d+)% \(", text)]
    assert shown, f"no progress on the terminal in {took:.2f} s: {text!r}"
    assert any(p < 100 for p in shown), shown
    # The display moves while the merge runs (it is not one sample at the end).
    assert len(set(shown)) >= 2, shown
