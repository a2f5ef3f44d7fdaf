"""Consistency groups: the domains one policy selects, snapshotted at one instant.

Pure decisions only: which members a group run holds still and how (suspend or freeze),
what each member's snapshot is planned as (a running member of a crash-consistent group
is snapshotted while paused, so it is planned as paused), the order of operations, and
the smallest ``max_pause`` a group of a given size can meet.  The I/O (suspending,
freezing, the creates in parallel, the rollback) is ``snapshotd.actions.grouprun``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from dataclasses import dataclass

from snapshotd.core.model import DomainInfo, DomainState, SnapshotRequest
from snapshotd.core.plan import Plan, plan_snapshot
from snapshotd.core.retention import Candidate, Retention, Verdict, evaluate
from snapshotd.errors import RequestError

# The smallest max_pause a group can be given: a suspend and a resume are each a round
# trip to libvirtd and QEMU's monitor, and a disk-only snapshot of a paused domain takes
# a few tens of milliseconds more (bench/ measures it); with members done in parallel,
# each extra member adds the cost of starting its thread and its libvirt call.
MIN_PAUSE = dt.timedelta(seconds=1)
PAUSE_PER_MEMBER = dt.timedelta(milliseconds=100)


# Why retention keeps a group policy's snapshot that is in no group (a member of a
# group whose other members' rows are gone is still in it).
NO_GROUP = "in no group of this policy: snapshotd never deletes a member alone"


class Consistency(enum.StrEnum):
    CRASH = "crash"  # every member suspended, snapshotted, resumed
    APPLICATION = "application"  # every member's file systems frozen by its guest agent


class OnMemberFailure(enum.StrEnum):
    ABORT = "abort"  # delete what the group made: every member has it, or none
    PARTIAL = "partial"  # keep the members that succeeded, the group marked partial


class Fallback(enum.StrEnum):
    NONE = "none"  # a member without an answering agent fails the group
    CRASH = "crash"  # ... or the group is taken crash-consistent instead


class Hold(enum.StrEnum):
    """How a member is kept from writing while the group's snapshots are made."""

    SUSPEND = "suspend"  # virDomainSuspend, then virDomainResume
    FREEZE = "freeze"  # virDomainFSFreeze, then virDomainFSThaw
    NONE = "none"  # already still: paused (left paused) or shut off


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """``group:``: the policy's domains form one consistency group."""

    consistency: Consistency = Consistency.CRASH
    max_pause: dt.timedelta = dt.timedelta(seconds=5)
    on_member_failure: OnMemberFailure = OnMemberFailure.ABORT
    fallback: Fallback = Fallback.NONE


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a group run: the domain as it is, how it is held, the domain as
    its snapshot sees it (a suspended member is paused then), and its plan."""

    domain: DomainInfo
    hold: Hold
    taken_as: DomainInfo
    plan: Plan


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """What a group run does, before anything is done."""

    name: str
    consistency: Consistency
    max_pause: dt.timedelta
    members: tuple[Member, ...]

    @property
    def held(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.hold is not Hold.NONE)

    def steps(self) -> list[str]:
        """The order of operations, for ``snapshotd plan``."""
        hold = {Consistency.CRASH: "suspend", Consistency.APPLICATION: "freeze"}[self.consistency]
        release = {Consistency.CRASH: "resume", Consistency.APPLICATION: "thaw"}[self.consistency]
        held = ", ".join(m.domain.name for m in self.held) or "none"
        every = ", ".join(m.domain.name for m in self.members)
        return [
            f"{hold} {held}, in parallel; no create starts before every one is held",
            f"create snapshot {self.name!r} of {every}, in parallel",
            f"{release} each of {held} as soon as its own snapshot is made (the window "
            f"is bounded by max_pause {self.max_pause.total_seconds():g}s: past it, every "
            "member is released and the group fails)",
        ]


def min_pause(members: int) -> dt.timedelta:
    """The smallest max_pause that a group of ``members`` domains can meet."""
    return MIN_PAUSE + PAUSE_PER_MEMBER * max(members - 1, 0)


def plan_group(
    policy: str,
    settings: GroupSettings,
    domains: list[DomainInfo],
    requests: dict[str, SnapshotRequest],
    *,
    consistency: Consistency | None = None,
) -> GroupPlan:
    """Every member's plan, or a RequestError (a member's PlanError, the first found):
    nothing is done then.

    ``requests`` maps each domain's UUID to its request; all carry the group's one name.
    ``consistency`` overrides the settings' (a fallback to crash).
    """
    how = consistency or settings.consistency
    if not domains:
        raise RequestError(
            f"policy {policy!r}: the group has no members in a state the policy takes"
        )
    floor = min_pause(len(domains))
    if settings.max_pause < floor:
        raise RequestError(
            f"policy {policy!r}: group.max_pause {settings.max_pause.total_seconds():g}s "
            f"is too short for {len(domains)} members (at least "
            f"{floor.total_seconds():g}s): raise it, or select fewer domains"
        )
    names = {r.name for r in requests.values()}
    if len(names) != 1:
        raise RequestError(
            f"policy {policy!r}: a group's members share one snapshot name, not {sorted(names)}"
        )
    members = []
    for domain in domains:
        as_taken = taken_as(how, domain)
        plan = plan_snapshot(as_taken, requests[domain.uuid])
        members.append(Member(domain, _hold(how, domain), as_taken, plan))
    return GroupPlan(names.pop(), how, settings.max_pause, tuple(members))


def taken_as(how: Consistency, domain: DomainInfo) -> DomainInfo:
    """The domain as its snapshot will see it: a member that is suspended is paused
    then, so it is planned as the state table's paused row."""
    if _hold(how, domain) is Hold.SUSPEND:
        return dataclasses.replace(domain, state=DomainState.PAUSED)
    return domain


def _hold(how: Consistency, domain: DomainInfo) -> Hold:
    if domain.state not in (DomainState.RUNNING, DomainState.BLOCKED):
        return Hold.NONE  # paused or shut off: nothing is written while the group runs
    return Hold.SUSPEND if how is Consistency.CRASH else Hold.FREEZE


def group_verdicts(
    retention: Retention, groups: list[tuple[str, int]], now: dt.datetime, timezone: str
) -> dict[str, Verdict]:
    """Retention over a group policy's groups, each (name, taken at, in seconds since the
    epoch): the verdict every member's snapshot of that group shares, by name."""
    candidates = [
        Candidate(name, dt.datetime.fromtimestamp(taken, dt.UTC), True) for name, taken in groups
    ]
    verdicts = evaluate(retention, candidates, now, timezone)
    return {v.name: v for v in verdicts}
