"""One policy run: one policy, one domain, one instant; hooks, one snapshot, retention.

``PolicyRun(policy, domain, now)`` renders the snapshot's name once, when it is made
(``run.name``: the daemon marks its run in progress with it before anything happens);
``run.execute(hv, catalog, clock=...)`` then does the whole run and returns one
``RunResult``, never raising for a snapshot that was skipped, refused or failed:

1. the selector's skip_reason (the domain's state) -> SKIPPED, no hook runs; the
   policy's guard (free space, backing chains: actions/guard.py) -> GUARDED, no hook
   runs, the reason says what to do;
2. the ``before`` hooks; one failed and ``before_failure: skip`` -> the ``on_failure``
   hooks, FAILED with HookSkipped;
3. one plan of the policy's request, and the snapshot created from it; with
   ``quiesce: try`` and a guest agent that does not answer, once more without quiesce
   (planned anew: the request differs), with a note saying so;
4. a refusal or failure -> the ``on_failure`` hooks, FAILED with the error (no prune);
   success -> the ``after`` hooks, then (with ``prune``) the policy's retention at
   ``clock()``, inside ``retention_progress(domain)`` when given.  A policy without
   retention gets an empty PruneReport, as prune() gives it.  An exception from
   retention itself propagates, as one that is not a SnapshotdError does from anywhere.

``execute`` is ``take`` (steps 1 to 4) then ``retain`` (the retention of step 4); the
two are public so that a caller may do its own bookkeeping in between: the daemon
finishes its run log and counts the snapshot before retention starts, as it always
has.  The CLI's ``take --policy`` executes PolicyRuns; the daemon's job takes and
retains them, adding only its run log and metrics.

A run over several domains at one instant (a consistency group) is a sibling class of
the same shape, not a change to this one: ``GroupRun(policy, domains, now)`` with the
one ``name`` of the group's snapshots, and ``execute(hv, catalog, *, clock, ...)``
returning a result per domain (each a RunResult) under one outcome.  Whoever dispatches
runs (the daemon, ``take``) needs only ``name`` and ``execute`` (or ``take`` and
``retain``); such a sibling composes the steps in its own order (all before hooks, all
creates at one instant, then each domain's retention).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

from snapshotd.actions import guard
from snapshotd.actions import prune as pruning
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.actions.prune import PruneReport
from snapshotd.actions.snapshot import Created, create_planned
from snapshotd.adapters import hooks
from snapshotd.adapters.hypervisor import agent_unavailable
from snapshotd.catalog.api import Catalog
from snapshotd.core.model import DomainInfo, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.policy import BeforeFailure, Policy, Quiesce
from snapshotd.errors import LibvirtError, SnapshotdError


class Outcome(enum.Enum):
    CREATED = "created"
    SKIPPED = "skipped"  # the domain's state is not one the policy takes
    GUARDED = "guarded"  # the policy's guard skipped it (too little space, too long a chain)
    FAILED = "failed"


class HookSkipped(SnapshotdError):
    """A ``before`` hook failed and the policy says ``before_failure: skip``."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one policy run did."""

    policy: str
    domain: DomainInfo
    snapshot: str  # the name, rendered once for the run
    outcome: Outcome
    created: Created | None = None  # the snapshot made (its plan and libvirt's info)
    note: str | None = None  # e.g. quiesce: try fell back
    reason: str | None = None  # why skipped (the selector's skip_reason, or the guard's)
    error: SnapshotdError | None = None  # why it failed: refused, libvirt, HookSkipped
    pruned: PruneReport | None = None  # retention after a created snapshot; None: not run


RetentionProgress = Callable[[DomainInfo], AbstractContextManager[None]]


class PolicyRun:
    """One policy for one domain at one instant."""

    def __init__(self, policy: Policy, domain: DomainInfo, now: dt.datetime) -> None:
        """Raises RequestError when the policy's name template gives no valid name."""
        self.policy = policy
        self.domain = domain
        self.now = now
        # The request carries the name: rendered here, once.
        self._request = policy.request(domain, now, quiesce=policy.quiesces(domain))
        self.name: str = self._request.name

    def execute(
        self,
        hv: HypervisorAPI,
        catalog: Catalog,
        *,
        clock: Callable[[], dt.datetime],
        retention_progress: RetentionProgress | None = None,
        prune: bool = True,
    ) -> RunResult:
        """The whole run (see the module docstring); a failure is in the result."""
        result = self.take(hv, catalog)
        if not prune:
            return result
        return self.retain(hv, catalog, result, clock=clock, retention_progress=retention_progress)

    def take(self, hv: HypervisorAPI, catalog: Catalog) -> RunResult:
        """Steps 1 to 4 without retention: skip, hooks, the snapshot (pruned: None)."""
        skip = self.policy.selector.skip_reason(self.domain)
        if skip is not None:
            return self._result(Outcome.SKIPPED, reason=skip)
        guarded, unmeasured = self._guard(hv)
        if guarded is not None:
            return self._result(Outcome.GUARDED, reason=guarded)
        around = PolicyHooks(self.policy, self.domain, self.name)
        problem = around.before()
        if problem is not None:
            around.on_failure("skipped", problem)
            refused = HookSkipped(f"snapshot skipped: {problem} (hooks.before_failure: skip)")
            return self._result(Outcome.FAILED, error=refused)
        try:
            made, note = self._create(hv, catalog)
        except SnapshotdError as exc:
            around.on_failure("failed", str(exc))
            return self._result(Outcome.FAILED, error=exc)
        around.after()
        notes = "; ".join(n for n in (note, unmeasured) if n) or None
        return self._result(Outcome.CREATED, created=made, note=notes)

    def _guard(self, hv: HypervisorAPI) -> tuple[str | None, str | None]:
        """The guard's verdict on the plan of this run's request (a request that cannot
        be planned goes on, to be refused with the planner's own error)."""
        if not self.policy.guard.active:
            return None, None
        try:
            plan = plan_snapshot(self.domain, self._request)
        except SnapshotdError:
            return None, None
        return guard.check(hv, self.policy.guard, self.domain, plan.spec)

    def retain(
        self,
        hv: HypervisorAPI,
        catalog: Catalog,
        taken: RunResult,
        *,
        clock: Callable[[], dt.datetime],
        retention_progress: RetentionProgress | None = None,
    ) -> RunResult:
        """The policy's retention after ``taken`` (this run's take()), at ``clock()``;
        a result that is not CREATED comes back as it is: nothing is pruned then."""
        if taken.outcome is not Outcome.CREATED:
            return taken
        # After the snapshot, so that it counts as the newest (not as "in the future").
        now = clock()
        with retention_progress(self.domain) if retention_progress else nullcontext():
            report = pruning.prune(hv, catalog, self.policy, self.domain, now)
        return replace(taken, pruned=report)

    def _create(self, hv: HypervisorAPI, catalog: Catalog) -> tuple[Created, str | None]:
        """The snapshot, with quiesce: try's fallback; (what was made, the note)."""
        try:
            return self._attempt(hv, catalog, self._request), None
        except LibvirtError as exc:
            if not (self._tries_quiesce() and agent_unavailable(exc)):
                raise
            made = self._attempt(hv, catalog, replace(self._request, quiesce=False))
            why = (
                f"quiesce: try: taken without quiesce, the guest agent did not help ({exc.reason})"
            )
            return made, why

    def _tries_quiesce(self) -> bool:
        return self._request.quiesce and self.policy.snapshot.quiesce is Quiesce.TRY

    def _attempt(self, hv: HypervisorAPI, catalog: Catalog, request: SnapshotRequest) -> Created:
        plan = plan_snapshot(self.domain, request)
        return create_planned(hv, catalog, self.domain, plan, policy=self.policy.name, now=self.now)

    def _result(
        self,
        outcome: Outcome,
        *,
        created: Created | None = None,
        note: str | None = None,
        reason: str | None = None,
        error: SnapshotdError | None = None,
        pruned: PruneReport | None = None,
    ) -> RunResult:
        return RunResult(
            self.policy.name, self.domain, self.name, outcome, created, note, reason, error, pruned
        )


class PolicyHooks:
    """The policy's hooks around one snapshot of one domain, all told the same context
    (a group run has one per member)."""

    def __init__(self, policy: Policy, domain: DomainInfo, snapshot: str) -> None:
        self._spec = policy.hooks
        self._timeout = policy.hooks.timeout.total_seconds()
        self._context = hooks.Context(
            policy=policy.name,
            domain=domain.name,
            domain_uuid=domain.uuid,
            snapshot=snapshot,
            state=domain.state.value,
        )

    def before(self) -> str | None:
        """Run the ``before`` hooks; why the snapshot is skipped, or None to take it."""
        outcomes = hooks.run_all("before", self._spec.before, self._context, self._timeout)
        failed = [o for o in outcomes if not o.ok]
        if not failed or self._spec.before_failure is not BeforeFailure.SKIP:
            return None
        return "; ".join(o.problem or "" for o in failed)

    def after(self) -> None:
        hooks.run_all("after", self._spec.after, replace(self._context, result="ok"), self._timeout)

    def on_failure(self, result: str, error: str) -> None:
        told = replace(self._context, result=result, error=error)
        hooks.run_all("on_failure", self._spec.on_failure, told, self._timeout)
