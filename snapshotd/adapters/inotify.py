"""Linux's inotify through ctypes: the three system calls the policy watcher needs
(adapters/watch.py), without a library of its own (none is packaged in Debian 12).

``INotify`` is a non-blocking, close-on-exec inotify file descriptor: ``add_watch``,
``rm_watch``, ``read`` (the events ready now, never waiting) and ``close``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from typing import NamedTuple

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name
_BUFFER = 64 * 1024  # holds about a thousand events

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: str


def _checked(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


class INotify:
    """One inotify instance (inotify_init1 with IN_NONBLOCK | IN_CLOEXEC)."""

    def __init__(self) -> None:
        self._fd = _checked(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int) -> int:
        """A watch of ``path`` for the events in ``mask``; its descriptor (OSError with
        the errno when the path cannot be watched: ENOENT, ENOTDIR, ...)."""
        return _checked(_libc.inotify_add_watch(self._fd, os.fsencode(path), mask))

    def rm_watch(self, wd: int) -> None:
        _checked(_libc.inotify_rm_watch(self._fd, wd))

    def read(self) -> list[Event]:
        """The events queued now (none: an empty list); names decoded as the file
        system's names are (os.fsdecode)."""
        try:
            data = os.read(self._fd, _BUFFER)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset : offset + length].rstrip(b"\0")
            offset += length
            events.append(Event(wd, mask, cookie, os.fsdecode(raw)))
        return events

    def close(self) -> None:
        os.close(self._fd)
