"""A fleet host's journal: what it recorded on its own while the shared catalog could not
be reached, merged into the shared catalog once it answers again (docs/fleet.md).

The journal is a catalog of its own (SQLite, in the state directory's ``offline/``),
used only for domains that run on this host: no other host can snapshot a running
domain, so nothing it records can be a duplicate of another host's.  Merging is safe to
repeat (a snapshot already recorded is skipped), so a merge cut short is finished by the
next one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from snapshotd.catalog import Catalog
from snapshotd.catalog.api import AlreadyRecorded, ClaimedElsewhere, Run


@dataclass(frozen=True, slots=True)
class Merged:
    snapshots: int  # rows the shared catalog did not have yet
    deleted: int  # of those, the ones retention deleted while offline
    operations: int
    runs: int  # streams whose last served slot moved on
    unfinished: int  # runs in progress when the journal was last written (not merged)


def merge(journal: Catalog, shared: Catalog, now: int) -> Merged:
    """Copy ``journal``'s snapshots, operations and served slots into ``shared``."""
    added = deleted = 0
    for row in journal.snapshots(deleted=True):
        try:
            shared.record_snapshot(replace(row, deleted_at=None))
            added += 1
        except AlreadyRecorded:
            pass  # merged before (a merge cut short), or recorded by the other catalog
        if row.deleted_at is not None:
            shared.mark_deleted(row.domain_uuid, row.name, row.created_at, row.deleted_at)
            deleted += 1
    operations = journal.operations(limit=1_000_000)
    for op in reversed(operations):  # oldest first, as they happened
        shared.record_operation(op)
    moved = 0
    for run in journal.runs.all():
        if run.last_slot is not None and _serve(shared, run, run.last_slot, now):
            moved += 1
    unfinished = len(journal.runs.unfinished())
    return Merged(added, deleted, len(operations), moved, unfinished)


def _serve(shared: Catalog, run: Run, slot: int, now: int) -> bool:
    """Record in ``shared`` that ``run`` served ``slot``, unless it knows a later one."""
    known = shared.runs.get(run.policy, run.domain_uuid)
    if known is not None and known.last_slot is not None and known.last_slot >= slot:
        return False
    stream = Run(run.policy, run.domain_uuid, run.uri, run.domain_name)
    try:
        shared.runs.start(stream, "(recorded while offline)", slot, now)
    except ClaimedElsewhere:
        return False  # another host served it meanwhile: its record stands
    shared.runs.finish(
        run.policy,
        run.domain_uuid,
        slot=slot,
        error=None,
        now=run.last_success if run.last_success is not None else now,
    )
    return True
