"""One prune: libvirt's snapshots of a domain -> ownership from the catalog ->
retention's verdicts -> libvirt deletes the ones no rule keeps, oldest first.

In a fleet (a shared catalog) the verdicts come from the domain's whole history: the
policy's snapshots that another host's libvirt holds (a shut-off domain defined on
several hosts) are candidates too.  Each host deletes only what its own libvirt holds;
the others' are left to them, and their daemons prune them by the same verdicts at
their next slot of the domain (they take it, or find it claimed: daemon/jobs.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.actions.snapshot import DomainAction, epoch, refresh_rows
from snapshotd.adapters import files
from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.catalog.api import Catalog, SnapshotRow
from snapshotd.core import snapxml
from snapshotd.core.domain import parse_domain
from snapshotd.core.group import NO_GROUP, group_verdicts
from snapshotd.core.model import (
    DomainInfo,
    SnapshotInfo,
)
from snapshotd.core.policy import Policy
from snapshotd.core.retention import FOREIGN, Candidate, Retention, Verdict, evaluate
from snapshotd.errors import SnapshotdError

log = logging.getLogger("snapshotd")


@dataclass(frozen=True, slots=True)
class Owned:
    """One of a domain's snapshots as retention sees it."""

    record: SnapshotRecord | None  # None: catalog-only (NO_METADATA), or held elsewhere
    info: SnapshotInfo
    candidate: Candidate
    row: SnapshotRow | None = None  # the catalog's row, when the snapshot is ours
    elsewhere: str | None = None  # the host whose libvirt holds it, when not this one


@dataclass(slots=True)
class PruneReport:
    policy: str
    domain: str
    verdicts: list[Verdict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, error)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why) despite retention
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # (name, host) to delete
    dry_run: bool = False

    @property
    def to_delete(self) -> list[str]:
        return [v.name for v in self.verdicts if not v.keep]


def snapshots_of(
    hv: HypervisorAPI, catalog: Catalog, policy: Policy, domain: DomainInfo
) -> list[Owned]:
    """The domain's snapshots, each marked owned (by this policy) or not: libvirt's, the
    policy's catalog-only ones (NO_METADATA) that libvirt does not list, and those of
    its that another host's libvirt holds (a shared catalog)."""
    result = []
    listed = set()
    for record in hv.list_snapshots(domain.name):
        info = snapxml.parse_snapshot(record.xml, source=f"snapshot {record.name!r}")
        row = catalog.owner(domain.uuid, record.name, info.creation_time)
        owned = row is not None and row.policy == policy.name
        created = dt.datetime.fromtimestamp(info.creation_time or 0, dt.UTC)
        result.append(Owned(record, info, Candidate(record.name, created, owned), row))
        listed.add(record.name)
    for row in catalog.snapshots(domain_uuid=domain.uuid, policy=policy.name):
        if row.name in listed:
            continue
        elsewhere = row.held_by if row.held_by not in (None, "", catalog.host_id) else None
        if row.libvirt_metadata and elsewhere is None:
            continue  # gone from this libvirt by other hands: not snapshotd's to count
        info = snapxml.parse_snapshot(row.xml, source=f"catalog snapshot {row.name!r}")
        created = dt.datetime.fromtimestamp(row.created_at, dt.UTC)
        candidate = Candidate(row.name, created, True)
        result.append(
            Owned(None, info, candidate, row, elsewhere if row.libvirt_metadata else None)
        )
    return result


Chains = list[tuple[str, list[str]]]  # (disk target, its image and backing files)


def backing_chains(hv: HypervisorAPI, domain: DomainInfo) -> Chains:
    """Each file disk's current backing chain, read once per prune."""
    current = parse_domain(hv.domain_xml(domain.name), domain.state)
    return [
        (disk.target, files.backing_chain(disk.path))
        for disk in current.disks
        if disk.path is not None and disk.source_type == "file"
    ]


def in_use(chains: Chains, domain: DomainInfo, row: SnapshotRow) -> str | None:
    """Why a catalog-only snapshot's files must stay, or None when none is in use.

    A file stays while it is in a disk's current backing chain (an overlay the domain
    writes to, or one that a newer overlay is built on).
    """
    for target, chain in chains:
        for path in row.files:
            if files.absolute(path) in chain:
                shown = " -> ".join(chain)
                return (
                    f"{path} is in {target}'s current backing chain ({shown}); merge it "
                    f"first (virsh blockcommit {domain.name} {target} --active --pivot), "
                    "and the next prune deletes it"
                )
    return None


def _remove_memory_file(info: SnapshotInfo, made: tuple[str, ...]) -> None:
    """libvirt 9.0 leaves an external snapshot's memory file behind when it deletes it.

    The file is removed only when the catalog says snapshotd's own snapshot created
    it; disk overlays are libvirt's to merge and remove.
    """
    path = info.memory_file
    if path is None or path not in made:
        return
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()


def prune(
    hv: HypervisorAPI,
    catalog: Catalog,
    policy: Policy,
    domain: DomainInfo,
    now: dt.datetime,
    *,
    dry_run: bool = False,
) -> PruneReport:
    """Apply the policy's retention to one domain: delete what no rule keeps.

    The verdicts are reached and carried out under the domain's lock, so no other
    snapshotd process creates or deletes one of its snapshots in between.
    """
    report = PruneReport(policy.name, domain.name, dry_run=dry_run)
    retention = policy.retention
    if retention is None:
        return report

    def judge() -> list[Owned]:
        owned = snapshots_of(hv, catalog, policy, domain)
        candidates = [o.candidate for o in owned]
        if policy.group is not None:
            report.verdicts = _group_verdicts(catalog, policy, retention, domain, owned, now=now)
        else:
            report.verdicts = evaluate(retention, candidates, now, policy.schedule.timezone)
        return owned

    if dry_run:
        judge()
        return report
    with catalog.domain_lock(domain.uuid, domain.name):
        owned = judge()
        _hold_here(catalog, domain, owned)
        _delete(DomainAction(hv, catalog, domain, policy.name, now), owned, report)
    return report


def _hold_here(catalog: Catalog, domain: DomainInfo, owned: list[Owned]) -> None:
    """The catalog's rows of the snapshots this libvirt lists name this host as their
    holder (a migration by another host's `snapshotd migrate` left its own name)."""
    for entry in owned:
        row, created = entry.row, entry.info.creation_time
        if entry.record is None or row is None or created is None:
            continue
        if row.held_by != catalog.host_id and catalog.host_id:
            catalog.set_libvirt_metadata(domain.uuid, row.name, created, True)


def prune_group(
    catalog: Catalog,
    policy: Policy,
    members: Sequence[tuple[HypervisorAPI, DomainInfo]],
    now: dt.datetime,
) -> list[PruneReport]:
    """A group policy's retention after one of its runs: each member in turn, each
    on its own host's connection; every member's verdicts come from the same groups
    (a group one member's prune deleted stays in the catalog through the others')."""
    return [prune(hv, catalog, policy, domain, now) for hv, domain in members]


def _group_verdicts(
    catalog: Catalog,
    policy: Policy,
    retention: Retention,
    domain: DomainInfo,
    owned: list[Owned],
    *,
    now: dt.datetime,
) -> list[Verdict]:
    """A group policy's retention decides over its groups, by each group's time: a
    member's snapshot goes only with its group, and one in no group is never deleted."""
    groups = catalog.groups.all(policy.name)
    decided = group_verdicts(
        retention, [(g.name, g.taken_at) for g in groups], now, policy.schedule.timezone
    )
    members = {(m.domain_uuid, g.name, m.created_at): g.name for g in groups for m in g.members}
    verdicts = []
    for entry in owned:
        candidate, created = entry.candidate, entry.info.creation_time
        group = members.get((domain.uuid, candidate.name, created or 0))
        if not candidate.owned:
            verdicts.append(Verdict(candidate.name, True, (FOREIGN,)))
        elif group is None:
            verdicts.append(Verdict(candidate.name, True, (NO_GROUP,)))
        else:
            verdicts.append(decided[group])
    return verdicts


def _delete(action: DomainAction, owned: list[Owned], report: PruneReport) -> None:
    hv, catalog, domain = action.hv, action.catalog, action.domain
    by_name = {o.candidate.name: o for o in owned}
    doomed = sorted(report.to_delete, key=lambda n: by_name[n].candidate.created)
    chains: Chains | None = None  # read when the first catalog-only snapshot needs them
    for name in doomed:
        started = time.monotonic()
        entry = by_name[name]
        if entry.elsewhere is not None:
            report.elsewhere.append((name, entry.elsewhere))
            continue
        if entry.record is None and entry.row is not None:
            if chains is None:
                try:
                    chains = backing_chains(hv, domain)
                except SnapshotdError as exc:
                    report.failed.append((name, str(exc)))
                    continue
            _prune_catalog_only(action, entry.row, chains, report)
            continue
        try:
            hv.delete_snapshot(domain.name, name)
        except SnapshotdError as exc:
            report.failed.append((name, str(exc)))
            action.log("delete", "failed", snapshot=name, message=str(exc), started=started)
            continue
        info = entry.info
        if info.creation_time is not None:
            _remove_memory_file(info, entry.row.files if entry.row is not None else ())
            catalog.mark_deleted(domain.uuid, name, info.creation_time, epoch(action.now))
        report.deleted.append(name)
        action.log("delete", "ok", snapshot=name, message=None, started=started)
    if report.deleted:
        try:  # libvirt 11 hands a deleted external snapshot's files on to its parent
            refresh_rows(hv, catalog, domain)
        except SnapshotdError as exc:  # the deletions stand; the next refresh catches up
            log.warning(
                "%s: the catalog's rows were not refreshed after pruning: %s", domain.name, exc
            )


def _prune_catalog_only(
    action: DomainAction, row: SnapshotRow, chains: Chains, report: PruneReport
) -> None:
    """Delete a catalog-only snapshot: its files, unless the domain still uses one."""
    started = time.monotonic()
    why = in_use(chains, action.domain, row)
    if why is not None:
        report.kept.append((row.name, why))
        action.log("delete", "kept", snapshot=row.name, message=why, started=started)
        return
    files.remove_files(row.files)
    action.catalog.mark_deleted(action.domain.uuid, row.name, row.created_at, epoch(action.now))
    report.deleted.append(row.name)
    action.log(
        "delete", "ok", snapshot=row.name, message="catalog-only: files removed", started=started
    )
