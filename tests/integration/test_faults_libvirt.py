"""Fault cases 2-6 of issue 7 against real libvirtd, real QEMU and the real daemon.

Each test runs `snapshotd run` (the Daemon harness of test_daemon.py), brings about
one fault at a real seam, and then checks, before against after, the snapshots
libvirt lists for the test's domains, the catalog's rows and the files in the
domains' directories: nothing that should stay is gone, nothing half-made is left.
Each also checks that the daemon is alive and still takes scheduled snapshots (of a
bystander domain) after the fault.  Case 1 (libvirtd restarted in the middle of a
snapshot) is in test_zz_libvirtd_restart.py, which runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration import target
from tests.integration.cli import REPO, files_under, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.target import URI, connect_line
from tests.integration.test_daemon import Daemon, policy, snapshots, write_policy
from tests.integration.test_progress import noisy_domain

VIRSH = shutil.which("virsh") or "/usr/bin/virsh"


def configure(daemon: Daemon, extra: str = "") -> Path:
    config = daemon.root / "snapshotd.yaml"
    config.write_text(connect_line() + extra)
    config.chmod(0o644)
    return config


def query(daemon: Daemon, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of the daemon's catalog, read with sqlite3 directly (not through snapshotd)."""
    path = daemon.state / "catalog.sqlite"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return list(db.execute(sql, args))


def catalog_snapshots(daemon: Daemon, dom: ScratchDomain) -> set[str]:
    """The names of the domain's snapshots the catalog holds as not deleted."""
    rows = query(
        daemon,
        "SELECT name FROM snapshots WHERE domain_uuid = ? AND deleted_at IS NULL",
        dom.uuid,
    )
    return {name for (name,) in rows}


def operations(daemon: Daemon, dom: ScratchDomain) -> list[tuple[str, str, str, str | None, int]]:
    """(operation, outcome, snapshot, message, duration_ms) of the domain, oldest first."""
    return query(
        daemon,
        "SELECT operation, outcome, snapshot, message, duration_ms FROM operations "
        "WHERE domain_uuid = ? ORDER BY id",
        dom.uuid,
    )


def names(dom: ScratchDomain) -> set[str]:
    return {name for _, name, _ in snapshots(dom)}


def qemu_pid(dom: ScratchDomain) -> int:
    return target.qemu_pid(dom.name)


def serving(daemon: Daemon, bystander: ScratchDomain) -> None:
    """The daemon process is alive and still takes the bystander's scheduled snapshots."""
    newest = max((t for t, _, _ in snapshots(bystander)), default=0)
    daemon.wait_for(
        lambda: max((t for t, _, _ in snapshots(bystander)), default=0) > newest,
        30,
        "a scheduled snapshot of the bystander after the fault",
    )
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def test_fault_02_state_change_lock_held_by_another_job(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """2. A domain whose state change lock is held by another long job (for example a
    long-running block job or an external memory snapshot of a larger domain): bounded
    wait, recorded failure, other domains carry on, retried later."""
    locked = domain_factory(state="running")
    other = domain_factory(state="shutoff")
    config = configure(daemon, "workers: 2\n")
    made = snapshotd(
        "take", "--domain", locked.name, "--name", "pre", "--config", str(config),
        "--state-dir", str(daemon.state),
    )  # fmt: skip
    assert made.code == 0, made.err
    write_policy(daemon, "locked", policy(locked, every="2s", keep=50))
    write_policy(daemon, "other", policy(other, every="2s", keep=50))
    pid = qemu_pid(locked)
    # The other job: a block statistics query that holds the domain's job while QEMU,
    # stopped, never answers it.  Every snapshot job must wait for that lock.
    os.kill(pid, signal.SIGSTOP)
    holder = subprocess.Popen(
        [VIRSH, "-c", URI, "domblkstat", locked.name, "vda"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Set-up order, not a check: the query holds the job before the daemon starts
        # (the failure below must name it as the holder).
        time.sleep(1)
        assert holder.poll() is None
        daemon.start()
        daemon.wait_ready()
        before = catalog_snapshots(daemon, locked)
        assert before == names(locked) == {"pre"}
        held_since = time.time()

        def lock_failure() -> bool:
            return any(
                op == "create" and outcome == "failed" and "state change lock" in (message or "")
                for op, outcome, _, message, _ in operations(daemon, locked)
            )

        daemon.wait_for(lock_failure, 60, "the failure after libvirt's bounded wait")
        failed_at = time.time()
        assert holder.poll() is None  # the other job still holds the lock: the wait was bounded
        (failure,) = [
            row for row in operations(daemon, locked) if "state change lock" in (row[3] or "")
        ]
        message = failure[3] or ""
        assert locked.name in message
        assert "remoteDispatchDomainBlockStats" in message  # libvirt names the holder
        assert "transient" in message
        assert failure[4] <= 60_000  # libvirt gives up after its job wait, 30 s in 9.0
        assert names(locked) == before  # nothing made, nothing lost
        assert catalog_snapshots(daemon, locked) == before
        # The run records the failure, and the retry is scheduled.
        (run,) = query(
            daemon, "SELECT last_error, in_progress FROM runs WHERE domain_uuid = ?", locked.uuid
        )
        assert "state change lock" in run[0]
        assert run[1] is None

        # The worker records the failure before the loop hears of it and writes the status
        # file: wait for the loop, not the catalog.
        def retry_due() -> bool:
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                status = json.loads((daemon.state / "status.json").read_text())
                return any(
                    s["domain_uuid"] == locked.uuid and s["reason"].startswith("retry: ")
                    for s in status["scheduled"]
                )
            return False

        daemon.wait_for(retry_due, 10, "the retry in the status file")
        # The other domain carried on while the locked one waited.
        during = [t for t, _, _ in snapshots(other) if held_since <= t <= failed_at]
        assert len(during) >= 3, during
    finally:
        os.kill(pid, signal.SIGCONT)
        holder.wait(timeout=30)
    # The lock is free again: the retry takes the snapshot.
    daemon.wait_for(
        lambda: bool(catalog_snapshots(daemon, locked) - before), 40, "the retried snapshot"
    )
    serving(daemon, other)
    assert daemon.stop() == 0
    assert locked.state() == libvirt.VIR_DOMAIN_RUNNING
    listed = [name for _, name, _ in snapshots(locked)]
    assert len(listed) == len(set(listed))
    assert set(listed) == catalog_snapshots(daemon, locked)


def mid_memory_save(daemon: Daemon, dom: ScratchDomain, snaps: Path) -> tuple[str, Path]:
    """Wait until the daemon is in the middle of an external memory snapshot of ``dom``.

    In the middle: the daemon's run record names the snapshot in progress, and its
    memory file holds less than half of the guest's 512 MiB of random bytes (see
    test_progress.noisy_domain).  libvirt lists a snapshot from the moment it starts
    making it, so its list cannot tell.  Returns the snapshot's name and memory file.
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = query(daemon, "SELECT in_progress FROM runs WHERE domain_uuid = ?", dom.uuid)
        name = rows[0][0] if rows else None
        memory = snaps / f"{dom.name}.{name}.memory"
        with contextlib.suppress(FileNotFoundError):
            if name and 0 < memory.stat().st_size < 256 << 20:
                return name, memory
        time.sleep(0.005)
    raise AssertionError(f"no memory file was seen being written in {snaps}")


def kill_qemu_during_memory_save(
    daemon: Daemon, dom: ScratchDomain, snaps: Path, *, append_only: bool
) -> str:
    """SIGKILL the domain's QEMU while libvirt writes a snapshot's memory file; with
    ``append_only`` the file is made append-only first.  Returns its path."""
    _name, memory = mid_memory_save(daemon, dom, snaps)
    if append_only:
        subprocess.run(["chattr", "+a", str(memory)], check=True)
    os.kill(qemu_pid(dom), signal.SIGKILL)
    return str(memory)


@pytest.mark.parametrize("cleanup", ["libvirt", "blocked"])
def test_fault_03_qemu_killed_during_an_external_snapshot(
    domain_factory: DomainFactory, daemon: Daemon, libvirt_conn: Any, cleanup: str
) -> None:
    """3. QEMU killed during an external snapshot: the mismatch between files and
    metadata is found and reported; nothing is deleted automatically.

    libvirt 9.0 removes the memory file and overlays of the snapshot it failed to make
    (``cleanup=libvirt``).  ``cleanup=blocked`` makes the memory file append-only while
    it is written, so libvirt's unlink fails and the file is left behind as it would
    be by another libvirt version or a crash: snapshotd must name it and keep it.
    """
    dom = noisy_domain(domain_factory, libvirt_conn)
    bystander = domain_factory(state="shutoff")
    snaps = dom.directory / "snaps"
    configure(daemon, "workers: 2\n")
    extra = f"  memory: external\n  directory: {snaps}"
    body = policy(dom, every="3s", extra=extra, keep=50, states="  states: [running]")
    write_policy(daemon, "ext", body)
    write_policy(daemon, "by", policy(bystander, every="2s", keep=50))
    daemon.start()
    daemon.wait_ready()
    # Recorded in the catalog: libvirt lists a snapshot while it is still being made.
    daemon.wait_for(lambda: bool(catalog_snapshots(daemon, dom)), 60, "a first snapshot")
    try:
        memory = kill_qemu_during_memory_save(daemon, dom, snaps, append_only=cleanup == "blocked")
        kept = catalog_snapshots(daemon, dom)  # all made before the one QEMU died in
        daemon.wait_for(
            lambda: any(o[1] == "failed" for o in operations(daemon, dom)),
            60,
            "the failed create in the catalog",
        )
        files_after = files_under(dom.directory)
        (failure,) = [o for o in operations(daemon, dom) if o[1] == "failed"]
        message = failure[3] or ""
        assert dom.name in message
        assert "create snapshot failed" in message
        assert dom.state() == libvirt.VIR_DOMAIN_SHUTOFF
        # Nothing that existed before is gone: the first snapshot, its files, its row.
        assert names(dom) == kept
        assert catalog_snapshots(daemon, dom) == kept
        for name in kept:
            assert any(name in f and f.endswith(".memory") for f in files_after), name
        failed_name = failure[2]
        assert failed_name not in catalog_snapshots(daemon, dom)
        assert Path(memory).name == f"{dom.name}.{failed_name}.memory"
        if cleanup == "libvirt":
            # libvirt removed what it made; so there is no mismatch to report.
            assert Path(memory).name not in {Path(f).name for f in files_after}
            assert "snapshotd deleted nothing" not in message
        else:
            # The leftover is found, named with what to do, and left alone.
            assert Path(memory).exists()
            assert f"files the snapshot was to create exist: {memory}" in message
            assert "libvirt has no snapshot that names them" in message
            assert "snapshotd deleted nothing" in message
            assert f"virsh domblklist {dom.name}" in message
            assert memory in daemon.log.read_text()
        (run,) = query(daemon, "SELECT in_progress FROM runs WHERE domain_uuid = ?", dom.uuid)
        assert run[0] is None
        serving(daemon, bystander)
        assert files_under(dom.directory) == files_after  # nothing deleted later either
    finally:
        for path in snaps.glob("*.memory"):  # so that the domain's directory can go
            subprocess.run(["chattr", "-a", str(path)], check=False)
    assert daemon.stop() == 0


def test_fault_04_no_space_left_for_the_external_files(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """4. No space left where the external files go (a small loop-mounted or tmpfs
    directory): creation fails cleanly, no partial overlay is left, the domain keeps
    running from its old image, and retention does not delete anything to make room."""
    dom = domain_factory(state="running")
    bystander = domain_factory(state="shutoff")
    config = configure(daemon)
    roomy, full = dom.directory / "snaps", dom.directory / "full"
    settings = [
        "--config",
        str(config),
        "--policy-dir",
        str(daemon.policies),
        "--state-dir",
        str(daemon.state),
    ]
    # Two snapshots the policy owns, on a disk with room; keep_last 1 would prune one.
    first = f"  memory: external\n  directory: {roomy}"
    write_policy(daemon, "nospace", policy(dom, extra=first, states="  states: [running]"))
    for _ in range(2):
        made = snapshotd("take", "--policy", "nospace", *settings)
        assert made.code == 0, made.err
    before_snaps = names(dom)
    assert len(before_snaps) == 2
    image = dom.dom.XMLDesc(0).split("<source file='")[1].split("'")[0]
    assert image.startswith(str(roomy))  # the domain writes to the second overlay
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    # A libvirtd in another root sees the test directory through a bind mount made before
    # this one: the small filesystem is bound there too.
    seen = target.LIBVIRT_ROOT / str(full).lstrip("/")
    elsewhere = seen.resolve() != full.resolve()
    if elsewhere:
        subprocess.run(["mount", "--bind", str(full), str(seen)], check=True)
    try:
        before_files = files_under(dom.directory)
        before_rows = catalog_snapshots(daemon, dom)
        assert before_rows == before_snaps
        body = policy(
            dom,
            extra=f"  memory: external\n  directory: {full}",
            keep=1,
            states="  states: [running]",
        )
        write_policy(daemon, "nospace", body)
        write_policy(daemon, "by", policy(bystander, every="2s", keep=50))
        daemon.start()
        daemon.wait_ready()

        def failures() -> list[str]:
            return [o[3] or "" for o in operations(daemon, dom) if o[1] == "failed"]

        daemon.wait_for(lambda: len(failures()) >= 2, 30, "two failed creates")
        for message in failures():
            assert dom.name in message
            assert "No space left on device" in message
            assert str(full) in message
        assert list(full.iterdir()) == []  # no partial memory file or overlay
        assert files_under(dom.directory) == before_files
        assert dom.state() == libvirt.VIR_DOMAIN_RUNNING
        assert dom.dom.XMLDesc(0).split("<source file='")[1].split("'")[0] == image
        # Retention made no room: every snapshot and row is still there.
        assert names(dom) == before_snaps
        assert catalog_snapshots(daemon, dom) == before_snaps
        assert not [o for o in operations(daemon, dom) if o[0] == "delete"]
        serving(daemon, bystander)
        assert daemon.stop() == 0
    finally:
        daemon.close()
        if elsewhere:
            subprocess.run(["umount", str(seen)], check=False)
        subprocess.run(["umount", str(full)], check=False)


def test_fault_05_domain_stops_or_vanishes_between_planning_and_snapshot(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """5. The domain shuts down, or is undefined, between planning and snapshot:
    skipped with the reason, nothing left behind.

    The seam: a ``before`` hook runs after the daemon planned from its domain list
    and before libvirt is asked; here the hook itself stops or undefines the domain.
    """
    stopped = domain_factory(state="running")
    gone = domain_factory(state="shutoff")
    bystander = domain_factory(state="shutoff")
    configure(daemon, "workers: 2\n")
    stopped_files = files_under(stopped.directory)
    gone_files = files_under(gone.directory)
    for dom, verb, what, state in (
        (stopped, "destroy", "memory", "running"),
        (gone, "undefine", "disks", "shutoff"),
    ):
        extra = f"  {what}: external\n  directory: {dom.directory / 'snaps'}"
        hook = json.dumps([VIRSH, "-c", URI, verb, dom.name])
        write_policy(
            daemon,
            verb,
            policy(dom, every="2s", extra=extra, keep=50, states=f"  states: [{state}]")
            + f"hooks:\n  before: [{hook}]\n  before_failure: continue\n",
        )
    write_policy(daemon, "by", policy(bystander, every="2s", keep=50))
    daemon.start()
    daemon.wait_ready()

    def skipped(dom: ScratchDomain) -> list[str]:
        return [o[3] or "" for o in operations(daemon, dom) if o[1] == "skipped"]

    daemon.wait_for(lambda: bool(skipped(stopped)), 30, "the stopped domain's skip")
    daemon.wait_for(lambda: bool(skipped(gone)), 30, "the undefined domain's skip")
    (why,) = skipped(stopped)[:1]
    assert f"domain {stopped.name!r} ({stopped.uuid}) changed from running to shutoff" in why
    assert "skipped, nothing was changed" in why
    (why,) = skipped(gone)[:1]
    assert f"domain {gone.name!r} ({gone.uuid}) was undefined" in why
    log = daemon.log.read_text()
    assert f"{stopped.name}: snapshot refused: domain {stopped.name!r}" in log
    assert f"{gone.name}: snapshot refused: domain {gone.name!r}" in log
    # Nothing left behind: no snapshot, no row, no file, no directory, no open run.
    assert stopped.state() == libvirt.VIR_DOMAIN_SHUTOFF
    first_skip = operations(daemon, stopped)[0]  # the very first run was the skip
    assert first_skip[:2] == ("create", "skipped")
    assert operations(daemon, gone)[0][:2] == ("create", "skipped")
    assert catalog_snapshots(daemon, gone) == set()
    assert files_under(gone.directory) == gone_files
    with pytest.raises(libvirt.libvirtError):
        domain_factory.conn.lookupByUUIDString(gone.uuid)
    # The skipped snapshot left nothing: its name is nowhere, nor anything new.
    skipped_name = first_skip[2]
    assert skipped_name not in names(stopped)
    assert skipped_name not in catalog_snapshots(daemon, stopped)
    assert names(stopped) == set()
    assert files_under(stopped.directory) == stopped_files
    serving(daemon, bystander)
    assert daemon.stop() == 0
    # No run is left open once the daemon stopped (read while it ran, a later run of the
    # undefined domain, started before the daemon's list dropped it, was still open).
    for run in query(daemon, "SELECT in_progress FROM runs"):
        assert run[0] is None


def test_fault_06_quiesce_without_a_guest_agent(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """6. quiesce: try with no guest agent: falls back as documented; quiesce: true with
    no agent: clear failure; the guest is never left frozen."""
    tried = domain_factory(state="running")
    forced = domain_factory(state="running")
    configure(daemon, "workers: 2\n")
    forced_files = files_under(forced.directory)
    for dom, mode in ((tried, "try"), (forced, "true")):
        extra = (
            f"  disks: external\n  disk_only: true\n  quiesce: {mode}\n"
            f"  directory: {dom.directory / 'snaps'}"
        )
        body = policy(dom, every="2s", extra=extra, keep=50, states="  states: [running]")
        write_policy(daemon, f"q{mode}", body)
    daemon.start()
    daemon.wait_ready()
    # The catalog's line, not libvirt's snapshot: the line is written after the create.
    daemon.wait_for(
        lambda: any(o[1] == "ok" for o in operations(daemon, tried)), 30, "the fallback snapshot"
    )
    daemon.wait_for(
        lambda: any(o[1] == "failed" for o in operations(daemon, forced)), 30, "the failure"
    )

    # quiesce: try: the QUIESCE attempt failed on the agent, and the snapshot of the
    # same name was then taken without it.
    ops = operations(daemon, tried)
    (made,) = [o for o in ops if o[1] == "ok"][:1]
    attempt = ops[ops.index(made) - 1]
    assert attempt[:3] == ("create", "failed", made[2])
    assert "agent" in (attempt[3] or "").lower()
    assert made[2] in names(tried)
    assert (tried.directory / "snaps" / f"{tried.name}.vda.{made[2]}.qcow2").is_file()
    section = (REPO / "docs" / "operations.md").read_text().split("## Troubleshooting")[1]
    documented = "quiesce: try: taken without quiesce"
    assert f"`DOMAIN: {documented}, ...`" in section
    assert "`try`: without the freeze when the agent does not answer" in (
        (REPO / "docs" / "policies.md").read_text()
    )
    assert f"{tried.name}: {documented}, the guest agent did not help (" in daemon.log.read_text()

    # quiesce: true: a clear failure naming the domain and the agent; nothing made.
    (failure,) = [o for o in operations(daemon, forced) if o[1] == "failed"][:1]
    message = failure[3] or ""
    assert forced.name in message
    assert "agent" in message.lower()
    assert names(forced) == set()
    assert catalog_snapshots(daemon, forced) == set()
    assert files_under(forced.directory) == forced_files

    # Neither guest is left frozen or paused.
    for dom in (tried, forced):
        state, _reason = dom.dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING, dom.name
    serving(daemon, tried)
    assert daemon.stop() == 0


@pytest.mark.local_only  # snapshotd looks for the files only where they are files here
def test_reconcile_reports_an_overlay_an_interrupted_libvirt_operation_left(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """Issue 17: a libvirtd that crashed during a revert left an overlay of the domain's
    image (libvirt 11.3 names it ``<base>.<epoch>``) that nothing uses.  The daemon's
    reconcile, once connected, names it and what it is built on, and deletes nothing;
    the snapshot's own overlay, the image, a linked clone's disk built on the same image
    and an unrelated file beside them are not reported."""
    dom = domain_factory(state="shutoff")
    clone = domain_factory(state="shutoff")
    config = configure(daemon)
    settings = ["--config", str(config), "--policy-dir", str(daemon.policies)]
    settings += ["--state-dir", str(daemon.state)]
    made = snapshotd("take", "--domain", dom.name, "--disks", "external", *settings)
    assert made.code == 0, made.err
    image = dom.image("vda")
    overlay = dom.dom.XMLDesc(0).split("<source file='")[1].split("'")[0]
    assert overlay != str(image)

    def overlay_of(base: Path | str, path: Path) -> None:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
            check=True,
        )

    stray = image.parent / f"{image.stem}.1796282614"
    overlay_of(image, stray)
    linked = image.parent / "linked-clone.qcow2"  # the clone's disk, on dom's image
    overlay_of(image, linked)
    xml = clone.dom.XMLDesc(2).replace(str(clone.image("vda")), str(linked))
    clone.dom.connect().defineXML(xml)
    (image.parent / "notes.txt").write_text("not an image\n")

    write_policy(daemon, "keep", policy(dom, every="1h", states="  states: [shutoff]"))
    daemon.start()
    daemon.wait_ready()
    said = f"{dom.name}: {stray} is an overlay of {image} that no disk, snapshot or catalog"
    daemon.wait_for(lambda: said in daemon.log.read_text(), 30, "the stray overlay's warning")
    text = daemon.log.read_text()
    assert "snapshotd deleted nothing" in text
    reported = [line for line in text.splitlines() if "is an overlay of" in line]
    assert len(reported) == 1, reported  # not the overlay, the clone's disk or the notes
    assert stray.is_file()
    assert linked.is_file()
    assert daemon.stop() == 0
