"""The daemon's presence in its state directory: a lock and a status file.

``daemon.lock``  held (flock, exclusive) for as long as ``snapshotd run`` runs; it
                 holds the daemon's PID.  A second daemon on the same state
                 directory refuses to start, and ``snapshotd status`` tells a
                 running daemon from a stale file by trying the lock.
``status.json``  what the main loop knows and the catalog does not: the policies
                 in force, load errors, connections, each key's next due time and
                 the jobs in flight.  Replaced atomically (write, rename; no fsync),
                 and only when its content changes, so an idle daemon writes
                 nothing.

Neither holds snapshot XML or credentials (URIs are written without them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshotd.adapters import files
from snapshotd.errors import SnapshotdError

LOCK_NAME = "daemon.lock"
STATUS_NAME = "status.json"


class AlreadyRunning(SnapshotdError):
    """Another daemon holds the state directory."""


class DaemonLock:
    """The exclusive lock a running daemon holds on its state directory."""

    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        Path(self.path.parent).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise AlreadyRunning(
                f"another snapshotd daemon{who} is running on state directory "
                f"{self.path.parent}; stop it first (systemctl stop snapshotd), or give this "
                "one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip())
    return None


def daemon_pid(state_dir: str) -> int | None:
    """The PID of the daemon running on ``state_dir``, or None when none is."""
    path = Path(state_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1  # held: running, even if the PID is unreadable
        return None  # nobody holds it: a file left by a daemon that stopped
    finally:
        os.close(fd)


@dataclass
class StatusWriter:
    """Writes ``status.json`` when, and only when, its content changed."""

    state_dir: str
    _last: str | None = None  # the content last written, in compact form

    def write(self, status: dict[str, Any]) -> bool:
        # Compared compactly: without indent, json uses its C encoder, many times faster
        # than the Python one that indent needs, and the daemon asks on every wake-up
        # (a libvirt event of any domain on the host is one).
        compact = json.dumps(status, sort_keys=True)
        if compact == self._last:
            return False
        text = json.dumps(status, indent=1, sort_keys=True) + "\n"
        # No fsync: the daemon writes it again at start, and it changes with every job;
        # an fsync here would compete with the disk flushes of the snapshots themselves.
        files.write_private(Path(self.state_dir) / STATUS_NAME, text, fsync=False)
        self._last = compact
        return True


def read_status(state_dir: str) -> dict[str, Any] | None:
    """The last status the daemon wrote, or None (never ran, or the file is unreadable)."""
    path = Path(state_dir) / STATUS_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


LOCK_WAIT = 120.0  # seconds a snapshot waits for another process's operation on its domain
_UUID = re.compile(r"[0-9a-fA-F-]{32,36}")


@contextlib.contextmanager
def domain_lock(state_dir: str, uuid: str, domain: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the domain's lock for one operation, across processes on this state directory.

    The daemon and `snapshotd take`/`prune` share it, so two of them never work on one
    domain at once: the second waits (up to ``wait`` seconds), then sees what the first
    made.  Locks are files under ``locks/`` named by the domain's UUID.
    """
    if not _UUID.fullmatch(uuid):
        raise SnapshotdError(f"domain {domain!r}: unexpected UUID {uuid!r}")
    directory = Path(state_dir) / "locks"
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(directory / f"{uuid}.lock", flags, 0o600)
    except FileNotFoundError:  # the first lock in this state directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / f"{uuid}.lock", flags, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    who = f" (pid {holder})" if holder else ""
                    raise SnapshotdError(
                        f"domain {domain!r} is busy: another snapshotd process{who} has been "
                        f"working on it for more than {wait:g} s; try again later"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
