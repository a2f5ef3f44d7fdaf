"""Watching the policy directory with inotify, so that a change is in force within a second.

``PolicyWatcher(directory, on_change)`` runs a daemon thread that watches the
directory (not its files' targets) and calls ``on_change()`` once activity has
stopped for ``debounce`` seconds.  Bursts coalesce into one call: an editor's
write-a-temporary-file-then-rename, a delete and re-create, a tool that writes
several files.  ``on_change`` runs on the watcher's thread, one call at a time,
never concurrently with itself; it should be quick (the daemon's puts an event on
its queue).  An exception it raises is logged and the watching goes on.

What counts as activity: creating, writing (on close), deleting, renaming into or
out of, and changing the mode or owner of an entry whose name is a policy file
name as ``snapshotd.adapters.configfiles`` reads them (``*.yaml``/``*.yml``, not hidden,
not an editor backup).  So a vim swap file or a ``web.yaml.tmp`` being written
wakes nobody, while the ``os.replace`` that puts it in place does.  A kernel queue
overflow counts as activity too.

Half-written files: a writer that keeps a file open and writes it slowly produces
no ``IN_CLOSE_WRITE`` until it is done, and one that writes in pieces with pauses
longer than ``debounce`` may be read half-way.  That is safe: the daemon validates
the whole set and refuses a reload with any error (the previous policies stay in
force), and the final close triggers another call, which loads the finished file.
A stream of activity that never pauses is still reported every ``max_wait``
seconds.

The directory itself: if it is deleted, moved away or replaced (``IN_DELETE_SELF``,
``IN_MOVE_SELF``, ``IN_IGNORED``), the watcher reports the change and then, only in
that state, tries every ``retry`` seconds to watch the path again; when the
directory is back it reports a change.  A directory that does not exist at
``start()`` is treated the same way.  Changes to the target of a symlinked policy
file are not seen (the link's directory is what is watched); SIGHUP covers those.

inotify comes from adapters/inotify.py (ctypes: ``inotify_init1``,
``inotify_add_watch``, ``inotify_rm_watch``, ``read``); the thread waits in ``poll()``
on the inotify descriptor and a pipe, so ``stop()`` returns at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

# The policy loader's own rule for which names are policy files; one rule for both.
from snapshotd.adapters.configfiles import is_policy_file
from snapshotd.adapters.inotify import INotify

log = logging.getLogger("snapshotd.watch")

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

MASK = (
    IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_CREATE
    | IN_DELETE
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED


class PolicyWatcher:
    """Calls ``on_change()`` after changes to the policy files in ``directory``.

    ``debounce``: seconds without activity before the call.  ``max_wait``: the
    longest a call is put off by activity that does not pause.  ``retry``: how
    often to look for the directory while it is missing.  ``relevant``: which
    entry names count (default: the policy loader's rule).
    """

    def __init__(
        self,
        directory: str,
        on_change: Callable[[], None],
        debounce: float = 0.2,
        *,
        max_wait: float = 1.0,
        retry: float = 1.0,
        relevant: Callable[[str], bool] = is_policy_file,
    ) -> None:
        self.directory = directory
        self.on_change = on_change
        self.debounce = debounce
        self.max_wait = max(max_wait, debounce)
        self.retry = retry
        self.relevant = relevant
        self._thread: threading.Thread | None = None
        self._wake_w: int | None = None
        self._stop = threading.Event()

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start watching.  Raises ``OSError`` if inotify itself is not available
        (a missing directory is not an error: it is waited for)."""
        if self._thread is not None:
            raise RuntimeError("PolicyWatcher.start() called twice")
        inotify = INotify()
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._wake_w = wake_w
        self._thread = threading.Thread(
            target=self._run, args=(inotify, wake_r), name="policy-watcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching and wait (at most ``timeout`` seconds) for the thread to end.

        Safe to call more than once, before ``start()``, or from ``on_change``.
        """
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # the thread may have ended already
                os.write(self._wake_w, b"x")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._wake_w is not None and (thread is None or not thread.is_alive()):
            os.close(self._wake_w)
            self._wake_w = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the thread ---------------------------------------------------------------

    def _run(self, inotify: Any, wake_r: int) -> None:
        try:
            _Loop(self, inotify, wake_r).run()
        except Exception:
            log.exception(
                "the policy directory watcher stopped; changes to %s now need a reload (SIGHUP)",
                self.directory,
            )
        finally:
            inotify.close()
            os.close(wake_r)


class _Loop:
    """The watcher thread's state: the watch, pending activity, the retry clock."""

    def __init__(self, watcher: PolicyWatcher, inotify: Any, wake_r: int) -> None:
        self.w = watcher
        self.inotify = inotify
        self.wake_r = wake_r
        self.wd: int | None = None
        self.first_activity: float | None = None
        self.last_activity: float | None = None
        self.next_retry = 0.0
        self.warned = False

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.inotify.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        if not self._add_watch():
            log.warning("policy directory %s does not exist yet; waiting for it", self.w.directory)
        while not self.w._stop.is_set():
            timeout = self._timeout(time.monotonic())
            ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
            if self.w._stop.is_set():
                break
            if any(fd == self.inotify.fileno() for fd, _ in ready):
                self._read()
            now = time.monotonic()
            if self.wd is None and now >= self.next_retry and self._add_watch():
                log.info("policy directory %s is back", self.w.directory)
                self._activity(now)
            if self._due(now):
                self.first_activity = self.last_activity = None
                self._call()

    def _timeout(self, now: float) -> float | None:
        deadlines = []
        if self.last_activity is not None and self.first_activity is not None:
            deadlines.append(
                min(self.last_activity + self.w.debounce, self.first_activity + self.w.max_wait)
            )
        if self.wd is None:
            deadlines.append(self.next_retry)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _due(self, now: float) -> bool:
        if self.last_activity is None or self.first_activity is None:
            return False
        return (
            now >= self.last_activity + self.w.debounce
            or now >= self.first_activity + self.w.max_wait
        )

    def _activity(self, now: float) -> None:
        if self.first_activity is None:
            self.first_activity = now
        self.last_activity = now

    def _add_watch(self) -> bool:
        try:
            self.wd = int(self.inotify.add_watch(self.w.directory, MASK))
        except OSError as exc:
            self.wd = None
            self.next_retry = time.monotonic() + self.w.retry
            if exc.errno not in {errno.ENOENT, errno.ENOTDIR} and not self.warned:
                self.warned = True
                log.warning("cannot watch policy directory %s: %s", self.w.directory, exc)
            return False
        self.warned = False
        return True

    def _read(self) -> None:
        events: Iterable[Any] = self.inotify.read()
        changed = False
        lost = False
        for wd, mask, _cookie, name in events:
            if mask & IN_Q_OVERFLOW:
                changed = True
            elif wd != self.wd:
                continue  # a watch already given up (its IN_IGNORED arrives late)
            elif mask & SELF_GONE:
                lost = True
            elif name and self.w.relevant(name):
                changed = True
        now = time.monotonic()
        if lost:
            self._lose()
            changed = True
        if changed:
            self._activity(now)

    def _lose(self) -> None:
        """The watched directory is gone or moved: drop the watch, look for the path."""
        wd, self.wd = self.wd, None
        if wd is not None:
            # A moved directory is still watched: stop that.  A deleted one's watch
            # is already gone (EINVAL).
            with contextlib.suppress(OSError):
                self.inotify.rm_watch(wd)
        log.warning("policy directory %s was removed or replaced", self.w.directory)
        if self._add_watch():  # replaced: the new one may already be there
            log.info("policy directory %s is back", self.w.directory)

    def _call(self) -> None:
        try:
            self.w.on_change()
        except Exception:
            log.exception("policy change handler failed")
