"""Per-domain locks: one snapshotd operation on a domain at a time.

The daemon and `snapshotd take`/`prune` share them, so two of them never work on one
domain at once: the second waits, then sees what the first made.  ``file_lock`` is the
lock of a catalog in a state directory: a file under ``locks/`` named by the domain's
UUID, held with flock, so it excludes other processes and (each hold opening the file
anew) other threads alike; ``ThreadLocks`` are the locks of a catalog that lives in one
process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from snapshotd.catalog.api import LOCK_WAIT
from snapshotd.errors import SnapshotdError

_UUID = re.compile(r"[0-9a-fA-F-]{32,36}")
_POLL = 0.1  # seconds between two tries of a file lock


def check_uuid(uuid: str, domain: str) -> None:
    """Refuse a UUID that is not one: it names a lock file."""
    if not _UUID.fullmatch(uuid):
        raise SnapshotdError(f"domain {domain!r}: unexpected UUID {uuid!r}")


def _busy(domain: str, who: str, wait: float) -> SnapshotdError:
    return SnapshotdError(
        f"domain {domain!r} is busy: {who} has been working on it for more than "
        f"{wait:g} s; try again later"
    )


def _holder(fd: int) -> int | None:
    """The PID the lock's holder wrote into the file, if it can be read."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


@contextlib.contextmanager
def file_lock(state_dir: str, uuid: str, domain: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the domain's lock file in ``state_dir`` (``locks/UUID.lock``, holding the PID
    of its holder) for one operation; SnapshotdError after ``wait`` seconds."""
    check_uuid(uuid, domain)
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
                    holder = _holder(fd)
                    who = f" (pid {holder})" if holder else ""
                    raise _busy(domain, f"another snapshotd process{who}", wait) from None
                time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing drops the flock


class ThreadLocks:
    """Per-domain locks between the threads of one process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def hold(self, uuid: str, domain: str, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the domain's lock for one operation; SnapshotdError after ``wait`` s."""
        check_uuid(uuid, domain)
        with self._guard:
            lock = self._locks.setdefault(uuid.lower(), threading.Lock())
        if not lock.acquire(timeout=max(wait, 0.0)):
            raise _busy(domain, "another snapshotd operation", wait)
        try:
            yield
        finally:
            lock.release()
