"""The daemon's job: one scheduled run on a worker thread, with its run log, metrics and
journal lines.

The run itself (hooks, the snapshot with quiesce: try's fallback, retention) is
actions/policyrun.py's ``PolicyRun``, the same the CLI's ``take --policy`` executes.
Around it the job adds only what the daemon keeps:

* the run log: the run is marked in progress under ``run.name`` before anything
  happens, and finished when the snapshot is made (it served its slot) or failed;
* the metrics: created, failed, pruned, the last success and the durations;
* the journal lines: created, the note (quiesce: try fell back), pruned / could not
  prune / kept, and "snapshot failed" (libvirt) or "snapshot refused" (snapshotd).

A snapshot call cut off by a lost connection is settled by daemon/recovery.py before
its error counts.  The job ends by putting ``JobDone`` on the loop's queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from snapshotd.actions import adopt
from snapshotd.actions import prune as pruning
from snapshotd.actions.policyrun import Outcome, PolicyRun, RunResult
from snapshotd.actions.prune import PruneReport
from snapshotd.adapters.logs import log_event
from snapshotd.adapters.metrics import Metrics
from snapshotd.catalog import Catalog, Run, RunLog
from snapshotd.catalog.api import CatalogUnavailable, ClaimedElsewhere, Operation
from snapshotd.core.model import DomainInfo
from snapshotd.core.plan import ONLINE_STATES
from snapshotd.daemon.catalogs import CatalogPlace, CatalogPool, Journal
from snapshotd.daemon.events import OK, EventQueue, JobDone, JobOutcome
from snapshotd.daemon.recovery import Recovery
from snapshotd.daemon.runs import DomainRun, served, utc
from snapshotd.errors import LibvirtError, SnapshotdError

log = logging.getLogger("snapshotd")


class _Unstarted(Exception):
    """The catalog could not be reached before the run was started: nothing was done."""

    def __init__(self, cause: CatalogUnavailable) -> None:
        super().__init__(str(cause))
        self.cause = cause


def log_skipped(domain: DomainInfo, policy: str, why: str) -> None:
    """The line of a run the domain's state skips (the policy's ``skip`` states)."""
    log.info("%s: skipped by %s: %s", domain.name, policy, why)


class Worker:
    """Runs ``DomainRun``s, each on a thread of its own."""

    def __init__(
        self,
        *,
        events: EventQueue,
        pool: CatalogPool,
        recovery: Recovery,
        metrics: Metrics,
        place: Callable[[], CatalogPlace],
        clock: Callable[[], float],
        journal: Journal | None = None,
    ) -> None:
        self._events = events
        self._pool = pool
        self._recovery = recovery
        self._metrics = metrics
        self._place = place
        self._clock = clock
        self._journal = journal or Journal()
        self._adopted: set[tuple[str, str]] = set()  # (URI, UUID) looked at already

    def start(self, job: DomainRun) -> None:
        """``run(job)`` on a new thread."""
        threading.Thread(
            target=self.run, args=(job,), name=f"job {job.domain.name}", daemon=True
        ).start()

    def run(self, job: DomainRun) -> None:
        """One scheduled snapshot and its retention; ends with ``JobDone``."""
        outcome: JobOutcome
        try:
            outcome = self._run(job)
        except ClaimedElsewhere as exc:
            log.info("%s", exc)  # the other host takes it: nothing went wrong
            outcome = JobOutcome("elsewhere", str(exc))
        except SnapshotdError as exc:
            # libvirt failed it (maybe transient), or snapshotd refused it before libvirt.
            by_libvirt = isinstance(exc, LibvirtError)
            log_event(
                log,
                logging.ERROR,
                f"{job.domain.name}: snapshot {'failed' if by_libvirt else 'refused'}: {exc}",
                policy=job.policy.name,
                domain=job.domain.name,
                operation="create",
                uri=job.key.uri,
            )
            transient = (isinstance(exc, LibvirtError) and exc.transient) or isinstance(
                exc, CatalogUnavailable
            )
            outcome = JobOutcome("transient" if transient else "failed", str(exc))
        except Exception as exc:
            log.exception("%s: snapshot by %s crashed", job.domain.name, job.policy.name)
            outcome = JobOutcome("failed", f"internal error: {exc}")
        self._events.put(JobDone(job.key, job.due, outcome))

    def _run(self, job: DomainRun) -> JobOutcome:
        """The run in the run log; raises what made it fail, after counting it.

        A shared catalog that cannot be reached before anything was done: a domain that
        runs here is taken all the same and recorded in this host's journal; any other
        is skipped, as another host may take it."""
        started = time.monotonic()
        place = self._place()
        try:
            return self._run_at(job, place, started)
        except _Unstarted as unstarted:
            if place.database is None:
                raise unstarted.cause from None
            if job.domain.state not in ONLINE_STATES:
                raise SnapshotdError(
                    f"{job.domain.name}: {job.domain.state.value} and the shared catalog "
                    "cannot be reached: skipped, since another host may take this slot "
                    f"({unstarted.cause})"
                ) from None
            log_event(
                log,
                logging.WARNING,
                f"{job.domain.name}: the shared catalog cannot be reached; taken all the "
                "same (it runs here, no other host takes it) and recorded in this host's "
                "journal until it answers",
                **_fields(job),
            )
            with self._journal.writing():
                done = self._run_at(job, place.journal, started)
            return JobOutcome("journaled") if done.kind == "ok" else done

    def _run_at(self, job: DomainRun, place: CatalogPlace, started: float) -> JobOutcome:
        with contextlib.ExitStack() as stack:
            try:
                catalog = stack.enter_context(self._pool.borrow(place))
                runs = catalog.runs
                now = utc(self._clock())
                run = PolicyRun(job.policy, job.domain, now)
                runs.start(
                    Run(job.policy.name, job.domain.uuid, job.key.uri, job.domain.name),
                    run.name,
                    int(job.due.slot.timestamp()),
                    int(now.timestamp()),
                )
            except CatalogUnavailable as exc:
                raise _Unstarted(exc) from exc
            except ClaimedElsewhere:
                self._prune_held_here(job, catalog)
                raise
            if place.database is not None:
                self._adopt(job, catalog)
            taken = run.take(job.hv, catalog)
            if taken.error is not None:
                return self._failed(job, catalog, runs, run.name, taken.error)
            if taken.outcome is Outcome.GUARDED:
                return self._guarded(job, catalog, runs, run.name, taken.reason or "")
            if taken.outcome is Outcome.SKIPPED:  # its state changed since the dispatch
                log_skipped(job.domain, job.policy.name, taken.reason or "")
                runs.finish(
                    job.policy.name, job.domain.uuid, slot=None, error=None, now=self._now()
                )
                return OK
            # The run served its slot before retention starts: a daemon killed while
            # retention runs leaves no run in progress.
            self._made(job, runs, run.name, started)
            if taken.note:
                log_event(log, logging.WARNING, f"{job.domain.name}: {taken.note}", **_fields(job))
            pruning = time.monotonic()
            result = run.retain(job.hv, catalog, taken, clock=lambda: utc(self._clock()))
            self._metrics.duration.labels(operation="prune").observe(time.monotonic() - pruning)
            self._report(job, result)
            return OK

    def _guarded(
        self, job: DomainRun, catalog: Catalog, runs: RunLog, name: str, reason: str
    ) -> JobOutcome:
        """The policy's guard skipped the snapshot: said, logged, counted and kept as the
        run's last error (status shows it) until a snapshot is taken again."""
        text = f"skipped by the policy's guard: {reason}"
        log_event(log, logging.WARNING, f"{job.domain.name}: snapshot {text}", **_fields(job))
        catalog.record_operation(
            Operation(
                at=self._now(),
                uri=job.key.uri,
                operation="create",
                outcome="skipped",
                policy=job.policy.name,
                domain_uuid=job.domain.uuid,
                domain_name=job.domain.name,
                snapshot=name,
                message=text,
            )
        )
        self._metrics.skipped.labels(policy=job.policy.name, guard=_which(reason)).inc()
        runs.finish(job.policy.name, job.domain.uuid, slot=None, error=text, now=self._now())
        return JobOutcome("guarded", text)

    def _prune_held_here(self, job: DomainRun, catalog: Catalog) -> None:
        """Another host took this slot: the policy's snapshots of the domain that this
        host's libvirt holds are pruned by the verdicts of the domain's whole history
        (actions/prune.py), since no other host can delete them."""
        policy = job.policy
        if policy.retention is None or policy.group is not None:
            return
        try:
            rows = catalog.snapshots(domain_uuid=job.domain.uuid, policy=policy.name)
            if not any(r.libvirt_metadata and r.held_by == catalog.host_id for r in rows):
                return
            report = pruning.prune(job.hv, catalog, policy, job.domain, utc(self._clock()))
        except SnapshotdError as exc:
            log_event(
                log,
                logging.WARNING,
                f"{job.domain.name}: its snapshots held here were not pruned: {exc}",
                **_fields(job),
            )
            return
        self._metrics.pruned.labels(policy=policy.name).inc(len(report.deleted))
        log_retention(job.domain.name, report, _fields(job))

    def _adopt(self, job: DomainRun, catalog: Catalog) -> None:
        """The first run of a domain on a connection: what the shared catalog has of it
        from another host is redefined here first (actions/adopt.py)."""
        seen = (job.key.uri, job.domain.uuid)
        if seen in self._adopted:
            return
        try:
            redefined = adopt.adopt(job.hv, catalog, job.domain)
        except SnapshotdError as exc:
            log_event(
                log,
                logging.WARNING,
                f"{job.domain.name}: the catalog's snapshots of it could not be redefined "
                f"here: {exc}",
                **_fields(job),
            )
            return  # tried again at its next run
        self._adopted.add(seen)
        if redefined:
            log_event(
                log,
                logging.INFO,
                f"{job.domain.name}: arrived from another host; redefined {len(redefined)} "
                f"snapshots from the catalog: {', '.join(redefined)}",
                **_fields(job),
            )

    def _failed(
        self,
        job: DomainRun,
        catalog: Catalog,
        runs: RunLog,
        name: str,
        error: SnapshotdError,
    ) -> JobOutcome:
        """A failed run: settled if the link broke under it, else counted and raised."""
        if self._recovery.made_before_the_link_broke(error, job.key, job.hv, catalog, runs, name):
            return OK
        runs.finish(job.policy.name, job.domain.uuid, slot=None, error=str(error), now=self._now())
        self._metrics.failed.labels(policy=job.policy.name).inc()
        # Raised through the pool (a failed job's catalog is not reused) to run()'s line.
        raise error

    def _made(self, job: DomainRun, runs: RunLog, name: str, started: float) -> None:
        """The snapshot is made: count it, finish the run, say so."""
        self._metrics.created.labels(policy=job.policy.name).inc()
        self._metrics.duration.labels(operation="create").observe(time.monotonic() - started)
        slot = int(served(job.policy, job.due, self._clock()).timestamp())
        runs.finish(job.policy.name, job.domain.uuid, slot=slot, error=None, now=self._now())
        ms = int((time.monotonic() - started) * 1000)
        log_event(
            log,
            logging.INFO,
            f"{job.domain.name}: created {name} ({ms} ms)",
            snapshot=name,
            operation="create",
            duration_ms=ms,
            **_fields(job),
        )

    def _now(self) -> int:
        """The wall clock in whole seconds, as the run log records it."""
        return int(self._clock())

    def _report(self, job: DomainRun, result: RunResult) -> None:
        """What a created snapshot adds after retention: metrics and journal lines."""
        fields = _fields(job)
        if result.created is not None:
            self._metrics.last_success.labels(policy=job.policy.name, domain=job.domain.name).set(
                result.created.info.creation_time or time.time()
            )
        if result.pruned is not None:
            self._metrics.pruned.labels(policy=job.policy.name).inc(len(result.pruned.deleted))
            log_retention(job.domain.name, result.pruned, fields)


def _which(reason: str) -> str:
    """The guard a reason comes from, as the skipped metric's label."""
    return "min_free" if "guard.min_free" in reason else "max_chain"


def _fields(job: DomainRun) -> dict[str, object]:
    return {"policy": job.policy.name, "domain": job.domain.name, "uri": job.key.uri}


def log_retention(domain: str, report: PruneReport, fields: dict[str, object]) -> None:
    for deleted in report.deleted:
        log_event(
            log,
            logging.INFO,
            f"{domain}: pruned {deleted}",
            snapshot=deleted,
            operation="delete",
            **fields,
        )
    for name, host in report.elsewhere:
        log_event(
            log,
            logging.INFO,
            f"{domain}: left {name} to {host}: its libvirt holds it, its daemon deletes it",
            snapshot=name,
            operation="delete",
            **fields,
        )
    for level, verb, entries in (
        (logging.ERROR, "could not prune", report.failed),
        (logging.INFO, "kept", report.kept),
    ):
        for name, why in entries:
            log_event(
                log,
                level,
                f"{domain}: {verb} {name}: {why}",
                snapshot=name,
                operation="delete",
                **fields,
            )
