"""migrate: a domain and its snapshot metadata to another host (docs/fleet.md).

libvirt refuses to migrate a domain that has snapshot metadata, so the metadata goes
through the catalog: kept there (the ``moves`` record, durable before anything is
touched), removed from the source (METADATA_ONLY: the snapshots' data stays, on storage
both hosts reach), the domain migrated, the hierarchy redefined on the destination
(parents first, the current snapshot kept), the record removed.  A migration libvirt
refuses or fails is rolled back: the metadata is redefined on the source.  A
``migrate`` killed half-way leaves its record; running the same ``migrate`` again
finishes it where the domain is (redefined on the destination if it got there, else
back on the source) before anything else, and so does the daemon of the host that ran
it when it starts (``settle_left``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace

from snapshotd.actions import metadata
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import Catalog
from snapshotd.catalog.api import MoveRow, Operation
from snapshotd.core import snapxml
from snapshotd.core.hierarchy import Item
from snapshotd.core.model import DomainInfo
from snapshotd.core.plan import ONLINE_STATES
from snapshotd.errors import NotFoundError, RequestError, SnapshotdError


@dataclass(frozen=True, slots=True)
class Moved:
    domain: str
    target: str  # the destination's URI, without secrets
    redefined: tuple[str, ...]  # on the destination, parents first
    current: str | None
    steps: tuple[str, ...]  # what was done, in order, as shown and logged


class MigrationFailed(SnapshotdError):
    """libvirt did not migrate the domain; its metadata is back on the source."""


@dataclass
class _Run:
    source: HypervisorAPI
    target: HypervisorAPI
    catalog: Catalog
    now: Callable[[], int]
    steps: list[str]

    def step(self, domain: DomainInfo, what: str, outcome: str = "ok") -> None:
        self.steps.append(what)
        self.catalog.record_operation(
            Operation(
                at=self.now(),
                uri=self.source.uri,
                operation="migrate",
                outcome=outcome,
                domain_uuid=domain.uuid,
                domain_name=domain.name,
                message=what,
            )
        )


def migrate(
    source: HypervisorAPI,
    target: HypervisorAPI,
    domain_name: str,
    catalog: Catalog,
    *,
    live: bool,
    persistent: bool,
    undefine_source: bool,
    now: Callable[[], int],
    migrate_uri: str | None = None,
    unsafe: bool = False,
) -> Moved:
    """Migrate the domain and its snapshot metadata from ``source`` to ``target``."""
    left = [m for m in catalog.runs.moves() if m.domain_name == domain_name]
    try:
        domain = source.domain(domain_name)
    except NotFoundError:
        if not left:
            raise
        domain = target.domain(left[0].domain_uuid)  # it got there, and left the source
    run = _Run(source, target, catalog, now, [])
    with catalog.domain_lock(domain.uuid, domain.name):
        pending = [m for m in catalog.runs.moves() if m.domain_uuid == domain.uuid]
        if pending and _settle(run, domain, pending[0]):
            return Moved(
                domain.name, sanitize_uri(target.uri), (), pending[0].current, tuple(run.steps)
            )
        records = source.list_snapshots(domain.name)  # parents first
        snapshots = tuple(
            (r.name, source.snapshot_xml(domain.name, r.name, secure=True)) for r in records
        )
        current = next((r.name for r in records if r.is_current), None)
        items = _items(source.uri, snapshots)
        metadata.check_machine_types(target, items)
        move = MoveRow(
            domain.uuid, domain.name, source.uri, target.uri, "exported", snapshots, current,
            now(),
        )  # fmt: skip
        catalog.runs.begin_move(move)
        run.step(domain, f"kept the metadata of {len(snapshots)} snapshots in the catalog")
        for record in reversed(records):  # children first
            source.delete_snapshot(domain.name, record.name, metadata_only=True)
        catalog.runs.move_step(domain.uuid, "removed")
        run.step(domain, f"removed their metadata from {sanitize_uri(source.uri)}")
        catalog.runs.move_step(domain.uuid, "migrating")
        try:
            source.migrate(
                domain.name,
                target,
                live=live,
                persistent=persistent,
                undefine_source=undefine_source,
                migrate_uri=migrate_uri,
                unsafe=unsafe,
            )
        except SnapshotdError as exc:
            _redefine(source, domain.uuid, move)
            catalog.runs.end_move(domain.uuid)
            run.step(domain, f"migration failed: {exc}", "failed")
            run.step(domain, f"rolled back: the metadata is on {sanitize_uri(source.uri)} again")
            raise MigrationFailed(
                f"{domain.name}: libvirt did not migrate it to {sanitize_uri(target.uri)}: "
                f"{exc}; its snapshot metadata is back on {sanitize_uri(source.uri)}"
            ) from exc
        catalog.runs.move_step(domain.uuid, "migrated")
        run.step(domain, f"migrated to {sanitize_uri(target.uri)}")
        redefined = _redefine(target, domain.uuid, move)
        catalog.runs.end_move(domain.uuid)
        run.step(domain, f"redefined {len(redefined)} snapshots on {sanitize_uri(target.uri)}")
    return Moved(domain.name, sanitize_uri(target.uri), redefined, current, tuple(run.steps))


def settle_left(
    source: HypervisorAPI,
    opened: Callable[[str], AbstractContextManager[HypervisorAPI]],
    catalog: Catalog,
    *,
    now: Callable[[], int],
) -> list[str]:
    """Finish or roll back the migrations from ``source`` that a ``migrate`` of this
    host left when it was killed (``opened(uri)``: a connection to the destination);
    what was done, one line per domain.  One whose domain lock is held is under way:
    left to its ``migrate``."""
    done = []
    for move in catalog.runs.moves():
        if move.source_uri != source.uri or move.host_id not in (None, catalog.host_id):
            continue
        with opened(move.target_uri) as target:
            run = _Run(source, target, catalog, now, [])
            try:
                domain = source.domain(move.domain_uuid)
            except NotFoundError:
                domain = target.domain(move.domain_uuid)  # it got there, and left the source
            with ExitStack() as held:
                try:
                    held.enter_context(catalog.domain_lock(domain.uuid, domain.name, wait=0))
                except SnapshotdError:
                    done.append(f"{domain.name}: a migrate of it is under way; left to it")
                    continue
                still = [m for m in catalog.runs.moves() if m.domain_uuid == domain.uuid]
                if still:
                    _settle(run, domain, still[0])
                    done.append(f"{domain.name}: {run.steps[-1]}")
    return done


def _items(uri: str, snapshots: Sequence[tuple[str, str]]) -> list[Item]:
    found = []
    for name, xml in snapshots:
        src = f"{sanitize_uri(uri)}: {name}"
        found.append(Item(src, snapxml.parse_snapshot(xml, source=src), xml))
    return found


def _redefine(hv: HypervisorAPI, uuid: str, move: MoveRow) -> tuple[str, ...]:
    """The move's snapshots defined on ``hv``'s domain again, parents first."""
    if not move.snapshots:
        return ()
    domain = hv.domain(uuid)
    items = _items(move.source_uri, move.snapshots)
    plan = metadata.check_import(hv, domain, items, current=move.current)
    return metadata.run_import(hv, domain, plan)


def _settle(run: _Run, domain: DomainInfo, move: MoveRow) -> bool:
    """Finish a migration a killed ``migrate`` left: its metadata goes where the domain is
    now (the destination when it got there, else back to the source).  True when that
    finished the migration asked for."""
    if move.target_uri != run.target.uri or move.source_uri != run.source.uri:
        raise RequestError(
            f"{domain.name}: an interrupted migration from {sanitize_uri(move.source_uri)} to "
            f"{sanitize_uri(move.target_uri)} is recorded; run that migrate again to finish it"
        )
    there = run.target.domain_state(domain.uuid)
    here = run.source.domain_state(domain.uuid)
    arrived = move.step == "migrated" or (
        move.step == "migrating" and there is not None and (there in ONLINE_STATES or here is None)
    )
    hv = run.target if arrived else run.source
    defined = {r.name for r in hv.list_snapshots(domain.name)}
    missing = tuple(s for s in move.snapshots if s[0] not in defined)
    if missing:
        _redefine(hv, domain.uuid, replace(move, snapshots=missing))
    run.catalog.runs.end_move(domain.uuid)
    if arrived:
        run.step(domain, f"finished an interrupted migration: {len(missing)} snapshots "
                 f"redefined on {sanitize_uri(move.target_uri)}")  # fmt: skip
        return True
    run.step(domain, f"rolled back an interrupted migration: {len(missing)} snapshots "
             f"redefined on {sanitize_uri(move.source_uri)}")  # fmt: skip
    return False
