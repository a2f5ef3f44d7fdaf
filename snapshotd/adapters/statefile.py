"""The daemon's presence in its state directory: ``daemon.lock``.

The lock is held (flock, exclusive) for as long as ``snapshotd run`` runs, and the file
holds the daemon's PID.  A second daemon on the same state directory refuses to start,
and ``snapshotd status`` tells a running daemon from a stale file by trying the lock.
(What the running daemon knows, ``status.json``, is adapters/statusfile.py's.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from snapshotd.errors import SnapshotdError

LOCK_NAME = "daemon.lock"


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
