"""What the daemon's loop schedules and hands to a worker: runs, and when each is due.

The loop dispatches runs, not domains.  A ``Key`` names one scheduled stream of runs
(today: one policy for one domain on one connection); ``Due`` says when its next run
is and which slot it serves; ``DomainRun`` is one run of a key as a worker receives it;
``Job`` is a run in flight.  The loop asks a key only for its ``policy``, its ``uri``,
the ``domain_uuids`` it occupies (none of them gets another job meanwhile) and the
``seed`` of its jitter.  A consistency group is the other kind: ``GroupKey`` (one
policy, all its members, on any connection) and ``GroupJobRun``.

The arithmetic of due times is here as small functions of the policy's schedule
(core/schedule.py decides; the wall clock is passed in as epoch seconds).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Policy
from snapshotd.core.schedule import decide, jitter_for, latest_slot, next_due

# Retry a transient failure after these delays (seconds), then keep the last one.
RETRY_BACKOFF = (10.0, 30.0, 60.0, 300.0)


def utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """One scheduled stream of snapshots: a policy for a domain on a connection."""

    policy: str
    uri: str
    uuid: str

    @property
    def domain_uuids(self) -> tuple[str, ...]:
        """The domains a run of this key works on: busy while it is in flight."""
        return (self.uuid,)

    @property
    def seed(self) -> str:
        """What the schedule's jitter is derived from: stable across restarts."""
        return f"{self.policy}/{self.uuid}"


@dataclass(frozen=True, slots=True)
class GroupKey:
    """The scheduled stream of a consistency group: one policy for all its members, on
    any of the connections.  A change of members is a new key (scheduled from the
    members' run log)."""

    policy: str
    members: tuple[tuple[str, str], ...]  # (URI, domain UUID), sorted

    @property
    def uri(self) -> str:
        """The first member's URI (for lines that name one)."""
        return self.members[0][0] if self.members else ""

    @property
    def uuid(self) -> str:
        return ""  # no one domain

    @property
    def domain_uuids(self) -> tuple[str, ...]:
        return tuple(uuid for _, uuid in self.members)

    @property
    def seed(self) -> str:
        return f"{self.policy}/group"


AnyKey = Key | GroupKey


@dataclass(slots=True)
class Due:
    """When a key runs next, and the slot that run serves."""

    at: float  # epoch seconds, jitter included
    slot: dt.datetime
    reason: str
    retries: int = 0


@dataclass(slots=True)
class Job:
    """A snapshot job in flight."""

    key: AnyKey
    domain: str  # its name (a group's: "group POLICY")
    started: float  # time.monotonic()
    deadline: float  # time.monotonic() past which it is overrun
    since: float  # time.time() when it started, for the status file
    overrun: bool = False


class LinkedHypervisor(HypervisorAPI, Protocol):
    """A connection as the daemon uses it: the actions' calls, and whether it still
    works and whether libvirt is busy with a domain (restart recovery asks both)."""

    def alive(self) -> bool: ...

    def has_job(self, domain: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class DomainRun:
    """One run of a ``Key``, as the loop hands it to a worker thread."""

    key: Key
    policy: Policy
    domain: DomainInfo
    hv: LinkedHypervisor  # the key's connection, as it was when the run was dispatched
    due: Due


@dataclass(frozen=True, slots=True)
class GroupJobRun:
    """One run of a ``GroupKey``: every member with its connection."""

    key: GroupKey
    policy: Policy
    members: tuple[tuple[LinkedHypervisor, DomainInfo], ...]
    due: Due


# --- due times --------------------------------------------------------------------


def first_due(policy: Policy, key: AnyKey, last_slot: int | None, now: float) -> Due:
    """When a key with no due time yet runs: now if a slot since ``last_slot`` (the
    last one its run log says was served) is owed, else its next slot, jittered."""
    last = utc(last_slot) if last_slot is not None else None
    decision = decide(policy.schedule, last, utc(now))
    if decision.due and decision.slot is not None:
        return Due(now, decision.slot, decision.reason)
    slot = decision.next_slot
    delay = jitter_for(policy.schedule, key.seed, slot)
    return Due((slot + delay).timestamp(), slot, decision.reason)


def catch_up(policy: Policy, due: Due, now: float) -> None:
    """Move a first attempt on to the latest slot that has passed by ``now``.

    The loop may wake long after the slot it planned for (the clock was stepped
    forward, or the host slept): the run serves the latest slot that has passed, so the
    stale one does not get a run of its own and then a catch-up run right after it.
    A retry keeps the slot it retries.
    """
    if due.retries:
        return
    later = decide(policy.schedule, due.slot, utc(now))
    if later.due and later.slot is not None:
        due.slot, due.reason = later.slot, later.reason


def served(policy: Policy, due: Due, made: float) -> dt.datetime:
    """The slot a run whose snapshot was made at ``made`` (epoch seconds) has served.

    The latest slot that had passed by then, not only the one it was dispatched for: a
    run held up (a call that waited for a cut link to come back, a retry) is as fresh as
    the moment it was made, so the slots that passed while it waited get no catch-up run
    right after it.  A clock stepped back under it leaves the dispatched slot.
    """
    return latest_slot(policy.schedule, due.slot, utc(made)) or due.slot


def retry(due: Due, error: str | None, now: float) -> Due:
    """The same slot again after a transient failure, later by the retry backoff."""
    backoff = RETRY_BACKOFF[min(due.retries, len(RETRY_BACKOFF) - 1)]
    return Due(now + backoff, due.slot, f"retry: {error}", due.retries + 1)


def next_slot(policy: Policy, key: AnyKey, due: Due, now: float, reason: str) -> Due:
    """The next slot, without the run log: after one another host of a shared catalog
    takes, or one this host served while the shared catalog was away (its journal)."""
    slot = next_due(policy.schedule, max(due.slot, utc(now)))
    delay = jitter_for(policy.schedule, key.seed, slot)
    return Due((slot + delay).timestamp(), slot, reason)


def after_failure(policy: Policy, key: AnyKey, due: Due, error: str | None, now: float) -> Due:
    """The next slot after a permanent failure: it is not retried for the same slot."""
    slot = next_due(policy.schedule, max(due.slot, utc(now)))
    delay = jitter_for(policy.schedule, key.seed, slot)
    return Due((slot + delay).timestamp(), slot, f"after failure: {error}")
