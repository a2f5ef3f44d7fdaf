"""What wakes the daemon's main loop: one small frozen dataclass per kind of event.

Signal handlers, the policy directory's watcher, the per-URI links, the worker threads
and restart recovery put events on the loop's queue (``EventQueue``); only the loop
takes them off, and only the loop changes the scheduling state they report on.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Literal

from snapshotd.core.model import DomainInfo
from snapshotd.daemon.runs import AnyKey, Due


@dataclass(frozen=True, slots=True)
class Reload:
    """SIGHUP, or the policy directory changed (inotify, debounced): load it again."""


@dataclass(frozen=True, slots=True)
class Stop:
    """SIGTERM or SIGINT: start no more jobs, stop when those in flight are done."""


@dataclass(frozen=True, slots=True)
class DomainsListed:
    """A connection's domain list, listed afresh (on connect and after a domain event)."""

    uri: str
    domains: list[DomainInfo]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job ended: ``transient`` failures are retried for the same slot, ``failed``
    ones move on to the next slot, as does a slot another host of a shared catalog takes
    (``elsewhere``), a success recorded in the journal while the shared catalog was
    away (``journaled``) and a snapshot the policy's guard skipped (``guarded``);
    ``error`` is what went wrong (or, elsewhere, who took it)."""

    kind: Literal["ok", "transient", "failed", "elsewhere", "journaled", "guarded"]
    error: str | None = None


OK = JobOutcome("ok")


@dataclass(frozen=True, slots=True)
class JobDone:
    """A worker finished the run of ``key`` that served ``due``."""

    key: AnyKey
    due: Due
    outcome: JobOutcome


@dataclass(frozen=True, slots=True)
class Settled:
    """The runs a previous process left unfinished on ``uri`` were reconciled with
    libvirt: their keys may be dispatched again."""

    uri: str


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """A connection came up, or went down (``error`` says why)."""

    uri: str
    up: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Wake:
    """Nothing happened: the loop's timeout passed (a due time, a watchdog ping)."""


Event = Reload | Stop | DomainsListed | JobDone | Settled | LinkChanged | Wake
EventQueue = queue.Queue[Event]
