"""Operations: the pure core's decisions carried out through the edges.

One snapshot: plan -> XML (checked against libvirt's schema) -> files checked ->
libvirt creates it -> the catalog records it.  One prune: libvirt's snapshots of a
domain -> ownership from the catalog -> retention's verdicts -> libvirt deletes the
ones no rule keeps, oldest first.  The CLI and the daemon both work through here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lxml import etree

from snapshotd.core import snapxml
from snapshotd.core.domain import parse_domain
from snapshotd.core.model import (
    CreateFlag,
    DomainInfo,
    DomainState,
    SnapshotInfo,
    SnapshotRequest,
    SnapshotSpec,
)
from snapshotd.core.plan import Plan, plan_snapshot
from snapshotd.core.policy import BeforeFailure, Policy, Quiesce
from snapshotd.core.retention import Candidate, Verdict, evaluate
from snapshotd.core.schedule import utc_text
from snapshotd.edge import files, hooks, statefile
from snapshotd.edge.catalog import Catalog, Operation, SnapshotRow
from snapshotd.edge.hypervisor import Hypervisor, SnapshotRecord, agent_unavailable
from snapshotd.errors import LibvirtError, NotFoundError, RequestError, SnapshotdError

SCHEMA = Path(snapxml.SCHEMA_PATH)


@functools.cache
def _schema() -> etree.RelaxNG | None:
    return snapxml.load_schema(str(SCHEMA)) if SCHEMA.exists() else None


def render_checked(spec: SnapshotSpec) -> str:
    """The snapshot XML for a plan; it must satisfy libvirt's own schema before it is sent."""
    xml = snapxml.render_spec(spec)
    schema = _schema()
    if schema is not None:
        problems = snapxml.validate(xml, schema)
        if problems:
            raise SnapshotdError(
                "internal error: the generated snapshot XML does not match libvirt's schema "
                f"({SCHEMA}): {'; '.join(problems)}"
            )
    return xml


@dataclass(frozen=True, slots=True)
class Created:
    """A snapshot that libvirt made and the catalog recorded."""

    plan: Plan
    info: SnapshotInfo
    note: str | None = None  # e.g. why quiesce was dropped


def _epoch(now: dt.datetime) -> int:
    return int(now.timestamp())


def create(
    hv: Hypervisor,
    catalog: Catalog,
    domain: DomainInfo,
    request: SnapshotRequest,
    *,
    policy: str | None,
    now: dt.datetime,
) -> Created:
    """Plan, check, create and record one snapshot.  Raises SnapshotdError on refusal.

    Holds the domain's lock (shared with other snapshotd processes on the same state
    directory) from the name check to the catalog record.
    """
    plan = plan_snapshot(domain, request)
    with statefile.domain_lock(catalog.state_dir, domain.uuid, domain.name):
        # The name first: a name already taken (perhaps by the process this one waited
        # for) is the refusal that holds whatever state the domain is in now.
        _refuse_taken_name(hv, catalog, domain, plan.spec.name)
        _still_as_planned(hv, catalog, domain, plan.spec.name, policy=policy, now=now)
        return _create(hv, catalog, domain, plan, policy=policy, now=now)


class DomainChanged(RequestError):
    """The domain was shut down, started or undefined after its snapshot was planned.

    Nothing was changed: the snapshot is skipped, and the next due time plans it anew.
    """


def _still_as_planned(
    hv: Hypervisor,
    catalog: Catalog,
    domain: DomainInfo,
    name: str,
    *,
    policy: str | None,
    now: dt.datetime,
) -> None:
    """Read the domain again under its lock, right before libvirt is asked.

    The plan was made from a state read earlier (the daemon's domain list, or before a
    before hook ran); a snapshot planned for a running domain cannot be taken of one
    that has stopped since, nor of one that is gone.
    """
    started = time.monotonic()
    state = hv.domain_state(domain.uuid)
    if state is domain.state:
        return
    if state is None:
        why = "was undefined"
    else:
        why = f"changed from {domain.state.value} to {state.value}"
    message = (
        f"domain {domain.name!r} ({domain.uuid}) {why} after snapshot {name!r} was "
        "planned: skipped, nothing was changed; the next due time plans it again"
    )
    _log(
        catalog,
        hv,
        "create",
        "skipped",
        policy=policy,
        domain=domain,
        snapshot=name,
        message=message,
        started=started,
        now=now,
    )
    raise DomainChanged(message)


def _refuse_taken_name(hv: Hypervisor, catalog: Catalog, domain: DomainInfo, name: str) -> None:
    """A snapshot name is never reused: libvirt would refuse it half-way, and the
    catalog would hold two snapshots by one name."""
    try:
        created = hv.snapshot_created(domain.uuid, name)
    except NotFoundError:
        return  # the domain is gone: _still_as_planned says so
    row = catalog.find(domain.uuid, name)
    if created is None and row is None:
        return
    when = created if created is not None else row.created_at if row is not None else 0
    where = "in libvirt" if created is not None else "in snapshotd's catalog (catalog-only)"
    raise RequestError(
        f"domain {domain.name!r} already has a snapshot named {name!r} {where}, created "
        f"{utc_text(when)}; snapshotd never replaces a snapshot: choose another name, or "
        "delete that one first"
    )


def _create(
    hv: Hypervisor,
    catalog: Catalog,
    domain: DomainInfo,
    plan: Plan,
    *,
    policy: str | None,
    now: dt.datetime,
) -> Created:
    spec = plan.spec
    xml = render_checked(spec)
    made_dirs = files.check_targets(spec, create_dirs=True)
    keeps_metadata = CreateFlag.NO_METADATA not in spec.flags
    # For NO_METADATA the catalog writes what libvirt would have kept, including the
    # domain definition from before the snapshot changes its disks.
    before = None if keeps_metadata else hv.domain_xml(spec.domain, secure=True)
    started = time.monotonic()
    try:
        returned, secure = hv.create_snapshot_secure(spec.domain, xml, spec.flags, uuid=domain.uuid)
    except SnapshotdError as exc:
        files.remove_dirs(made_dirs)
        mismatch = _leftovers(hv, spec)
        if mismatch is not None:
            exc.message = f"{exc.message}; {mismatch}"
            exc.args = (exc.message,)
        _log(
            catalog,
            hv,
            "create",
            "failed",
            policy=policy,
            domain=domain,
            snapshot=spec.name,
            message=str(exc),
            started=started,
            now=now,
        )
        raise
    if before is None:
        stored = secure
    else:
        online = domain.state is not DomainState.SHUTOFF
        stored = snapxml.render_catalog_only(
            spec, online=online, created=_epoch(now), domain_xml=before
        )
        returned = snapxml.render_catalog_only(spec, online=online, created=_epoch(now))
    info = snapxml.parse_snapshot(returned, source=f"snapshot {spec.name!r} from libvirt")
    catalog.record_snapshot(
        SnapshotRow(
            uri=hv.uri,
            domain_uuid=domain.uuid,
            domain_name=domain.name,
            name=spec.name,
            created_at=info.creation_time if info.creation_time is not None else _epoch(now),
            policy=policy,
            parent=info.parent,
            xml=stored,
            files=spec.new_files,
            libvirt_metadata=keeps_metadata,
        )
    )
    _log(
        catalog,
        hv,
        "create",
        "ok",
        policy=policy,
        domain=domain,
        snapshot=spec.name,
        message=None,
        started=started,
        now=now,
    )
    return Created(plan, info)


def _leftovers(hv: Hypervisor, spec: SnapshotSpec) -> str | None:
    """After a failed create: what libvirt and the disk hold that the snapshot was to make.

    libvirt 9.0 removes the files of a snapshot it failed to make, also when QEMU
    died half-way, but a crash of libvirtd itself, or another version, can leave an
    overlay or a memory file behind, or the snapshot's metadata without its success
    being reported.  snapshotd deletes none of it (a domain may already write to an
    overlay): it names what it found and what the admin should check.
    """
    left = [path for path in spec.new_files if os.path.lexists(path)]
    listed: bool | None
    try:
        listed = hv.snapshot_created(spec.domain, spec.name) is not None
    except SnapshotdError:
        listed = None  # the connection or the domain is gone: judge by the files
    if not left and not listed:
        return None
    found = []
    if listed:
        found.append(f"libvirt lists snapshot {spec.name!r} although creating it failed")
    if left:
        known = {
            False: " (libvirt has no snapshot that names them)",
            None: " (libvirt could not be asked whether a snapshot names them)",
        }
        found.append(
            "files the snapshot was to create exist: " + ", ".join(left) + known.get(listed, "")
        )
    return (
        "; ".join(found)
        + f". snapshotd deleted nothing: check `virsh domblklist {spec.domain}` and "
        f"`virsh snapshot-list {spec.domain}`; remove a file only when no disk or snapshot "
        "uses it, or delete the snapshot with `virsh snapshot-delete`"
    )


def adopt(hv: Hypervisor, catalog: Catalog, domain: str, name: str, *, policy: str | None) -> None:
    """Record a snapshot libvirt has but the catalog lacks (made just before a crash)."""
    info_domain = hv.domain(domain)
    returned = hv.snapshot_xml(domain, name)
    info = snapxml.parse_snapshot(returned, source=f"snapshot {name!r} from libvirt")
    if catalog.owner(info_domain.uuid, name, info.creation_time) is not None:
        return
    files_made = tuple(
        d.source_file for d in info.disks if d.snapshot == "external" and d.source_file
    )
    memory = (info.memory_file,) if info.memory_file else ()
    catalog.record_snapshot(
        SnapshotRow(
            uri=hv.uri,
            domain_uuid=info_domain.uuid,
            domain_name=info_domain.name,
            name=name,
            created_at=info.creation_time or 0,
            policy=policy,
            parent=info.parent,
            xml=hv.snapshot_xml(domain, name, secure=True),
            files=files_made + memory,
            libvirt_metadata=True,
        )
    )


def _log(
    catalog: Catalog,
    hv: Hypervisor,
    operation: str,
    outcome: str,
    *,
    policy: str | None,
    domain: DomainInfo,
    snapshot: str | None,
    message: str | None,
    started: float,
    now: dt.datetime,
) -> None:
    catalog.record_operation(
        Operation(
            at=_epoch(now),
            uri=hv.uri,
            operation=operation,
            outcome=outcome,
            policy=policy,
            domain_uuid=domain.uuid,
            domain_name=domain.name,
            snapshot=snapshot,
            message=message,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
    )


def create_for_policy(
    hv: Hypervisor, catalog: Catalog, policy: Policy, domain: DomainInfo, now: dt.datetime
) -> Created:
    """One snapshot of ``domain`` under ``policy``, with quiesce: try's fallback."""
    mode = policy.snapshot.quiesce
    quiesce = policy.quiesces(domain)
    request = policy.request(domain, now, quiesce=quiesce)
    try:
        return create(hv, catalog, domain, request, policy=policy.name, now=now)
    except LibvirtError as exc:
        if not (quiesce and mode is Quiesce.TRY and agent_unavailable(exc)):
            raise
        fallback = policy.request(domain, now, quiesce=False)
        made = create(hv, catalog, domain, fallback, policy=policy.name, now=now)
        note = f"quiesce: try: taken without quiesce, the guest agent did not help ({exc.reason})"
        return Created(made.plan, made.info, note)


class HookSkipped(SnapshotdError):
    """A ``before`` hook failed and the policy says ``before_failure: skip``."""


def snapshot_with_hooks(
    hv: Hypervisor, catalog: Catalog, policy: Policy, domain: DomainInfo, now: dt.datetime
) -> Created:
    """The policy's snapshot of ``domain`` with its hooks around it.

    before hooks; if one failed and before_failure is skip, the snapshot is skipped
    (HookSkipped) and on_failure hooks run; otherwise the snapshot is taken, then
    after hooks (success) or on_failure hooks (failure, which is re-raised).
    """
    spec = policy.hooks
    timeout = spec.timeout.total_seconds()
    context = hooks.Context(
        policy=policy.name,
        domain=domain.name,
        domain_uuid=domain.uuid,
        snapshot=policy.snapshot_name(domain.name, now),
        state=domain.state.value,
    )
    failed = [o for o in hooks.run_all("before", spec.before, context, timeout) if not o.ok]
    if failed and spec.before_failure is BeforeFailure.SKIP:
        why = "; ".join(o.problem or "" for o in failed)
        skipped = replace(context, result="skipped", error=why)
        hooks.run_all("on_failure", spec.on_failure, skipped, timeout)
        raise HookSkipped(f"snapshot skipped: {why} (hooks.before_failure: skip)")
    try:
        made = create_for_policy(hv, catalog, policy, domain, now)
    except SnapshotdError as exc:
        hooks.run_all(
            "on_failure",
            spec.on_failure,
            replace(context, result="failed", error=str(exc)),
            timeout,
        )
        raise
    hooks.run_all("after", spec.after, replace(context, result="ok"), timeout)
    return made


# --- retention ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owned:
    """One of a domain's snapshots as retention sees it."""

    record: SnapshotRecord | None  # None: catalog-only (NO_METADATA), libvirt has nothing
    info: SnapshotInfo
    candidate: Candidate
    row: SnapshotRow | None = None  # the catalog's row, when the snapshot is ours


@dataclass(slots=True)
class PruneReport:
    policy: str
    domain: str
    verdicts: list[Verdict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, error)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why) despite retention
    dry_run: bool = False

    @property
    def to_delete(self) -> list[str]:
        return [v.name for v in self.verdicts if not v.keep]


def snapshots_of(
    hv: Hypervisor, catalog: Catalog, policy: Policy, domain: DomainInfo
) -> list[Owned]:
    """The domain's snapshots, each marked owned (by this policy) or not: libvirt's, and
    the policy's catalog-only ones (NO_METADATA) that libvirt does not list."""
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
        if row.libvirt_metadata or row.name in listed:
            continue
        info = snapxml.parse_snapshot(row.xml, source=f"catalog snapshot {row.name!r}")
        created = dt.datetime.fromtimestamp(row.created_at, dt.UTC)
        result.append(Owned(None, info, Candidate(row.name, created, True), row))
    return result


Chains = list[tuple[str, list[str]]]  # (disk target, its image and backing files)


def backing_chains(hv: Hypervisor, domain: DomainInfo) -> Chains:
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
    hv: Hypervisor,
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
        report.verdicts = evaluate(
            retention, [o.candidate for o in owned], now, policy.schedule.timezone
        )
        return owned

    if dry_run:
        judge()
        return report
    with statefile.domain_lock(catalog.state_dir, domain.uuid, domain.name):
        _delete(hv, catalog, policy, domain, judge(), report=report, now=now)
    return report


def _delete(
    hv: Hypervisor,
    catalog: Catalog,
    policy: Policy,
    domain: DomainInfo,
    owned: list[Owned],
    *,
    report: PruneReport,
    now: dt.datetime,
) -> None:
    by_name = {o.candidate.name: o for o in owned}
    doomed = sorted(report.to_delete, key=lambda n: by_name[n].candidate.created)
    chains: Chains | None = None  # read when the first catalog-only snapshot needs them
    for name in doomed:
        started = time.monotonic()
        entry = by_name[name]
        if entry.record is None and entry.row is not None:
            if chains is None:
                try:
                    chains = backing_chains(hv, domain)
                except SnapshotdError as exc:
                    report.failed.append((name, str(exc)))
                    continue
            _prune_catalog_only(catalog, hv, policy, domain, entry.row, chains, report, now)
            continue
        try:
            hv.delete_snapshot(domain.name, name)
        except SnapshotdError as exc:
            report.failed.append((name, str(exc)))
            _log(
                catalog,
                hv,
                "delete",
                "failed",
                policy=policy.name,
                domain=domain,
                snapshot=name,
                message=str(exc),
                started=started,
                now=now,
            )
            continue
        info = entry.info
        if info.creation_time is not None:
            _remove_memory_file(info, entry.row.files if entry.row is not None else ())
            catalog.mark_deleted(domain.uuid, name, info.creation_time, _epoch(now))
        report.deleted.append(name)
        _log(
            catalog,
            hv,
            "delete",
            "ok",
            policy=policy.name,
            domain=domain,
            snapshot=name,
            message=None,
            started=started,
            now=now,
        )


def _prune_catalog_only(  # noqa: PLR0917 - the prune's state, passed down once
    catalog: Catalog,
    hv: Hypervisor,
    policy: Policy,
    domain: DomainInfo,
    row: SnapshotRow,
    chains: Chains,
    report: PruneReport,
    now: dt.datetime,
) -> None:
    """Delete a catalog-only snapshot: its files, unless the domain still uses one."""
    started = time.monotonic()
    why = in_use(chains, domain, row)
    if why is not None:
        report.kept.append((row.name, why))
        _log(
            catalog,
            hv,
            "delete",
            "kept",
            policy=policy.name,
            domain=domain,
            snapshot=row.name,
            message=why,
            started=started,
            now=now,
        )
        return
    files.remove_files(row.files)
    catalog.mark_deleted(domain.uuid, row.name, row.created_at, _epoch(now))
    report.deleted.append(row.name)
    _log(
        catalog,
        hv,
        "delete",
        "ok",
        policy=policy.name,
        domain=domain,
        snapshot=row.name,
        message="catalog-only: files removed",
        started=started,
        now=now,
    )
