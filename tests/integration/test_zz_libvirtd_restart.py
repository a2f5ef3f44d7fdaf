"""libvirtd restarted under a running daemon.

Named to run last: it restarts the libvirtd every integration test shares (the
session's connection in conftest.py reconnects by itself, but a test running at the
same moment would see the outage).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.integration.cli import REPO
from tests.integration.domains import DomainFactory
from tests.integration.test_daemon import Daemon, policy, snapshots, write_policy


def restart_libvirtd() -> float:
    """Stop libvirtd (QEMU keeps running), then start it again; returns when it stopped."""
    if Path("/run/systemd/system").is_dir() and (
        subprocess.run(["systemctl", "is-active", "-q", "libvirtd"], check=False).returncode == 0
    ):
        stopped = time.time()
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True)
        return stopped
    subprocess.run(["pkill", "-x", "libvirtd"], check=True)
    deadline = time.monotonic() + 20
    while subprocess.run(["pgrep", "-x", "libvirtd"], check=False).returncode == 0:
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.1)
    stopped = time.time()
    time.sleep(4)  # an outage spanning at least one due time
    subprocess.run([str(REPO / "scripts" / "host-setup.sh")], check=True, capture_output=True)
    return stopped


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
