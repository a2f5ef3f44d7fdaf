"""The daemon's group job: one consistency group's run on a worker thread.

The run is actions/grouprun.py's ``GroupRun``, the one ``take --policy`` executes for a
group policy.  Around it, as daemon/jobs.py does for one domain: each member's run log
(in progress under the group's snapshot name, finished with the slot when the group
was made, whole or partial), the metrics (created, failed, the pause window) and the
journal lines; then each member's retention, which keeps or deletes groups as units.
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
            slot = int(job.due.slot.timestamp())
            for hv, domain in job.members:
                catalog.runs.start(
                    Run(policy.name, domain.uuid, hv.uri, domain.name),
                    run.name,
                    slot,
                    int(now.timestamp()),
                )
            result = run.execute(catalog)
            late = self._release_late(job, catalog, result)
            self._finish(job, catalog, result, late)
            if result.outcome is GroupOutcome.FAILED:
                self._metrics.failed.labels(policy=policy.name).inc()
                return JobOutcome("failed", str(result.error))
            self._retain(job, catalog, result)
        return OK

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
