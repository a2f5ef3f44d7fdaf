"""libvirtd restarted under a running daemon.

Named to run last, and marked disruptive (scripts/test.sh runs those alone, after the
others): it restarts the libvirtd every integration test shares (the session's
connection in conftest.py reconnects by itself, but a test running at the same moment
would see the outage).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import Run
from tests.integration import target
from tests.integration.cli import files_under
from tests.integration.domains import DomainFactory
from tests.integration.test_daemon import Daemon, policy, snapshots, write_policy
from tests.integration.test_faults_libvirt import (
    catalog_snapshots,
    configure,
    mid_memory_save,
    names,
    operations,
    query,
    serving,
)
from tests.integration.test_progress import noisy_domain

pytestmark = pytest.mark.disruptive


def restart_libvirtd(during: Callable[[], None] | None = None) -> float:
    """Stop libvirtd (QEMU keeps running), then start it again; returns when it stopped.
    ``during`` is called while it is down (not with a systemd-managed libvirtd).  This
    machine's libvirtd waits for another session's tests that use it as their peer."""
    if target.URI != "qemu:///system":
        return target.restart_libvirtd(during=during)
    with target.local_libvirtd(exclusive=True):
        return _restart_local(during)


def _restart_local(during: Callable[[], None] | None = None) -> float:
    if (
        during is None
        and target.URI == "qemu:///system"
        and Path("/run/systemd/system").is_dir()
        and subprocess.run(["systemctl", "is-active", "-q", "libvirtd"], check=False).returncode
        == 0
    ):
        stopped = time.time()
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True)
        return stopped
    return target.restart_libvirtd(during=during)


def test_daemon_reconnects_after_libvirtd_restart(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory(state="running")
    (tmp_path / "policies").mkdir(mode=0o755)
    daemon = Daemon(tmp_path)
    try:
        write_policy(daemon, "rc", policy(dom, every="3s", keep=50))
        daemon.start()
        daemon.wait_ready()
        daemon.wait_for(lambda: len(snapshots(dom)) >= 1, 20, "a first snapshot")
        stopped = restart_libvirtd()
        dom.dom = domain_factory.conn.lookupByUUIDString(dom.uuid)  # reconnects itself
        daemon.wait_for(
            lambda: any(t > stopped + 1 for t, _, _ in snapshots(dom)),
            30,
            "a snapshot after libvirtd came back",
        )
        assert daemon.proc is not None
        assert daemon.proc.poll() is None  # the daemon kept running
        names = [name for _, name, _ in snapshots(dom)]
        assert len(names) == len(set(names))
        log = daemon.log.read_text()
        assert "connection closed" in log or "not connected" in log or "cannot list" in log
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_fault_01_libvirtd_restarted_in_the_middle_of_a_snapshot(
    domain_factory: DomainFactory, libvirt_conn: Any, tmp_path: Path
) -> None:
    """1. libvirtd restarted in the middle of a snapshot: reconnect, reconcile, no
    duplicate, next due snapshot happens.

    In the middle: an external memory snapshot of a guest whose RAM holds 512 MiB of
    random bytes, while the daemon's run record says it is in progress and its memory
    file is less than half written.
    """
    dom = noisy_domain(domain_factory, libvirt_conn)
    bystander = domain_factory(state="shutoff")
    snaps = dom.directory / "snaps"
    (tmp_path / "policies").mkdir(mode=0o755)
    daemon = Daemon(tmp_path)
    try:
        configure(daemon, "workers: 2\n")
        extra = f"  memory: external\n  directory: {snaps}"
        states = "  states: [running]"
        write_policy(daemon, "mid", policy(dom, every="1h", extra=extra, keep=50, states=states))
        write_policy(daemon, "by", policy(bystander, every="2s", keep=50))
        # The policy ran before, two hours ago: its catch-up slot is due at the start
        # (and the next one not for up to an hour).
        seeded = int(time.time()) // 3600 * 3600 - 7200
        with open_catalog(str(daemon.state)) as catalog:
            runs = catalog.runs
            runs.start(Run("mid", dom.uuid, target.URI, dom.name), "seed", seeded, seeded)
            runs.finish("mid", dom.uuid, slot=seeded, error=None, now=seeded)
        before_files = files_under(dom.directory)
        daemon.start()
        # The catch-up starts in the daemon's first pass, before READY: watch for it
        # from the start (the memory file is half written about half a second later).
        cut, memory = mid_memory_save(daemon, dom, snaps)
        daemon.wait_ready()
        restart_libvirtd()
        for scratch in (dom, bystander):  # the session's connection reconnects itself
            scratch.dom = domain_factory.conn.lookupByUUIDString(scratch.uuid)

        def served() -> bool:
            rows = query(
                daemon,
                "SELECT last_slot, in_progress FROM runs WHERE domain_uuid = ?",
                dom.uuid,
            )
            return bool(rows) and rows[0][0] > seeded and rows[0][1] is None

        # The hour's slot is served after the restart: once.
        daemon.wait_for(served, 90, "the slot served after libvirtd came back")
        log = daemon.log.read_text()
        assert "connection closed" in log or "cannot list" in log or "not connected" in log
        (made,) = names(dom)  # no duplicate: one snapshot for the one slot
        assert catalog_snapshots(daemon, dom) == {made}
        failures = [o for o in operations(daemon, dom) if o[1] == "failed"]
        if made == cut:
            # libvirt finished it before it went down: adopted after the reconnect.
            assert f"snapshot {cut} was made before an interruption; recorded" in log
        else:
            # Reconciled with the new connection: libvirt never made it, so the retry
            # took the slot under a new name.
            assert f"snapshot {cut} was interrupted before libvirt made it" in log
            (failure,) = failures
            message = failure[3] or ""
            assert failure[2] == cut
            assert dom.name in message
            assert "transient" in message
            if memory.exists():  # what libvirtd left is named, and kept
                assert f"files the snapshot was to create exist: {memory}" in message
                assert "snapshotd deleted nothing" in message
        # Nothing lost: every file from before is still there.
        assert before_files <= files_under(dom.directory)
        assert dom.state() == libvirt.VIR_DOMAIN_RUNNING
        serving(daemon, bystander)
        assert daemon.stop() == 0
    finally:
        daemon.close()


def test_libvirtd_restarted_while_a_group_holds_its_members_every_one_is_resumed(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """libvirtd goes away while the group holds one member paused and the other's
    suspend hangs: the run's resumes fail with the connection; the daemon resumes both
    through its next connection, records the run as failed and goes on."""
    from tests.integration.test_groups import (  # noqa: PLC0415 - the groups' helpers
        PAUSED,
        RUNNING,
        group_policy,
        members,
        state,
        wait_until,
    )

    doms = members(domain_factory, 2, "gk")
    prefix = doms[0].name[:-1]
    body = group_policy(prefix, daemon.root / "snaps").replace("max_pause: 10s", "max_pause: 60s")
    write_policy(daemon, "shop", body.replace("every: 1h", "every: 5s"))
    stuck = target.qemu_pid(doms[-1].name)
    os.kill(stuck, signal.SIGSTOP)
    try:
        daemon.start()
        daemon.wait_ready()
        wait_until(lambda: state(doms[0]) == PAUSED, 60, "the first member held")
        # Let the stopped QEMU go once libvirtd is down: it then pauses, as asked.
        restart_libvirtd(during=lambda: os.kill(stuck, signal.SIGCONT))
    finally:
        os.kill(stuck, signal.SIGCONT)
    for dom in doms:  # the test's own handles died with libvirtd
        dom.dom = domain_factory.conn.lookupByUUIDString(dom.uuid)
    wait_until(lambda: all(state(d) == RUNNING for d in doms), 90, "both members resumed")
    daemon.wait_for(
        lambda: "once libvirt answered again" in daemon.log.read_text(), 60, "the late release"
    )
    # The daemon goes on: its next run takes the group.
    daemon.wait_for(
        lambda: "group shop: created" in daemon.log.read_text(), 60, "a group after the restart"
    )
    assert daemon.stop() == 0
    assert all(state(d) == RUNNING for d in doms)
    with open_catalog(str(daemon.state)) as catalog:
        assert catalog.groups.held() == []
