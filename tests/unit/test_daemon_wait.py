"""The daemon's loop sleeps while due snapshots wait for a worker, instead of spinning."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from snapshotd.config.settings import Overrides
from snapshotd.daemon.loop import Daemon
from snapshotd.daemon.runs import Due, Job, Key

NOW = 1_795_000_000.0
SLOT = dt.datetime.fromtimestamp(NOW, dt.UTC)


def key(n: int) -> Key:
    return Key("p", "qemu:///system", f"00000000-0000-4000-8000-{n:012d}")


def busy_daemon() -> Daemon:
    """workers 1, one job in flight (deadline in 600 s), one more key due and waiting."""
    daemon = Daemon(Overrides(), clock=lambda: NOW)
    daemon.limit = 1
    mono = time.monotonic()
    daemon.jobs[key(1)] = Job(key(1), "a", mono, mono + 600, NOW)
    daemon.due[key(2)] = Due(NOW - 5, SLOT, "due")
    return daemon


def test_a_due_key_blocked_by_the_worker_limit_does_not_wake_the_loop() -> None:
    # The blocked key is dispatched on the job's "done" event; until then the loop
    # waits for the next wake it has: the job's operation_timeout.
    assert busy_daemon()._timeout(NOW) == pytest.approx(600, abs=2)


def test_a_later_due_time_still_wakes_the_loop_on_time() -> None:
    daemon = busy_daemon()
    daemon.due[key(3)] = Due(NOW + 30, SLOT, "next slot")
    assert daemon._timeout(NOW) == pytest.approx(30)
