"""One run of a consistency group: every member of one policy snapshotted at one instant.

``GroupRun(policy, members, now)`` is PolicyRun's sibling for a policy with ``group:``
(actions/policyrun.py).  ``execute(catalog)`` returns one ``GroupResult`` and never
raises for a member that failed:

1. each member's state against the selector (a skipped member is not in the group);
   every member's plan (core/group.py: a member that will be suspended is planned as
   paused), its name checked and its files prepared, under every member's domain lock
   (taken in UUID order, held to the end).  A refusal here fails the run before any
   member is touched;
2. the ``before`` hooks of every member (one that fails with ``before_failure: skip``
   fails the run, nothing held);
3. the hold: each running member is suspended (crash) or its file systems frozen
   (application), all in parallel, each hold written to the catalog first so that a
   restarted daemon releases what a killed one held (catalog GroupLog.held);
4. the creates, in parallel, each started once every member is held (that is the
   group's instant: what a member does after its own release cannot reach a member
   still held), bounded by ``max_pause``: once it has passed every member is released
   at once, whatever is still in flight;
5. the release: each member is resumed or thawed by its create's thread as soon as
   libvirt made its snapshot (before its XML is read back), and every member still
   held is released on every other path;
6. the catalog: each member's snapshot recorded, then the group.  A member that failed
   (or the window exceeded) with ``on_member_failure: abort`` deletes the snapshots the
   run made of the others again (libvirt merges an external overlay back), so every
   member has the group's snapshot or none does; with ``partial`` the others stay,
   recorded as a partial group.

With ``consistency: application`` and ``fallback: crash``, a member whose agent does
not answer the freeze makes the run thaw every member and go on crash-consistent.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import enum
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from snapshotd.actions import guard
from snapshotd.actions.policyrun import PolicyHooks
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.actions.snapshot import (
    Created,
    DomainAction,
    Prepared,
    call_create,
    epoch,
    failed,
    prepare,
    record,
    refuse_taken_name,
    still_as_planned,
)
from snapshotd.adapters import files
from snapshotd.adapters.hypervisor import agent_unavailable
from snapshotd.catalog.api import Catalog, GroupMember, GroupRow, HoldRow
from snapshotd.core.group import Consistency, Fallback, GroupPlan, Hold, Member, OnMemberFailure
from snapshotd.core.group import plan_group as plan_members
from snapshotd.core.model import DomainInfo, DomainState
from snapshotd.core.policy import Policy
from snapshotd.errors import LibvirtError, RequestError, SnapshotdError

# A member's hypervisor: members may live on different URIs.
Located = tuple[HypervisorAPI, DomainInfo]


class GroupFailed(SnapshotdError):
    """A group run failed: the message names each member and what happened to it."""


class GroupOutcome(enum.Enum):
    CREATED = "created"  # every member has the group's snapshot
    PARTIAL = "partial"  # some members failed and on_member_failure: partial kept the rest
    FAILED = "failed"  # no member has it (refused, or rolled back)


@dataclass(frozen=True, slots=True)
class MemberResult:
    """What the run did to one member."""

    domain: DomainInfo
    uri: str
    hold: Hold
    created: Created | None = None
    error: SnapshotdError | None = None
    rolled_back: bool = False  # created, then deleted again (abort)
    release_error: str | None = None  # the resume or thaw failed: what to do


@dataclass(frozen=True, slots=True)
class GroupResult:
    """What one group run did."""

    policy: str
    name: str
    outcome: GroupOutcome
    consistency: Consistency  # as taken (crash after an application fallback)
    members: tuple[MemberResult, ...] = ()
    skipped: tuple[tuple[DomainInfo, str], ...] = ()  # (member, why) left out by state
    pause: float | None = None  # seconds from the first hold to the last release
    error: SnapshotdError | None = None  # why the group failed
    note: str | None = None  # e.g. the fallback to crash consistency


class GroupRun:
    """One group policy for its members at one instant."""

    def __init__(self, policy: Policy, members: list[Located], now: dt.datetime) -> None:
        if policy.group is None:
            raise ValueError(f"policy {policy.name!r} has no group")
        self.policy = policy
        self.settings = policy.group
        self.now = now
        self.name: str = policy.snapshot_name("group", now)  # the template has no {domain}
        self._members = members

    def execute(self, catalog: Catalog) -> GroupResult:
        """The whole run (see the module docstring); a failure is in the result."""
        selector = self.policy.selector
        taking = [(hv, d) for hv, d in self._members if selector.skip_reason(d) is None]
        skipped = tuple(
            (d, why) for _, d in self._members if (why := selector.skip_reason(d)) is not None
        )
        hv_of = {d.uuid: hv for hv, d in taking}
        how = self.settings.consistency
        try:
            with ExitStack() as locks:
                for domain in sorted((d for _, d in taking), key=lambda d: d.uuid):
                    locks.enter_context(catalog.domain_lock(domain.uuid, domain.name))
                plan = self._plan(catalog, taking, hv_of, how)
                problem = self._before(plan)
                if problem is not None:
                    _unprepare(plan.prepared.values())
                    return self._failed(how, skipped, problem)
                result = self._take(catalog, plan, hv_of)
                if (
                    result.outcome is GroupOutcome.FAILED
                    and how is Consistency.APPLICATION
                    and self.settings.fallback is Fallback.CRASH
                    and _agent_failed(result)
                ):
                    plan = self._plan(catalog, taking, hv_of, Consistency.CRASH)
                    retried = self._take(catalog, plan, hv_of)
                    note = "application consistency fell back to crash: " + str(result.error)
                    result = _with_note(retried, note)
        except SnapshotdError as exc:
            return self._failed(how, skipped, exc)
        return _with_skipped(result, skipped)

    # --- 1. plans, names and files ----------------------------------------------------

    def _plan(
        self,
        catalog: Catalog,
        taking: list[Located],
        hv_of: dict[str, HypervisorAPI],
        how: Consistency,
    ) -> _Ready:
        requests = {d.uuid: self.policy.request(d, self.now, quiesce=False) for _, d in taking}
        plan = plan_members(
            self.policy.name,
            self.settings,
            [d for _, d in taking],
            requests,
            consistency=how,
        )
        prepared: dict[str, Prepared] = {}
        try:
            for member in plan.members:
                hv = hv_of[member.domain.uuid]
                problem, _unmeasured = guard.check(
                    hv, self.policy.guard, member.domain, member.plan.spec
                )
                if problem is not None:
                    raise RequestError(
                        f"group {self.policy.name!r}: {member.domain.name}: skipped by the "
                        f"policy's guard: {problem}; no member was touched"
                    )
                refuse_taken_name(hv, catalog, member.domain, plan.name)
                action = self._action(hv, catalog, member.domain)
                still_as_planned(action, plan.name)
                prepared[member.domain.uuid] = prepare(action, member.plan)
        except SnapshotdError:
            _unprepare(prepared.values())  # the directories made for the others
            raise
        return _Ready(plan, prepared)

    def _action(self, hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo) -> DomainAction:
        return DomainAction(hv, catalog, domain, self.policy.name, self.now)

    # --- 2. before hooks --------------------------------------------------------------

    def _before(self, ready: _Ready) -> SnapshotdError | None:
        for member in ready.plan.members:
            around = PolicyHooks(self.policy, member.domain, ready.plan.name)
            problem = around.before()
            if problem is not None:
                around.on_failure("skipped", problem)
                return RequestError(
                    f"group {self.policy.name!r}: {member.domain.name}: {problem} "
                    "(hooks.before_failure: skip): no member was touched"
                )
        return None

    # --- 3 to 6. hold, create, release, record ----------------------------------------

    def _take(
        self, catalog: Catalog, ready: _Ready, hv_of: dict[str, HypervisorAPI]
    ) -> GroupResult:
        plan = ready.plan
        window = _Window(self.settings.max_pause.total_seconds())
        done = {m.domain.uuid: _Done(m, hv_of[m.domain.uuid]) for m in plan.members}
        creates: dict[cf.Future[tuple[str, str]], _Done] = {}
        held = [done[m.domain.uuid] for m in plan.held]
        self._write_holds(catalog, plan.name, held)
        # Twice the members: a release is never queued behind a create that hangs.
        with cf.ThreadPoolExecutor(max_workers=max(2 * len(plan.members), 1)) as pool:
            try:
                if self._hold_all(pool, window, held):
                    for d in done.values():
                        d.started = time.monotonic()
                        action = self._action(d.hv, catalog, d.member.taken_as)
                        prepared = ready.prepared[d.member.domain.uuid]
                        creates[pool.submit(_create_and_release, action, prepared, d)] = d
                    _, late = cf.wait(creates, timeout=window.left())
                    window.exceeded = window.exceeded or bool(late)
                else:
                    _unprepare(ready.prepared.values())  # no member's create was asked
                    for d in done.values():
                        if d.error is None:
                            d.error = RequestError(
                                "not snapshotted: another member could not be held still"
                            )
            finally:
                # Every member still held is released now, on every path (those whose
                # create returned were released by their own thread already).
                for released in cf.as_completed([pool.submit(h.release) for h in held]):
                    released.result()
                window.close(h.released_at for h in held)
            for d in held:
                if d.release_error is None:
                    catalog.groups.release(d.member.domain.uuid)
            # What was still in flight when the window passed is waited for here.
            for future, d in creates.items():
                self._collect(catalog, ready, future, d)
        self._settle(catalog, plan, done, window)
        return self._result(plan, done, window)

    def _write_holds(self, catalog: Catalog, name: str, held: list[_Done]) -> None:
        """Each hold in the catalog before its member is touched: a restarted daemon
        releases what a killed one held."""
        for d in held:
            catalog.groups.hold(
                HoldRow(
                    self.policy.name,
                    name,
                    d.hv.uri,
                    d.member.domain.uuid,
                    d.member.domain.name,
                    d.member.hold.value,
                    epoch(self.now),
                )
            )

    @staticmethod
    def _hold_all(pool: cf.ThreadPoolExecutor, window: _Window, held: list[_Done]) -> bool:
        """Suspend or freeze every member to hold, in parallel; whether every hold took.
        No create starts before every member is held: that is the group's instant."""
        window.open()
        holds = {}
        for d in held:
            d.holding = pool.submit(_hold, d.hv, d.member)
            holds[d.holding] = d
        # Bounded too: a member whose suspend hangs (its QEMU does not answer) must not
        # keep the others paused past max_pause.
        finished, hanging = cf.wait(holds, timeout=window.left())
        for future in finished:
            problem = future.exception()
            if isinstance(problem, SnapshotdError):
                holds[future].error = problem
            elif problem is not None:
                raise problem
        if hanging:
            window.exceeded = True
        for future in hanging:
            d = holds[future]
            verb = "suspend" if d.member.hold is Hold.SUSPEND else "freeze"
            d.error = RequestError(
                f"its {verb} had not returned when group.max_pause "
                f"({window.limit:g}s) passed: the others were released; it is released "
                "once libvirt answers (check its QEMU process and `virsh domstate "
                f"{d.member.domain.name}`)"
            )
        return not any(d.error for d in held)

    def _collect(
        self, catalog: Catalog, ready: _Ready, future: cf.Future[tuple[str, str]], d: _Done
    ) -> None:
        """One member's create, once it returned: recorded, or its failure logged."""
        action = self._action(d.hv, catalog, d.member.taken_as)
        prepared = ready.prepared[d.member.domain.uuid]
        problem = future.exception()
        if isinstance(problem, SnapshotdError):
            d.error = failed(action, prepared, problem, d.started)
        elif problem is not None:
            raise problem
        else:
            returned, secure = future.result()
            d.created = record(action, prepared, returned, secure, d.started)

    def _settle(
        self, catalog: Catalog, plan: GroupPlan, done: dict[str, _Done], window: _Window
    ) -> None:
        """Roll back (abort, or the window passed: what finished after the release is
        not of the group's instant) or record the group (all, or partial)."""
        failures = [d for d in done.values() if d.error is not None or d.created is None]
        if (failures or window.exceeded) and (
            self.settings.on_member_failure is OnMemberFailure.ABORT or window.exceeded
        ):
            for d in done.values():
                if d.created is not None:
                    self._roll_back(catalog, d)
            return
        made = [d for d in done.values() if d.created is not None]
        if not made:
            return
        catalog.groups.record(
            GroupRow(
                policy=self.policy.name,
                name=plan.name,
                taken_at=epoch(self.now),
                members=tuple(
                    GroupMember(
                        d.hv.uri,
                        d.member.domain.uuid,
                        d.member.domain.name,
                        _created_at(d.created, self.now),
                    )
                    for d in made
                ),
                partial=len(made) < len(done),
                pause_ms=window.millis(),
            )
        )
        for d in made:
            PolicyHooks(self.policy, d.member.domain, plan.name).after()

    def _roll_back(self, catalog: Catalog, d: _Done) -> None:
        """Delete a member's snapshot of a group that failed (libvirt merges an external
        overlay back into its base); the catalog marks it deleted."""
        created = d.created
        if created is None:
            return
        domain, name = d.member.domain, created.plan.spec.name
        started = time.monotonic()
        action = self._action(d.hv, catalog, domain)
        try:
            d.hv.delete_snapshot(domain.uuid, name)
        except SnapshotdError as exc:
            d.rollback_error = str(exc)
            action.log("delete", "failed", snapshot=name, message=str(exc), started=started)
            return
        catalog.mark_deleted(domain.uuid, name, _created_at(created, self.now), epoch(self.now))
        memory = created.info.memory_file
        if memory is not None and memory in created.plan.spec.new_files:
            with contextlib.suppress(FileNotFoundError):
                Path(memory).unlink()
        d.rolled_back = True
        why = f"group {self.policy.name!r} failed: this member's snapshot was deleted again"
        action.log("delete", "ok", snapshot=name, message=why, started=started)

    # --- results ----------------------------------------------------------------------

    def _result(self, plan: GroupPlan, outcome: dict[str, _Done], window: _Window) -> GroupResult:
        members = tuple(d.result() for d in outcome.values())
        errors = [f"{d.member.domain.name}: {d.error}" for d in outcome.values() if d.error]
        if window.exceeded:
            errors.insert(
                0,
                f"the pause window passed group.max_pause "
                f"({self.settings.max_pause.total_seconds():g}s): every member was released",
            )
        made = [m for m in members if m.created is not None and not m.rolled_back]
        if not errors:
            return GroupResult(
                self.policy.name, plan.name, GroupOutcome.CREATED, plan.consistency,
                members, pause=window.seconds(),
            )  # fmt: skip
        error = GroupFailed(f"group {self.policy.name!r}: " + "; ".join(errors))
        outcome_ = GroupOutcome.PARTIAL if made else GroupOutcome.FAILED
        return GroupResult(
            self.policy.name, plan.name, outcome_, plan.consistency, members,
            pause=window.seconds(), error=error,
        )  # fmt: skip

    def _failed(
        self,
        how: Consistency,
        skipped: tuple[tuple[DomainInfo, str], ...],
        error: SnapshotdError,
    ) -> GroupResult:
        return GroupResult(
            self.policy.name, self.name, GroupOutcome.FAILED, how, skipped=skipped, error=error
        )


# --- helpers ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ready:
    plan: GroupPlan
    prepared: dict[str, Prepared]


@dataclass(slots=True)
class _Done:
    """One member's outcome while the run goes on."""

    member: Member
    hv: HypervisorAPI
    started: float = 0.0  # time.monotonic() when its create was handed to a thread
    created: Created | None = None
    error: SnapshotdError | None = None
    rolled_back: bool = False
    rollback_error: str | None = None
    release_error: str | None = None
    released_at: float | None = None  # time.monotonic() when its resume or thaw returned
    holding: cf.Future[None] | None = None  # its suspend or freeze, once asked
    _releasing: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        """Resume or thaw it, once, from whichever thread comes first: its create's,
        as soon as libvirt made the snapshot, or the run's, on every other path."""
        if self.member.hold is Hold.NONE:
            return
        if self.holding is not None:
            # A suspend still in flight would pause it after a resume sent now.
            cf.wait([self.holding])
        with self._releasing:
            if self.released_at is None:
                self.release_error = _release(self.hv, self.member)
                self.released_at = time.monotonic()

    def result(self) -> MemberResult:
        error = self.error
        if self.rollback_error is not None:
            error = SnapshotdError(
                f"{error}; its snapshot could not be deleted again: {self.rollback_error}"
            )
        return MemberResult(
            self.member.domain,
            self.hv.uri,
            self.member.hold,
            self.created,
            error,
            self.rolled_back,
            self.release_error,
        )


@dataclass(slots=True)
class _Window:
    """The pause window: from the first hold to the last release, against max_pause."""

    limit: float
    opened: float | None = None
    closed: float | None = None
    exceeded: bool = False
    _clock: Callable[[], float] = field(default=time.monotonic)

    def open(self) -> None:
        self.opened = self._clock()

    def close(self, releases: Iterable[float | None]) -> None:
        """At the last release's time (the window is the members' pause, not the
        catalog's writes after it)."""
        if self.opened is not None:
            self.closed = max((t for t in releases if t is not None), default=self._clock())
            if self.closed - self.opened > self.limit:
                self.exceeded = True

    def left(self) -> float:
        if self.opened is None:
            return self.limit
        return max(self.limit - (self._clock() - self.opened), 0.0)

    def seconds(self) -> float | None:
        if self.opened is None or self.closed is None:
            return None
        return self.closed - self.opened

    def millis(self) -> int | None:
        seconds = self.seconds()
        return None if seconds is None else int(seconds * 1000)


def _create_and_release(action: DomainAction, ready: Prepared, d: _Done) -> tuple[str, str]:
    """One member's create; the member is released as soon as libvirt made its
    snapshot (every member was held before any create began, so the instant is kept),
    or when the create failed."""
    try:
        return call_create(action, ready, after=d.release)
    finally:
        d.release()


def _hold(hv: HypervisorAPI, member: Member) -> None:
    if member.hold is Hold.SUSPEND:
        hv.suspend(member.domain.uuid)
    else:
        hv.freeze(member.domain.uuid)


def _release(hv: HypervisorAPI, member: Member) -> str | None:
    """Resume or thaw; None when done, else what the administrator must do."""
    name = member.domain.name
    if member.hold is Hold.FREEZE:
        # Also after a failed freeze: one that timed out may still happen in the guest.
        if hv.thaw(member.domain.uuid):
            return None
        return f"its guest agent did not confirm the thaw: run `virsh domfsthaw {name}`"
    try:
        hv.resume(member.domain.uuid)
    except SnapshotdError as exc:
        try:
            state = hv.domain_state(member.domain.uuid)
        except SnapshotdError:
            state = DomainState.PAUSED  # unknown: say what to check
        if state is not DomainState.PAUSED:
            return None  # a suspend that failed left it running; or it is gone
        return f"could not be resumed ({exc}): run `virsh resume {name}`"
    return None


def _agent_failed(result: GroupResult) -> bool:
    return any(
        isinstance(m.error, LibvirtError) and agent_unavailable(m.error)
        for m in result.members
        if m.hold is Hold.FREEZE
    )


def _created_at(created: Created | None, now: dt.datetime) -> int:
    if created is not None and created.info.creation_time is not None:
        return created.info.creation_time
    return epoch(now)


def _unprepare(prepared: Iterable[Prepared]) -> None:
    """Remove the directories made for snapshots that were never asked of libvirt."""
    for ready in prepared:
        files.remove_dirs(list(ready.made_dirs))


def _with_note(result: GroupResult, note: str) -> GroupResult:
    return replace(result, note=note)


def _with_skipped(result: GroupResult, skipped: tuple[tuple[DomainInfo, str], ...]) -> GroupResult:
    return replace(result, skipped=skipped)
