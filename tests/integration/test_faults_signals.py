"""Fault case 16 (issue 7): SIGTERM and SIGHUP while the daemon's snapshot is in flight.

The operation is an external memory snapshot of a running domain whose RAM is full of
random bytes (test_progress.noisy_domain), so libvirt spends a few seconds writing the
memory file: long enough to send a signal while it is certainly in progress.  "In
progress" is read from the daemon's own record: the catalog's ``runs`` row names the
snapshot being taken, and that snapshot's memory file already exists on disk.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import Run
from snapshotd.catalog.sqlite import DB_NAME
from snapshotd.config.settings import Overrides
from snapshotd.daemon.loop import STOP_GRACE
from snapshotd.daemon.loop import Daemon as DaemonLoop
from tests.integration.conftest import URI
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.target import qemu_pid
from tests.integration.test_daemon import Daemon, policy, snapshots, write_policy
from tests.integration.test_progress import noisy_domain


def _read(daemon: Daemon, query: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows from the daemon's catalog, opened read-only (the daemon owns it)."""
    path = daemon.state / DB_NAME
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return list(db.execute(query, args).fetchall())
    finally:
        db.close()


def _run(daemon: Daemon, name: str, uuid: str) -> tuple[Any, ...] | None:
    """(in_progress, in_progress_slot, last_slot, last_error) of the policy's run."""
    rows = _read(
        daemon,
        "SELECT in_progress, in_progress_slot, last_slot, last_error FROM runs"
        " WHERE policy = ? AND domain_uuid = ?",
        name,
        uuid,
    )
    return rows[0] if rows else None


def _in_flight(daemon: Daemon, name: str, dom: ScratchDomain, snaps: Path) -> tuple[str, int]:
    """Wait until the daemon is inside libvirt's snapshot: its run names the snapshot and
    the snapshot's memory file exists.  Returns (snapshot name, the slot it serves)."""
    found: list[tuple[str, int]] = []

    def check() -> bool:
        run = _run(daemon, name, dom.uuid)
        if run is None or run[0] is None:
            return False
        if not snaps.is_dir() or not any(run[0] in p.name for p in snaps.iterdir()):
            return False
        found.append((str(run[0]), int(run[1])))
        return True

    deadline = time.monotonic() + 30
    while not check():
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, daemon.log.read_text()
        assert time.monotonic() < deadline, f"no snapshot in flight; log:\n{daemon.log.read_text()}"
        time.sleep(0.01)
    return found[0]


@dataclass(frozen=True)
class Evidence:
    """What must not be lost: libvirt's snapshots, the catalog's rows, the files."""

    libvirt: frozenset[str]
    catalog: frozenset[str]
    files: frozenset[str]

    @classmethod
    def of(cls, daemon: Daemon, dom: ScratchDomain, snaps: Path) -> Evidence:
        rows = _read(
            daemon,
            "SELECT name FROM snapshots WHERE domain_uuid = ? AND deleted_at IS NULL",
            dom.uuid,
        )
        return cls(
            frozenset(name for _, name, _ in snapshots(dom)),
            frozenset(r[0] for r in rows),
            frozenset(p.name for p in snaps.iterdir()) if snaps.is_dir() else frozenset(),
        )


def _lifecycle(messages: list[str]) -> list[str]:
    """The READY/RELOADING/STOPPING notifications, in the order they were sent."""
    wanted = ("READY=1", "RELOADING=1", "STOPPING=1")
    return [line for m in messages for line in m.splitlines() if line in wanted]


def _description(dom: ScratchDomain, name: str) -> str | None:
    root = etree.fromstring(dom.dom.snapshotLookupByName(name, 0).getXMLDesc(0).encode())
    return root.findtext("description")


def test_fault_16_sigterm_during_a_snapshot_finishes_it_within_the_bound_and_exits_0(
    domain_factory: DomainFactory, libvirt_conn: Any, daemon: Daemon
) -> None:
    """16. "SIGTERM while an operation runs: it finishes or is rolled back within the bound,
    exit 0."  The bound is STOP_GRACE (60 s, docs/operations.md)."""
    dom = noisy_domain(domain_factory, libvirt_conn)
    snaps = dom.directory / "snaps"
    extra = f"  memory: external\n  directory: {snaps}"
    body = policy(dom, every="2s", extra=extra, keep=10, states="  states: [running]")
    write_policy(daemon, "term", body)
    daemon.start()
    daemon.wait_ready()
    name, slot = _in_flight(daemon, "term", dom, snaps)
    before = Evidence.of(daemon, dom, snaps)

    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=STOP_GRACE + 30)
    took = time.monotonic() - started
    log = daemon.log.read_text()
    assert code == 0, log
    assert took < STOP_GRACE, f"exit after {took:.1f} s"
    assert "stopping: 1 snapshots in flight" in log  # the signal came mid-operation
    assert f"created {name} " in log
    assert "STOPPING=1" in _lifecycle(daemon.messages)

    # Finished, not abandoned: libvirt has it, the catalog has it with its memory file,
    # and the run record is closed, serving its slot.
    after = Evidence.of(daemon, dom, snaps)
    assert name in after.libvirt
    assert name in after.catalog
    (files,) = _read(
        daemon, "SELECT files FROM snapshots WHERE domain_uuid = ? AND name = ?", dom.uuid, name
    )[0]
    assert any(Path(f).parent == snaps and name in f for f in json.loads(files))
    # The slot it served: its own, or a later one of the 2 s grid that passed while the
    # snapshot was being made (daemon/runs.served), never one still to come.
    in_progress, in_slot, served, error = _run(daemon, "term", dom.uuid)
    assert (in_progress, in_slot, error) == (None, None, None)
    assert slot <= served <= time.time(), (slot, served)
    assert (served - slot) % 2 == 0, (slot, served)
    # Nothing lost, nothing half-made: every file belongs to a snapshot libvirt and the
    # catalog both know; the guest runs again (an external memory snapshot pauses it).
    assert before.libvirt <= after.libvirt
    assert before.catalog <= after.catalog
    assert before.files <= after.files
    assert after.libvirt == after.catalog
    for file in after.files:
        assert any(n in file for n in after.libvirt), file
    assert dom.state() == 1  # VIR_DOMAIN_RUNNING


def test_fault_16_sighup_during_a_snapshot_reloads_after_it(
    domain_factory: DomainFactory, libvirt_conn: Any, daemon: Daemon
) -> None:
    """16. "SIGHUP during an operation: reload after it."  The snapshot in flight is made
    under the old policy; the next one under the new; the daemon goes on serving."""
    dom = noisy_domain(domain_factory, libvirt_conn)
    snaps = dom.directory / "snaps"
    extra = f"  memory: external\n  directory: {snaps}\n  description: "
    states = "  states: [running]"
    # The policy file is a symlink: the directory watcher does not see edits of its
    # target, so only the SIGHUP can make the daemon read the edit.
    real = daemon.root / "real"
    real.mkdir(mode=0o755)
    target = real / "hup.yaml"
    target.write_text(policy(dom, every="2s", extra=extra + "old", keep=10, states=states))
    target.chmod(0o644)
    (daemon.policies / "hup.yaml").symlink_to(target)
    daemon.start()
    daemon.wait_ready()
    name, slot = _in_flight(daemon, "hup", dom, snaps)
    # Set-up, not a check: the domain's QEMU stopped holds the memory save where it is,
    # so the reload surely comes while the snapshot is being taken (on a busy machine
    # the save could end before the reload otherwise).
    qemu = qemu_pid(dom.name)
    os.kill(qemu, signal.SIGSTOP)
    try:
        target.write_text(policy(dom, every="2s", extra=extra + "new", keep=10, states=states))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(
            lambda: _lifecycle(daemon.messages) == ["READY=1", "RELOADING=1", "READY=1"],
            10,
            "RELOADING=1 then READY=1",
        )
        # The reload came while that snapshot was still being taken.
        run = _run(daemon, "hup", dom.uuid)
        assert run is not None
        assert run[0] == name
    finally:
        os.kill(qemu, signal.SIGCONT)
    daemon.wait_for(lambda: f"created {name} " in daemon.log.read_text(), 30, f"{name} made")
    assert _description(dom, name) == "old"
    run = _run(daemon, "hup", dom.uuid)
    assert run is not None
    assert slot <= run[2] <= time.time(), (slot, run)  # its slot, or one passed meanwhile

    # The next snapshot follows the new policy, from the same, still running daemon.
    daemon.wait_for(
        lambda: any(d == "new" for _, _, d in snapshots(dom)), 30, "a snapshot by the new policy"
    )
    assert daemon.proc.poll() is None
    made = snapshots(dom)  # oldest first
    index = [n for _, n, _ in made].index(name)
    assert all(d == "old" for _, _, d in made[: index + 1]), made
    assert all(d == "new" for _, _, d in made[index + 1 :]), made
    log = daemon.log.read_text()
    assert log.rindex("policies in force: hup") < log.index(f"created {name} ")
    assert "reload refused" not in log

    assert daemon.stop() == 0
    assert _lifecycle(daemon.messages) == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    after = Evidence.of(daemon, dom, snaps)
    assert after.libvirt == after.catalog
    for file in after.files:
        assert any(n in file for n in after.libvirt), file


def test_fault_17_a_snapshot_libvirt_is_still_making_is_recorded_once_complete(
    domain_factory: DomainFactory, libvirt_conn: Any, tmp_path: Path
) -> None:
    """17, the libvirt half: "on start it finds the half-done operation in its state and
    finishes or cleans it up".  libvirt lists a snapshot as soon as it starts making
    it, so a restarted daemon can find the previous process's snapshot still in the
    making: it records it only once libvirt's job has ended, with the final XML."""
    dom = noisy_domain(domain_factory, libvirt_conn)
    snaps = dom.directory / "snaps"
    snaps.mkdir()
    name = "left-by-a-dead-process"
    xml = (
        f"<domainsnapshot><name>{name}</name>"
        f"<memory snapshot='external' file='{snaps / (name + '.memory')}'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{snaps / (name + '.qcow2')}'/>"
        "</disk></disks></domainsnapshot>"
    )
    finished = threading.Event()
    failed: list[BaseException] = []

    def the_previous_process() -> None:
        conn = libvirt.open(URI)
        try:
            conn.lookupByName(dom.name).snapshotCreateXML(xml, 0)
        except libvirt.libvirtError as exc:
            failed.append(exc)
        finally:
            conn.close()
            finished.set()

    worker = threading.Thread(target=the_previous_process)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while name not in {s.getName() for s in dom.dom.listAllSnapshots(0)}:
            assert time.monotonic() < deadline, "libvirt never listed the snapshot"
            time.sleep(0.02)
        # Listed, but libvirt is still writing the memory: the case under test.
        assert not finished.is_set(), "the snapshot was over before it could be caught"
        root = tmp_path / "daemon"
        (root / "policies").mkdir(parents=True, mode=0o755)
        config = root / "snapshotd.yaml"
        config.write_text(f"connect: [{URI}]\n")
        config.chmod(0o644)
        loop = DaemonLoop(Overrides(str(config), str(root / "policies"), str(root / "state")))
        assert loop.reload(first=True)
        with open_catalog(str(root / "state")) as catalog, Hypervisor.open(URI) as hv:
            runs = catalog.runs
            run = Run("pol", dom.uuid, URI, dom.name)
            runs.start(run, name, slot=1_900_000_000, now=int(time.time()))
            (unfinished,) = runs.unfinished()
            loop.recovery.settle(hv, catalog, runs, unfinished, name)
            # settle waited for libvirt, then recorded what libvirt now describes.
            assert finished.is_set()
            assert not failed, failed
            row = catalog.find(dom.uuid, name)
            assert row is not None
            assert row.policy == "pol"
            assert row.xml == hv.snapshot_xml(dom.name, name, secure=True)
            assert str(snaps / (name + ".memory")) in row.files
            assert str(snaps / (name + ".qcow2")) in row.files
            settled = runs.get("pol", dom.uuid)
            assert settled is not None
            assert settled.in_progress is None
            assert settled.last_slot == 1_900_000_000
            assert settled.last_error is None
        assert dom.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        worker.join(timeout=120)
