"""One libvirt connection per URI, kept alive by a thread of its own: ``Link``.

The thread connects (again, with backoff, whenever the connection is lost), registers
for domain events and lists the domains whenever one fires; it tells the loop with
``LinkChanged`` and ``DomainsListed`` events.  The loop never makes a libvirt call
itself; workers take the link's current connection (``hypervisor``) for their runs.

One busy domain never delays the others: the list itself (names, UUIDs, states) needs
no job on any domain, and each domain's definition is read on its own, in parallel,
waited for at most ``DEFINITION_WAIT``.  A definition that comes later (libvirt 11.3
holds a domain's XML while another job runs on it, up to 30 s) is used from the last
listing meanwhile, or the domain is listed once it answers, which lists again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.core.model import DomainInfo
from snapshotd.daemon.events import DomainsListed, EventQueue, LinkChanged
from snapshotd.errors import NotFoundError, SnapshotdError

log = logging.getLogger("snapshotd")

RECONNECT_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds; then the last one again
DEFINITION_WAIT = 2.0  # seconds a domain list waits for any one domain's definition
READERS = 4  # definitions read at once, per connection


class Link:
    """One libvirt connection, kept alive by its own thread."""

    def __init__(
        self,
        uri: str,
        events: EventQueue,
        *,
        opener: Callable[[str], Hypervisor] = Hypervisor.open,
        definition_wait: float = DEFINITION_WAIT,
    ) -> None:
        self.uri = uri
        self._events = events
        self._open = opener
        self._definition_wait = definition_wait
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix=f"read {uri}")
        self._reading: dict[str, Future[DomainInfo]] = {}  # UUID -> its definition, coming
        self._known: dict[str, DomainInfo] = {}  # UUID -> the last definition read
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
        self._readers.shutdown(wait=False, cancel_futures=True)

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
                domains = self._list(hv)
            except SnapshotdError as exc:
                log.warning("%s: cannot list domains: %s", sanitize_uri(self.uri), exc)
                self._drop()
                self._wanted.set()
                continue
            self._events.put(DomainsListed(self.uri, domains))

    def _list(self, hv: Hypervisor) -> list[DomainInfo]:
        """Every domain, each definition waited for at most ``definition_wait``."""
        handles = hv.domain_handles()
        for uuid, _name, _state in handles:
            if uuid not in self._reading:
                self._reading[uuid] = self._readers.submit(hv.domain, uuid)
        wait_for([self._reading[u] for u, _, _ in handles], timeout=self._definition_wait)
        listed = []
        for uuid, name, state in handles:
            reading = self._reading[uuid]
            if not reading.done():
                # List again when it answers; meanwhile what was read last time, if any.
                reading.add_done_callback(lambda _done: self._wanted.set())
                known = self._known.get(uuid)
                if known is None:
                    log.info(
                        "%s: %s: its definition did not come within %g s (another job holds "
                        "the domain); it is listed once libvirt answers",
                        sanitize_uri(self.uri),
                        name,
                        self._definition_wait,
                    )
                else:
                    listed.append(dataclasses.replace(known, name=name, state=state))
                continue
            del self._reading[uuid]
            try:
                info = reading.result()
            except NotFoundError:
                continue  # undefined since it was listed
            self._known[uuid] = info
            listed.append(info)
        present = {uuid for uuid, _, _ in handles}
        self._known = {u: i for u, i in self._known.items() if u in present}
        return listed

    def _connect(self) -> Hypervisor | None:
        try:
            hv = self._open(self.uri)
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
        self._reading.clear()  # reads on the lost connection fail by themselves
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
