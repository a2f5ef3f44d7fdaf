"""What a daemon of a fleet does besides its jobs (snapshotd.yaml's ``catalog:``): it
reports itself to the shared catalog (the hosts table, every HEARTBEAT seconds) and,
once the catalog answers again, merges the journal it kept while it was away
(snapshotd.actions.journal).  The loop calls ``tick`` after each pass's dispatch."""

from __future__ import annotations

import logging
import os
import shutil

from snapshotd import __version__
from snapshotd.actions import journal
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import RunLog
from snapshotd.catalog.api import HostRow
from snapshotd.config.settings import Settings
from snapshotd.daemon.catalogs import CatalogPlace, CatalogPool, Journal

log = logging.getLogger("snapshotd")

HEARTBEAT = 15.0  # seconds between two reports of this host to a shared catalog


class FleetDuty:
    """The heartbeat and the journal's merge; nothing for a catalog of one host."""

    def __init__(self, pool: CatalogPool, journal_users: Journal) -> None:
        self._pool = pool
        self._journal = journal_users
        self.host_id = ""  # the catalog's, once the daemon opened it
        self._beat_at = -HEARTBEAT

    def tick(self, settings: Settings | None, runs: RunLog, now: float) -> None:
        """Raises CatalogUnavailable when the shared catalog does not answer."""
        if settings is None or settings.catalog is None:
            return
        self._heartbeat(settings, runs, now)
        self._merge_journal(CatalogPlace.of(settings), now)

    def _heartbeat(self, settings: Settings, runs: RunLog, now: float) -> None:
        if now < self._beat_at + HEARTBEAT:
            return
        uris = tuple(sanitize_uri(u) for u in settings.connect)
        runs.seen(HostRow(self.host_id, int(now), os.getpid(), __version__, uris))
        self._beat_at = now

    def _merge_journal(self, place: CatalogPlace, now: float) -> None:
        """What this host recorded while the shared catalog was away, into it, once no
        job writes to the journal; then the journal goes."""
        if not place.journal_exists():
            return
        with self._journal.idle() as idle:
            if not idle:
                return
            with self._pool.borrow(place) as shared, self._pool.borrow(place.journal) as local:
                merged = journal.merge(local, shared, int(now))
            self._pool.discard(place.journal)
            shutil.rmtree(place.journal.state_dir)
        log.info(
            "the shared catalog has what this host recorded without it: %d snapshots "
            "(%d of them deleted since), %d operations, %d streams' last slots%s",
            merged.snapshots,
            merged.deleted,
            merged.operations,
            merged.runs,
            f"; {merged.unfinished} runs in progress left to the next start"
            if merged.unfinished
            else "",
        )
