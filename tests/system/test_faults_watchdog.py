"""Fault case 17 (issue 7): the main loop stalls while a snapshot is in flight.

The real daemon runs under the shipped unit in the namespace's systemd (WatchdogSec=2s).
Its snapshot is an external memory snapshot of a running domain whose RAM is full of
random bytes, so libvirt takes a second or more over it; the daemon is frozen (SIGSTOP)
while its worker is inside that libvirt call.  systemd's watchdog kills it (SIGABRT) and
restarts it; libvirt finishes the snapshot on its own; the new process must find the
run its predecessor left in progress and adopt libvirt's snapshot, once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import Run
from snapshotd.catalog.sqlite import DB_NAME
from tests.system.conftest import SystemdNamespace, remove_domain
from tests.system.test_unit import (
    IMAGES,
    SYSTEST,
    _configure,
    _journal,
    _start,
    _virt_type,
    installed,  # noqa: F401 - a fixture, used by name below
)

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
POLICY = "wd"
# A yearly slot: the run seeded below served 2025's, so 2026-01-01 is due at once
# (catch-up), and no other slot comes while the test runs.
SERVED = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DUE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def noisy_domain() -> Iterator[tuple[str, str, Path]]:
    """A running throwaway domain with 512 MiB of random bytes in its RAM (QEMU's loader
    device): (name, UUID, its directory).  Gone afterwards, pass or fail."""
    name = f"snapshotd-systest-{secrets.token_hex(4)}"
    directory = IMAGES / name
    conn = libvirt.open("qemu:///system")
    try:
        directory.mkdir(parents=True)
        image = directory / "vda.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        blob = directory / "noise.bin"
        with blob.open("wb") as f:
            for _ in range(64):
                f.write(os.urandom(8 << 20))
        dom = conn.defineXML(f"""<domain type='{_virt_type(conn)}' xmlns:qemu='{QEMU_NS}'>
  <name>{name}</name>
  <memory unit='MiB'>768</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{image}'/><target dev='vda' bus='virtio'/></disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline><qemu:arg value='-device'/>
    <qemu:arg value='loader,file={blob},addr=0x1000000,force-raw=on'/></qemu:commandline>
</domain>
""")
        dom.create()
        yield name, dom.UUIDString(), directory
    finally:
        remove_domain(conn, name, directory)


def _read(catalog: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=30)
    try:
        return list(db.execute(query, args).fetchall())
    finally:
        db.close()


def _libvirt_snapshots(uuid: str) -> set[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return {s.getName() for s in conn.lookupByUUIDString(uuid).listAllSnapshots(0)}
    finally:
        conn.close()


def test_fault_17_watchdog_restart_mid_snapshot_adopts_libvirts_snapshot_once(
    installed: SystemdNamespace,  # noqa: F811 - the fixture imported above
    noisy_domain: tuple[str, str, Path],
) -> None:
    """17. "The main loop stalls: systemd's watchdog restarts the daemon; on start it finds
    the half-done operation in its state and finishes or cleans it up." """
    name, uuid, directory = noisy_domain
    snaps = directory / "snaps"
    policy = (
        f"domains: {{include: [{name}], states: [running]}}\n"
        'schedule: {cron: "0 0 1 1 *", timezone: UTC, catch_up: true}\n'
        f'snapshot: {{name: "{{policy}}-{{time:%Y%m%dT%H%M%S%fZ}}", memory: external, '
        f"directory: {snaps}}}\n"
        "retention: {keep_last: 5}\n"
    )
    # The daemon starts with no policy; the test writes it and reloads the daemon only once
    # it is watching the catalog, so the run cannot finish before the test looks (on a busy
    # machine systemctl start returned too late once and missed the whole snapshot).
    unit = _configure(installed, {}, "WatchdogSec=2s\nLimitCORE=0\nRestartSec=500ms\n")
    policy_file = installed.root / SYSTEST.lstrip("/") / "policies.d" / f"{POLICY}.yaml"
    # The state directory where the test can open the catalog with SQLite (which resolves
    # /proc/PID/root away): beside the images, the same path inside and out.
    state = directory / "state"
    state.mkdir(mode=0o700)
    installed.install_dropin(
        unit,
        "[Service]\nExecStart=\nExecStart=/usr/local/bin/snapshotd run "
        f"--config {SYSTEST}/snapshotd.yaml --policy-dir {SYSTEST}/policies.d "
        f"--state-dir {state}\nReadWritePaths={directory}\n",
        name="60-fault-17.conf",
    )
    with open_catalog(str(state)) as catalog:  # the daemon served 2025's slot before
        runs = catalog.runs
        runs.start(Run(POLICY, uuid, "qemu:///system", name), "seed", int(SERVED.timestamp()), 0)
        runs.finish(POLICY, uuid, slot=int(SERVED.timestamp()), error=None, now=0)
    db = state / DB_NAME
    try:
        props = _start(installed, unit)
        pid, restarts = props["MainPID"], int(props["NRestarts"])
        staged = policy_file.with_name(f".{POLICY}.tmp")
        staged.write_text(policy)
        staged.chmod(0o644)
        staged.rename(policy_file)
        reload = threading.Thread(target=installed.systemctl, args=("reload", unit))

        # Freeze it while its worker is inside libvirt: the run names the snapshot and
        # libvirt has begun writing that snapshot's memory file.
        reload.start()
        deadline = time.monotonic() + 30
        while True:
            rows = _read(db, "SELECT in_progress, in_progress_slot FROM runs")
            snapshot = rows[0][0] if rows else None
            if snapshot and snaps.is_dir() and any(snapshot in p.name for p in snaps.iterdir()):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.01)
        reload.join()
        assert rows[0][1] == int(DUE.timestamp())
        installed.run("kill", "-STOP", pid, check=True)

        installed.wait_for(unit, "NRestarts", lambda v: int(v or 0) > restarts, timeout=20)
        installed.wait_for(unit, "ActiveState", lambda v: v == "active", timeout=20)
        new = installed.show(unit, "MainPID")["MainPID"]
        assert new not in {pid, "0"}
        found = f"{name}: snapshot {snapshot} was made before an interruption; recorded"
        deadline = time.monotonic() + 30
        while True:
            entries = _journal(installed, unit)
            said = [e for e in entries if e.get("MESSAGE") == found]
            if said:
                break
            assert time.monotonic() < deadline, [e.get("MESSAGE") for e in entries]
            time.sleep(0.2)
        messages = [e.get("MESSAGE", "") for e in entries]
        assert any("Watchdog timeout" in m for m in messages), messages
        assert said[0]["_PID"] == new  # the new process found it

        # Adopted once: the catalog holds libvirt's snapshot with its memory file, the run
        # is closed serving 2026's slot, and nothing else was taken for that slot.
        status = json.loads((state / "status.json").read_text())
        assert status["pid"] == int(new)
        assert _libvirt_snapshots(uuid) == {snapshot}
        rows = _read(db, "SELECT name, policy, files FROM snapshots WHERE deleted_at IS NULL")
        assert [(n, p) for n, p, _ in rows] == [(snapshot, POLICY)]
        files = json.loads(rows[0][2])
        assert any(Path(f).parent == snaps and snapshot in f for f in files), files
        run = _read(db, "SELECT in_progress, last_slot, last_error FROM runs")
        assert run == [(None, int(DUE.timestamp()), None)]
        # No leftover: every file in the directory belongs to that snapshot.
        for path in snaps.iterdir():
            assert snapshot in path.name, path
        # Still serving: the schedule's next run is 2027's slot, none is in flight.
        deadline = time.monotonic() + 10
        while True:
            status = json.loads((state / "status.json").read_text())
            if status["scheduled"]:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["running"] == []
        (scheduled,) = status["scheduled"]
        assert scheduled["next_due"] == int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp())
        assert installed.show(unit, "ActiveState", "MainPID") == {
            "ActiveState": "active",
            "MainPID": new,
        }
        assert _libvirt_snapshots(uuid) == {snapshot}
    finally:
        installed.systemctl("stop", unit)
