"""snapshotd.daemon.link.Link: one busy domain never delays the list of the others.

A stand-in connection whose definition read for one domain blocks (as libvirt 11.3's
virDomainGetXMLDesc does while another job holds the domain) until the test lets it go.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import cast

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.core.model import DomainInfo, DomainState
from snapshotd.daemon.events import DomainsListed, Event, LinkChanged
from snapshotd.daemon.link import Link

URI = "test:///busy"
FREE = "00000000-0000-0000-0000-000000000001"
BUSY = "00000000-0000-0000-0000-000000000002"


class BusyHost:
    """The few calls Link makes, with one domain whose definition waits on ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reads: list[str] = []

    def watch(
        self, _on_domain: Callable[[str, str], None], _on_close: Callable[[str], None]
    ) -> None:
        pass

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def domain_handles(self) -> list[tuple[str, str, DomainState]]:
        return [(FREE, "free", DomainState.RUNNING), (BUSY, "busy", DomainState.RUNNING)]

    def domain(self, uuid: str) -> DomainInfo:
        self.reads.append(uuid)
        if uuid == BUSY:
            self.release.wait(30)
        return DomainInfo(
            name="free" if uuid == FREE else "busy", uuid=uuid, state=DomainState.RUNNING
        )


def listed(events: queue.Queue[Event], timeout: float) -> DomainsListed:
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(event, DomainsListed):
            return event
        assert isinstance(event, LinkChanged)


def test_a_busy_domain_is_listed_when_it_answers_and_the_others_at_once() -> None:
    host = BusyHost()
    events: queue.Queue[Event] = queue.Queue()
    link = Link(URI, events, opener=lambda _uri: cast(Hypervisor, host), definition_wait=0.2)
    link.start()
    try:
        started = time.monotonic()
        first = listed(events, timeout=5)
        assert time.monotonic() - started < 3  # not the busy domain's 30 s
        assert [d.uuid for d in first.domains] == [FREE]
        host.release.set()  # the other job ends: its definition arrives, and it is listed
        second = listed(events, timeout=5)
        assert sorted(d.uuid for d in second.domains) == [FREE, BUSY]
    finally:
        host.release.set()
        link.stop()


def test_a_domain_busy_again_keeps_its_last_definition_with_its_state_now() -> None:
    host = BusyHost()
    host.release.set()
    events: queue.Queue[Event] = queue.Queue()
    link = Link(URI, events, opener=lambda _uri: cast(Hypervisor, host), definition_wait=0.2)
    link.start()
    try:
        assert sorted(d.uuid for d in listed(events, timeout=5).domains) == [FREE, BUSY]
        host.release.clear()
        link.refresh()
        again = listed(events, timeout=5)
        assert sorted(d.uuid for d in again.domains) == [FREE, BUSY]
        assert host.reads.count(BUSY) == 2  # read again, and not waited for
    finally:
        host.release.set()
        link.stop()
