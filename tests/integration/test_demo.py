"""The README's demo, run as a new user would run it.

Shortened to 45 seconds: that holds at least four of the demo policy's 10-second
slots, so retention (keep_last: 3) has pruned by the end.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli import REPO


@pytest.mark.local_only  # demo.sh runs on this machine's libvirt, whatever host is tested
def test_the_demo_runs_and_cleans_up() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "demo.sh")],
        env=dict(os.environ, DEMO_SECONDS="45"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "(exit status 2: refused before libvirt was called)" in out
    status = out.split("$ snapshotd status")[1].split("$ snapshotd list")[0]
    assert "daemon: running" in status
    assert "policies in force: demo" in status
    lines = [line for line in status.splitlines() if line.startswith("snapshotd-demo-")]
    assert len(lines) == 2
    assert all(" demo-" in line for line in lines)
    progress = [line for line in out.splitlines() if line.startswith("   ... ")]
    assert " 0 pruned" not in progress[-1]  # retention ran
    assert "+- demo-" in out.split("--tree")[1]
    assert "SNAPSHOTD OK - 2 snapshot streams fresh" in out
    # Its own two domains and their directory are gone again (other tests' domains, or
    # another session's demo, come and go meanwhile).
    said = r"== cleaned up: domains (\S+) and (\S+), the daemon and (\S+) removed"
    cleaned = re.search(said, out)
    assert cleaned is not None, out[-2000:]
    names = subprocess.run(
        ["virsh", "list", "--all", "--name"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not {cleaned[1], cleaned[2]} & set(names)
    assert all(n in out for n in (cleaned[1], cleaned[2]))
    assert not Path(cleaned[3]).exists()
