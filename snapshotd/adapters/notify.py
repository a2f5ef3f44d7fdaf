"""Talking to systemd: the ``sd_notify`` protocol for a ``Type=notify`` service.

systemd passes the daemon a datagram socket in ``NOTIFY_SOCKET`` (a file system
path, or an abstract socket when it starts with ``@``); each notification is one
datagram of ``NAME=value`` lines.  What snapshotd sends:

* ``READY=1`` once start-up is done (and again after each reload), with ``STATUS=``;
* ``RELOADING=1`` when a reload starts, with ``MONOTONIC_USEC=`` (systemd 253 and
  later require it for ``Type=notify-reload``; older versions ignore it);
* ``STOPPING=1`` when a stop starts;
* ``STATUS=`` a one-line summary that ``systemctl status`` shows;
* ``WATCHDOG=1`` from the main loop, every ``watchdog_interval()`` seconds, when the
  unit sets ``WatchdogSec=``.

systemd gives the watchdog timeout in ``WATCHDOG_USEC``; ``WATCHDOG_PID``, when set,
names the process it is meant for, and any other process (a child that inherited
the environment) must leave the watchdog alone.  Without ``NOTIFY_SOCKET`` (run by
hand, or under a ``Type=simple`` unit) every call is a no-op.

A failed send is reported by the return value and never raised: a notification that
cannot be delivered must not stop the daemon.

Why this module speaks the protocol itself rather than through systemd-python's
``systemd.daemon.notify`` (sd_notify(3); version 235, measured against libsystemd 252,
see tests/unit/test_notify.py):

* it holds the GIL while ``sendmsg`` blocks.  systemd's notify socket queue fills when
  PID 1 stops reading for a while (a ``daemon-reload`` of a large system); then every
  thread of the daemon would stop with the main loop, the snapshot jobs and the libvirt
  links too, where with ``socket.sendto`` only the main loop, the one sender, waits;
* it reads the socket only from the process environment (``NOTIFY_SOCKET``, at every
  call), so a Notifier for a socket it is given (``from_env`` of a mapping) would have
  to rewrite ``os.environ``, which is not safe while libvirt's threads read it;
* it has no ``sd_watchdog_enabled``: ``WATCHDOG_USEC``/``WATCHDOG_PID`` are read here.

What it does agree with, and this module does the same: a path or ``@abstract``
address; ``unset_environment`` off (the variable stays for the next notification); no
``NOTIFY_SOCKET``, nothing sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

STATUS_MAX = 200  # characters of STATUS= text; the rest is cut


def status_text(text: str) -> str:
    """``text`` made fit for ``STATUS=``: one line, at most ``STATUS_MAX`` characters."""
    line = " ".join(text.splitlines()).replace("\0", "")
    if len(line) > STATUS_MAX:
        line = line[: STATUS_MAX - 3] + "..."
    return line


def _address(path: str) -> str:
    """The ``sendto`` address: a leading ``@`` means the abstract namespace."""
    return "\0" + path[1:] if path.startswith("@") else path


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Notifications to systemd; every method is a no-op when there is no socket."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd's environment describes.

        The watchdog is enabled when ``WATCHDOG_USEC`` is a positive integer and
        ``WATCHDOG_PID`` is unset or equals this process's pid (sd_watchdog_enabled(3)'s
        rule; systemd-python has no binding of it).
        """
        path = environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        try:
            usec = int(environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = None
        pid = environ.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    usec = None
            except ValueError:
                usec = None
        return cls(path, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.socket_path is not None

    def send(self, *lines: str) -> bool:
        """Send one notification made of ``NAME=value`` lines; whether it was sent."""
        if self.socket_path is None or not lines:
            return False
        message = "\n".join(lines).encode("utf-8")
        # Not systemd.daemon.notify: it blocks every thread while the queue is full (see
        # the module docstring); a blocking sendto waits with the GIL released.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, _address(self.socket_path))
        except OSError:
            return False
        return True

    def _with_status(self, first: list[str], status: str | None) -> bool:
        if status is not None:
            first.append("STATUS=" + status_text(status))
        return self.send(*first)

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is complete."""
        return self._with_status(["READY=1"], status)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload has started; send
        ``ready()`` when it is done."""
        return self._with_status(["RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}"], status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon is shutting down."""
        return self._with_status(["STOPPING=1"], status)

    def status(self, text: str) -> bool:
        """``STATUS=``: the one line ``systemctl status`` shows."""
        return self._with_status([], text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, only when the watchdog is enabled for this process."""
        if self.watchdog_usec is None:
            return False
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """How often (seconds) the main loop must call ``watchdog()``: half of
        ``WATCHDOG_USEC``; None when there is no watchdog (or no socket)."""
        if self.watchdog_usec is None or self.socket_path is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000
