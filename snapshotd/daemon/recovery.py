"""Runs left unfinished, settled with libvirt: after a restart, and after a lost connection.

A run is marked in progress in the catalog's run log before its snapshot is asked for,
and finished after.  One that is still in progress when the daemon starts was cut off
(kill -9, a watchdog restart); one whose snapshot call failed because libvirtd went
away may or may not have been made.  Either way libvirt is asked once it answers:

* it has the snapshot: it is adopted into the catalog (once libvirt is done making it)
  and the run's slot counts as served;
* it has not: the run is closed as interrupted, and the schedule's catch-up (or the
  job's retry) takes the slot again.

So a slot never gets two snapshots, and nothing is deleted.  Until a connection's
unfinished runs are settled (``Settled``), the loop dispatches none of their keys.
Before them, what a killed process held is let go: the members of a group it paused or
froze, and the migrations from this connection a killed ``snapshotd migrate`` of this
host left half-way (finished or rolled back, actions/migrate.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from snapshotd.actions import migrate, snapshot, strays
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import Catalog, Run, RunLog
from snapshotd.catalog.api import HoldRow
from snapshotd.core.model import DomainState
from snapshotd.daemon.catalogs import CatalogFactory, CatalogPlace
from snapshotd.daemon.events import EventQueue, Settled
from snapshotd.daemon.link import Link
from snapshotd.daemon.runs import Key, LinkedHypervisor
from snapshotd.errors import LibvirtError, SnapshotdError

log = logging.getLogger("snapshotd")

RECONNECT_WAIT = 60.0  # how long a job cut off by a lost connection waits for the next
SETTLE_POLL = 0.5  # seconds between looks at a job a previous process left running


class Recovery:
    """Settles unfinished runs; shares the loop's links, clock and settings."""

    def __init__(
        self,
        *,
        events: EventQueue,
        links: Mapping[str, Link],
        catalogs: CatalogFactory,
        place: Callable[[], CatalogPlace],
        clock: Callable[[], float],
        operation_timeout: Callable[[], float],
    ) -> None:
        self._events = events
        self._links = links  # the loop's own dict: links it adds later are seen
        self._catalogs = catalogs
        self._place = place
        self._clock = clock
        self._operation_timeout = operation_timeout

    def start(self, uri: str, hv: LinkedHypervisor) -> None:
        """Reconcile ``uri``'s unfinished runs on a thread; ``Settled(uri)`` when done."""
        threading.Thread(
            target=self.reconcile, args=(uri, hv), name=f"reconcile {uri}", daemon=True
        ).start()

    def reconcile(self, uri: str, hv: LinkedHypervisor) -> None:
        """Settle runs a previous process left unfinished (kill -9, watchdog restart).

        If libvirt made the snapshot, it is adopted into the catalog and its slot
        counts as served; if not, the run is closed as interrupted and the schedule's
        catch-up takes it again.  Nothing is deleted.
        """
        try:
            with self._place().open(self._catalogs) as catalog:
                # The groups a killed process was holding members of: never decided.
                interrupted = {(h.policy, h.name) for h in catalog.groups.held()}
                self.release_holds(uri, hv, catalog)  # before anything else
                self.settle_moves(uri, hv, catalog)
                runs = catalog.runs
                for run in runs.unfinished():
                    if run.uri != uri or run.in_progress is None:
                        continue
                    if (run.policy, run.in_progress) in interrupted:
                        self.undo_group_member(hv, catalog, run, run.in_progress)
                    else:
                        self.settle(hv, catalog, runs, run, run.in_progress)
                self.report_strays(uri, hv, catalog)
        except Exception:
            log.exception("%s: reconciling unfinished runs failed", uri)
        finally:
            self._events.put(Settled(uri))

    def settle_moves(self, uri: str, hv: LinkedHypervisor, catalog: Catalog) -> None:
        """Finish or roll back the migrations from ``uri`` that a killed ``snapshotd
        migrate`` of this host left: the snapshots' metadata goes where the domain is."""
        try:
            done = migrate.settle_left(hv, _opened, catalog, now=lambda: int(self._clock()))
        except SnapshotdError as exc:
            log.warning(
                "%s: an interrupted migration was not settled: %s; run the same "
                "snapshotd migrate again to settle it",
                sanitize_uri(uri),
                exc,
            )
            return
        for line in done:
            log.info("%s", line)

    def release_holds(self, uri: str, hv: LinkedHypervisor, catalog: Catalog) -> None:
        """Resume (or thaw) each member of ``uri`` a group run held still when its
        process was killed: the catalog wrote the hold before the member was touched."""
        for row in catalog.groups.held():
            if row.uri != uri:
                continue
            try:
                done = _release(hv, row)
            except SnapshotdError as exc:
                log.error(
                    "%s: group %s held it still (snapshot %s) when the previous snapshotd "
                    "stopped, and it could not be released: %s; check it with `virsh "
                    "domstate %s`",
                    row.domain_name, row.policy, row.name, exc, row.domain_name,
                )  # fmt: skip
                continue
            catalog.groups.release(row.domain_uuid)
            log.warning(
                "%s: %s: group %s held it still (snapshot %s, %s) when the previous "
                "snapshotd process stopped",
                row.domain_name, done, row.policy, row.name, row.hold,
            )  # fmt: skip

    def undo_group_member(
        self, hv: LinkedHypervisor, catalog: Catalog, run: Run, name: str
    ) -> None:
        """A member's run of a group the previous process was killed in the middle of:
        the group was never recorded, so what libvirt made of it is deleted again (as
        the run would have rolled back), never adopted alone; the slot is taken again."""
        now = int(self._clock())
        runs = catalog.runs
        try:
            if name in {r.name for r in hv.list_snapshots(run.domain_uuid)}:
                hv.delete_snapshot(run.domain_uuid, name)
                what = "its snapshot was deleted again"
            else:
                what = "libvirt had not made its snapshot"
            row = catalog.find(run.domain_uuid, name)  # recorded before the kill
            if row is not None:
                catalog.mark_deleted(run.domain_uuid, name, row.created_at, now)
        except SnapshotdError as exc:
            log.error(
                "%s: group %s was interrupted (snapshot %s) and its snapshot could not be "
                "deleted again: %s; delete it with `virsh snapshot-delete %s %s`",
                run.domain_name, run.policy, name, exc, run.domain_name, name,
            )  # fmt: skip
            runs.finish(run.policy, run.domain_uuid, slot=None, error=str(exc), now=now)
            return
        log.warning(
            "%s: group %s was interrupted when the previous snapshotd process stopped "
            "(snapshot %s): %s; catch-up takes the group again",
            run.domain_name, run.policy, name, what,
        )  # fmt: skip
        runs.finish(
            run.policy,
            run.domain_uuid,
            slot=None,
            error=f"interrupted group run ({what})",
            now=now,
        )

    def release_after_the_link_broke(
        self, uri: str, hv: LinkedHypervisor, catalog: Catalog, domain_uuid: str
    ) -> str:
        """A member a group run could not release (libvirtd restarted under it, the
        link to its host broke): released through the link's next connection, waited
        for up to RECONNECT_WAIT.  What was done; raises SnapshotdError when it could
        not be (its hold stays in the catalog: the next start releases it)."""
        row = next((r for r in catalog.groups.held() if r.domain_uuid == domain_uuid), None)
        if row is None:
            return "already released"
        fresh = hv if hv.alive() else self._next_connection(uri, hv)
        if fresh is None:
            raise SnapshotdError(
                f"libvirt at {sanitize_uri(uri)} did not answer again within {RECONNECT_WAIT:g} s"
            )
        done = _release(fresh, row)
        catalog.groups.release(row.domain_uuid)
        return done

    def report_strays(self, uri: str, hv: LinkedHypervisor, catalog: Catalog) -> None:
        """Warn of each overlay an interrupted libvirt operation left beside the images
        of a domain snapshotd has snapshots of (actions/strays.py); delete nothing."""
        domains = {r.domain_uuid for r in catalog.snapshots() if r.uri == uri}
        for uuid in sorted(domains):
            try:
                domain = hv.domain(uuid)
                found = strays.find_strays(hv, catalog, domain)
            except SnapshotdError as exc:
                log.debug("%s: no look for stray overlays of %s: %s", uri, uuid, exc)
                continue
            for stray in found:
                log.warning(
                    "%s: %s is an overlay of %s that no disk, snapshot or catalog entry uses "
                    "(an interrupted libvirt operation, such as a libvirtd crash during a "
                    "snapshot or a revert, leaves one); snapshotd deleted nothing",
                    domain.name,
                    stray.path,
                    stray.backing,
                )

    def made_before_the_link_broke(  # noqa: PLR0917 - the job's state, passed once
        self,
        exc: SnapshotdError,
        key: Key,
        hv: LinkedHypervisor,
        catalog: Catalog,
        runs: RunLog,
        name: str,
    ) -> bool:
        """A snapshot call cut off by a lost connection (libvirtd restarted under it).

        Whether libvirt made the snapshot cannot be known until libvirtd answers again,
        so this waits (up to RECONNECT_WAIT) for the Link's new connection and settles
        the run as a restart would: adopted when libvirt has the snapshot (True), closed
        as interrupted when not (False: the error stands and the retry takes the slot,
        so a slot never gets two snapshots).
        """
        if not (isinstance(exc, LibvirtError) and exc.transient) or hv.alive():
            return False
        fresh = self._next_connection(key.uri, hv)
        run = runs.get(key.policy, key.uuid)
        if fresh is None or run is None or run.in_progress != name:
            return False
        self.settle(fresh, catalog, runs, run, name)
        return catalog.find(key.uuid, name) is not None

    def _next_connection(self, uri: str, broken: LinkedHypervisor) -> LinkedHypervisor | None:
        """The link's connection after ``broken``, once it is up (None after RECONNECT_WAIT)."""
        link = self._links.get(uri)
        deadline = time.monotonic() + RECONNECT_WAIT
        while link is not None and time.monotonic() < deadline:
            candidate = link.hypervisor
            if candidate is not None and candidate is not broken and candidate.alive():
                return candidate
            time.sleep(0.2)
        return None

    def settle(
        self, hv: LinkedHypervisor, catalog: Catalog, runs: RunLog, run: Run, name: str
    ) -> None:
        """Close ``run`` (whose snapshot ``name`` was asked for) as libvirt has it now."""
        now = int(self._clock())
        try:
            names = {r.name for r in hv.list_snapshots(run.domain_uuid)}
        except SnapshotdError as exc:
            runs.finish(run.policy, run.domain_uuid, slot=None, error=str(exc), now=now)
            return
        if name not in names:
            log.warning(
                "%s: snapshot %s was interrupted before libvirt made it; catch-up takes it again",
                run.domain_name,
                name,
            )
            runs.finish(
                run.policy,
                run.domain_uuid,
                slot=None,
                error=f"snapshot {name} was interrupted",
                now=now,
            )
            return
        self._wait_until_made(hv, run, name)
        snapshot.adopt(hv, catalog, run.domain_uuid, name, policy=run.policy)
        log.info("%s: snapshot %s was made before an interruption; recorded", run.domain_name, name)
        runs.finish(run.policy, run.domain_uuid, slot=run.in_progress_slot, error=None, now=now)

    def _wait_until_made(self, hv: LinkedHypervisor, run: Run, name: str) -> None:
        """libvirt lists a snapshot as soon as it starts making it: one still being made
        (its job outlived the process that asked) is recorded once it is complete, or,
        after operation_timeout, as libvirt describes it then."""
        waited_until = time.monotonic() + self._operation_timeout()
        while hv.has_job(run.domain_uuid):
            if time.monotonic() > waited_until:
                log.warning(
                    "%s: libvirt is still busy with the domain after %d s; recording "
                    "snapshot %s as libvirt describes it now",
                    run.domain_name,
                    int(self._operation_timeout()),
                    name,
                )
                return
            time.sleep(SETTLE_POLL)


def _release(hv: LinkedHypervisor, row: HoldRow) -> str:
    """Resume or thaw a held member; what was done."""
    if row.hold == "freeze":
        return "thawed" if hv.thaw(row.domain_uuid) else "sent a thaw (unconfirmed)"
    if hv.domain_state(row.domain_uuid) is DomainState.PAUSED:
        hv.resume(row.domain_uuid)
        return "resumed"
    return "found not paused"


@contextlib.contextmanager
def _opened(uri: str) -> Iterator[Hypervisor]:
    """A connection of its own to a migration's destination, for as long as it takes."""
    hv = Hypervisor.open(uri)
    try:
        yield hv
    finally:
        hv.close()
