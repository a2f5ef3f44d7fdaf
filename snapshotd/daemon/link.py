"""One libvirt connection per URI, kept alive by a thread of its own: ``Link``.

The thread connects (again, with backoff, whenever the connection is lost), registers
for domain events and lists the domains whenever one fires; it tells the loop with
``LinkChanged`` and ``DomainsListed`` events.  The loop never makes a libvirt call
itself; workers take the link's current connection (``hypervisor``) for their runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.daemon.events import DomainsListed, EventQueue, LinkChanged
from snapshotd.errors import SnapshotdError

log = logging.getLogger("snapshotd")

RECONNECT_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds; then the last one again


class Link:
    """One libvirt connection, kept alive by its own thread."""

    def __init__(self, uri: str, events: EventQueue) -> None:
        self.uri = uri
        self._events = events
        self._wanted = threading.Event()  # set: list domains again (or reconnect)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._hv: Hypervisor | None = None
        self._thread = threading.Thread(target=self._run, name=f"link {uri}", daemon=True)

    def start(self) -> None:
        self._wanted.set()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._thread.join(timeout=5)
        with self._lock:
            hv, self._hv = self._hv, None
        if hv is not None:
            with contextlib.suppress(SnapshotdError):
                hv.close()

    @property
    def hypervisor(self) -> Hypervisor | None:
        """The connection now, or None while there is none."""
        with self._lock:
            return self._hv

    def refresh(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._wanted.wait()
            self._wanted.clear()
            if self._stop.is_set():
                return
            hv = self.hypervisor
            if hv is None or not hv.alive():
                hv = self._connect()
                if hv is None:
                    delay = RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)]
                    attempt += 1
                    self._stop.wait(delay)
                    self._wanted.set()
                    continue
                attempt = 0
            try:
                domains = hv.list_domains()
            except SnapshotdError as exc:
                log.warning("%s: cannot list domains: %s", sanitize_uri(self.uri), exc)
                self._drop()
                self._wanted.set()
                continue
            self._events.put(DomainsListed(self.uri, domains))

    def _connect(self) -> Hypervisor | None:
        try:
            hv = Hypervisor.open(self.uri)
            hv.watch(self._on_domain, self._on_close)
        except SnapshotdError as exc:
            log.warning("%s: not connected: %s", sanitize_uri(self.uri), exc)
            self._events.put(LinkChanged(self.uri, False, str(exc)))
            return None
        with self._lock:
            self._hv = hv
        log.info("%s: connected", sanitize_uri(self.uri))
        self._events.put(LinkChanged(self.uri, True, None))
        return hv

    def _drop(self) -> None:
        with self._lock:
            hv, self._hv = self._hv, None
        if hv is not None:
            with contextlib.suppress(SnapshotdError):
                hv.close()
        self._events.put(LinkChanged(self.uri, False, "connection lost"))

    def _on_domain(self, _event: str, _uuid: str) -> None:
        self._wanted.set()

    def _on_close(self, reason: str) -> None:
        log.warning("%s: connection closed: %s", sanitize_uri(self.uri), reason)
        self._wanted.set()
