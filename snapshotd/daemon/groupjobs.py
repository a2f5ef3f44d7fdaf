"""The daemon's group job: one consistency group's run on a worker thread.

The run is actions/grouprun.py's ``GroupRun``, the one ``take --policy`` executes for a
group policy.  Around it, as daemon/jobs.py does for one domain: each member's run log
(in progress under the group's snapshot name, finished with the slot when the group
was made, whole or partial), the metrics (created, failed, the pause window) and the
journal lines; then each member's retention, which keeps or deletes groups as units.

In a fleet every host with the policy file sees the group (its connections reach every
member's libvirt); the group's slot is claimed first, so one host runs the whole group
and the others leave the slot ("elsewhere"), before any member is touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from snapshotd.actions import prune as pruning
from snapshotd.actions.grouprun import GroupOutcome, GroupResult, GroupRun
from snapshotd.adapters.logs import log_event
from snapshotd.adapters.metrics import Metrics
from snapshotd.catalog import Catalog, Run
from snapshotd.catalog.api import CatalogUnavailable, ClaimedElsewhere
from snapshotd.daemon.catalogs import CatalogPlace, CatalogPool
from snapshotd.daemon.events import OK, EventQueue, JobDone, JobOutcome
from snapshotd.daemon.jobs import log_retention
from snapshotd.daemon.recovery import Recovery
from snapshotd.daemon.runs import GroupJobRun, served, utc
from snapshotd.errors import SnapshotdError

log = logging.getLogger("snapshotd")


class GroupWorker:
    """Runs ``GroupJobRun``s, each on a thread of its own."""

    def __init__(
        self,
        *,
        events: EventQueue,
        pool: CatalogPool,
        metrics: Metrics,
        place: Callable[[], CatalogPlace],
        clock: Callable[[], float],
        recovery: Recovery,
    ) -> None:
        self._events = events
        self._pool = pool
        self._metrics = metrics
        self._place = place
        self._clock = clock
        self._recovery = recovery

    def start(self, job: GroupJobRun) -> None:
        threading.Thread(
            target=self.run, args=(job,), name=f"group {job.policy.name}", daemon=True
        ).start()

    def run(self, job: GroupJobRun) -> None:
        """One group run and its retention; ends with ``JobDone``."""
        outcome: JobOutcome
        try:
            outcome = self._run(job)
        except Exception as exc:
            log.exception("group %s: the run crashed", job.policy.name)
            outcome = JobOutcome("failed", f"internal error: {exc}")
        self._events.put(JobDone(job.key, job.due, outcome))

    def _run(self, job: GroupJobRun) -> JobOutcome:
        policy = job.policy
        with self._pool.borrow(self._place()) as catalog:
            now = utc(self._clock())
            run = GroupRun(policy, list(job.members), now)
            started = self._start(job, catalog, run.name, int(now.timestamp()))
            if started is not None:
                return started
            result = run.execute(catalog)
            late = self._release_late(job, catalog, result)
            self._finish(job, catalog, result, late)
            if result.outcome is GroupOutcome.FAILED:
                self._metrics.failed.labels(policy=policy.name).inc()
                return JobOutcome("failed", str(result.error))
            self._retain(job, catalog, result)
        return OK

    def _start(self, job: GroupJobRun, catalog: Catalog, name: str, now: int) -> JobOutcome | None:
        """The group's slot claimed, each member's run marked in progress; the outcome
        instead when the group is not this host's to run now (nothing is left marked)."""
        policy = job.policy
        slot = int(job.due.slot.timestamp())
        started: list[str] = []
        try:
            catalog.runs.claim_group(policy.name, slot, now)
            for hv, domain in job.members:
                catalog.runs.start(
                    Run(policy.name, domain.uuid, hv.uri, domain.name), name, slot, now
                )
                started.append(domain.uuid)
        except ClaimedElsewhere as exc:
            log.info("%s", exc)  # the other host runs the group: nothing went wrong
            for uuid in started:
                catalog.runs.finish(policy.name, uuid, slot=None, error=None, now=now)
            return JobOutcome("elsewhere", str(exc))
        except CatalogUnavailable as exc:
            log_event(
                log,
                logging.ERROR,
                f"group {policy.name}: not taken, the shared catalog cannot be reached "
                f"(another host may take it): {exc}",
                policy=policy.name,
                operation="create",
            )
            return JobOutcome("transient", str(exc))
        return None

    def _release_late(
        self, job: GroupJobRun, catalog: Catalog, result: GroupResult
    ) -> dict[str, tuple[bool, str]]:
        """Each member the run could not release (its connection broke: libvirtd
        restarted, the link to its host was cut) released once libvirt answers again;
        {uuid: (released, what happened)}."""
        hvs = {domain.uuid: hv for hv, domain in job.members}
        late: dict[str, tuple[bool, str]] = {}
        for m in result.members:
            if m.release_error is None:
                continue
            try:
                done = self._recovery.release_after_the_link_broke(
                    m.uri, hvs[m.domain.uuid], catalog, m.domain.uuid
                )
            except SnapshotdError as exc:
                late[m.domain.uuid] = (False, f"{m.release_error}; retried: {exc}")
                continue
            late[m.domain.uuid] = (True, f"{done} once libvirt answered again ({m.release_error})")
        return late

    def _finish(
        self,
        job: GroupJobRun,
        catalog: Catalog,
        result: GroupResult,
        late: dict[str, tuple[bool, str]],
    ) -> None:
        """Each member's run log, the metrics and the journal line of the group."""
        policy = job.policy
        made = result.outcome is not GroupOutcome.FAILED
        slot = int(served(policy, job.due, self._clock()).timestamp()) if made else None
        error = None if result.error is None else str(result.error)
        for _, domain in job.members:
            catalog.runs.finish(
                policy.name, domain.uuid, slot=slot, error=error, now=int(self._clock())
            )
        if result.pause is not None:
            self._metrics.group_pause.labels(policy=policy.name).observe(result.pause)
            self._metrics.group_last_pause.labels(policy=policy.name).set(result.pause)
        pause = "" if result.pause is None else f", held still {result.pause * 1000:.0f} ms"
        members = ", ".join(m.domain.name for m in result.members)
        fields: dict[str, object] = {"policy": policy.name, "snapshot": result.name}
        if made:
            for m in result.members:
                if m.created is not None and not m.rolled_back:
                    self._metrics.created.labels(policy=policy.name).inc()
                    when = m.created.info.creation_time or self._clock()
                    self._metrics.last_success.labels(policy=policy.name, domain=m.domain.name).set(
                        when
                    )
            level = logging.INFO if result.outcome is GroupOutcome.CREATED else logging.ERROR
            text = f"group {policy.name}: {result.outcome.value} {result.name} of {members}{pause}"
            log_event(log, level, text, operation="create", **fields)
        else:
            text = f"group {policy.name}: snapshot failed: {result.error}{pause}"
            log_event(log, logging.ERROR, text, operation="create", **fields)
        if result.note:
            log_event(log, logging.WARNING, f"group {policy.name}: {result.note}", **fields)
        for m in result.members:
            if m.release_error:
                released, what = late.get(m.domain.uuid, (False, m.release_error))
                level = logging.WARNING if released else logging.CRITICAL
                text = f"{m.domain.name}: group {policy.name}: {what}"
                log_event(log, level, text, domain=m.domain.name, **fields)

    def _retain(self, job: GroupJobRun, catalog: Catalog, result: GroupResult) -> None:
        policy = job.policy
        if policy.retention is None:
            return
        hvs = {domain.uuid: hv for hv, domain in job.members}
        made = [(hvs[m.domain.uuid], m.domain) for m in result.members]
        reports = pruning.prune_group(catalog, policy, made, utc(self._clock()))
        for m, report in zip(result.members, reports, strict=True):
            self._metrics.pruned.labels(policy=policy.name).inc(len(report.deleted))
            fields: dict[str, object] = {
                "policy": policy.name,
                "domain": m.domain.name,
                "uri": m.uri,
            }
            log_retention(m.domain.name, report, fields)
