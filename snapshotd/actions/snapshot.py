"""One snapshot: plan -> XML (checked against libvirt's schema) -> files checked ->
libvirt creates it -> the catalog records it.  Also adopt, for a snapshot libvirt made
that the catalog does not know yet (made just before a crash).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters import files
from snapshotd.catalog.api import Catalog, Operation, SnapshotRow
from snapshotd.core import snapxml
from snapshotd.core.model import (
    CreateFlag,
    DomainInfo,
    DomainState,
    SnapshotInfo,
    SnapshotRequest,
    SnapshotSpec,
)
from snapshotd.core.plan import Plan, plan_snapshot
from snapshotd.core.schedule import utc_text
from snapshotd.errors import NotFoundError, RequestError, SnapshotdError

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


def epoch(now: dt.datetime) -> int:
    return int(now.timestamp())


@dataclass(frozen=True, slots=True)
class DomainAction:
    """One action of snapshotd on one domain (a create, a prune): the connection and the
    catalog it works with, the policy it acts for (None: by hand) and its instant."""

    hv: HypervisorAPI
    catalog: Catalog
    domain: DomainInfo
    policy: str | None
    now: dt.datetime

    def log(
        self,
        operation: str,
        outcome: str,
        *,
        snapshot: str | None,
        message: str | None,
        started: float,
    ) -> None:
        """Add a line to the catalog's operations log; ``started``: time.monotonic() when
        the operation began."""
        self.catalog.record_operation(
            self.line(operation, outcome, snapshot=snapshot, message=message, started=started)
        )

    def line(
        self,
        operation: str,
        outcome: str,
        *,
        snapshot: str | None,
        message: str | None,
        started: float,
    ) -> Operation:
        """The operations log's line of this action (see log)."""
        return Operation(
            at=epoch(self.now),
            uri=self.hv.uri,
            operation=operation,
            outcome=outcome,
            policy=self.policy,
            domain_uuid=self.domain.uuid,
            domain_name=self.domain.name,
            snapshot=snapshot,
            message=message,
            duration_ms=int((time.monotonic() - started) * 1000),
        )


def create(
    hv: HypervisorAPI,
    catalog: Catalog,
    domain: DomainInfo,
    request: SnapshotRequest,
    *,
    policy: str | None,
    now: dt.datetime,
) -> Created:
    """Plan, check, create and record one snapshot.  Raises SnapshotdError on refusal."""
    plan = plan_named(hv, catalog, domain, request)
    return create_planned(hv, catalog, domain, plan, policy=policy, now=now)


def create_planned(
    hv: HypervisorAPI,
    catalog: Catalog,
    domain: DomainInfo,
    plan: Plan,
    *,
    policy: str | None,
    now: dt.datetime,
) -> Created:
    """Check, create and record the snapshot ``plan`` (made for ``domain``) describes.

    Holds the domain's lock (shared with other snapshotd processes on the same catalog)
    from the name check to the catalog record.
    """
    action = DomainAction(hv, catalog, domain, policy, now)
    with catalog.domain_lock(domain.uuid, domain.name):
        # The name first: a name already taken (perhaps by the process this one waited
        # for) is the refusal that holds whatever state the domain is in now.
        refuse_taken_name(hv, catalog, domain, plan.spec.name)
        still_as_planned(action, plan.spec.name)
        return _create(action, plan)


class DomainChanged(RequestError):
    """The domain was shut down, started or undefined after its snapshot was planned.

    Nothing was changed: the snapshot is skipped, and the next due time plans it anew.
    """


def still_as_planned(action: DomainAction, name: str) -> None:
    """Read the domain again under its lock, right before libvirt is asked.

    The plan was made from a state read earlier (the daemon's domain list, or before a
    before hook ran); a snapshot planned for a running domain cannot be taken of one
    that has stopped since, nor of one that is gone.
    """
    started = time.monotonic()
    domain = action.domain
    state = action.hv.domain_state(domain.uuid)
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
    action.log("create", "skipped", snapshot=name, message=message, started=started)
    raise DomainChanged(message)


def plan_named(
    hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo, request: SnapshotRequest
) -> Plan:
    """The plan of ``request`` for ``domain``, after its name is checked.

    A name already taken is the refusal that holds: the snapshot by that name (perhaps
    just made by another process) may have changed the disks so that the plan itself
    would be refused, for a reason that is not the real one.  create_planned checks the
    name again under the domain's lock.
    """
    refuse_taken_name(hv, catalog, domain, request.name)
    return plan_snapshot(domain, request)


def refuse_taken_name(hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo, name: str) -> None:
    """A snapshot name is never reused: libvirt would refuse it half-way, and the
    catalog would hold two snapshots by one name."""
    try:
        created = hv.snapshot_created(domain.uuid, name)
    except NotFoundError:
        return  # the domain is gone: still_as_planned says so
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


def _create(action: DomainAction, plan: Plan) -> Created:
    ready = prepare(action, plan)
    started = time.monotonic()
    try:
        returned, secure = call_create(action, ready)
    except SnapshotdError as exc:
        raise failed(action, ready, exc, started) from None
    return record(action, ready, returned, secure, started)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A snapshot ready for libvirt: its checked XML, the directories made for its
    files, and (NO_METADATA) the domain's secure XML from before it."""

    plan: Plan
    xml: str
    made_dirs: tuple[str, ...]
    before: str | None


def prepare(action: DomainAction, plan: Plan) -> Prepared:
    """Everything before libvirt is asked (the caller holds the domain's lock)."""
    spec = plan.spec
    xml = render_checked(spec)
    made_dirs = tuple(files.check_targets(spec, create_dirs=True))
    keeps_metadata = CreateFlag.NO_METADATA not in spec.flags
    # For NO_METADATA the catalog writes what libvirt would have kept, including the
    # domain definition from before the snapshot changes its disks.
    before = None if keeps_metadata else action.hv.domain_xml(spec.domain, secure=True)
    return Prepared(plan, xml, made_dirs, before)


def call_create(
    action: DomainAction, ready: Prepared, *, after: Callable[[], object] | None = None
) -> tuple[str, str]:
    """The libvirt call alone: (libvirt's XML, its secure XML); ``after`` runs as soon
    as libvirt made the snapshot (a group releases its member there)."""
    spec = ready.plan.spec
    return action.hv.create_snapshot_secure(
        spec.domain, ready.xml, spec.flags, uuid=action.domain.uuid, after=after
    )


def failed(
    action: DomainAction, ready: Prepared, exc: SnapshotdError, started: float
) -> SnapshotdError:
    """After a failed create: directories removed, leftovers named, the log written;
    the error to raise."""
    files.remove_dirs(list(ready.made_dirs))
    mismatch = _leftovers(action.hv, ready.plan.spec)
    if mismatch is not None:
        exc.message = f"{exc.message}; {mismatch}"
        exc.args = (exc.message,)
    action.log("create", "failed", snapshot=ready.plan.spec.name, message=str(exc), started=started)
    return exc


def record(
    action: DomainAction, ready: Prepared, returned: str, secure: str, started: float
) -> Created:
    """After libvirt made it: file modes narrowed, the catalog's row and log line."""
    hv, domain, now = action.hv, action.domain, action.now
    spec = ready.plan.spec
    if files.is_local_uri(hv.uri):
        # Before anything else: from now on the domain may write guest data into them.
        files.narrow_modes(spec)
    if ready.before is None:
        stored = secure
    else:
        online = domain.state is not DomainState.SHUTOFF
        stored = snapxml.render_catalog_only(
            spec, online=online, created=epoch(now), domain_xml=ready.before
        )
        returned = snapxml.render_catalog_only(spec, online=online, created=epoch(now))
    info = snapxml.parse_snapshot(returned, source=f"snapshot {spec.name!r} from libvirt")
    action.catalog.record_snapshot(
        SnapshotRow(
            uri=hv.uri,
            domain_uuid=domain.uuid,
            domain_name=domain.name,
            name=spec.name,
            created_at=info.creation_time if info.creation_time is not None else epoch(now),
            policy=action.policy,
            parent=info.parent,
            xml=stored,
            files=spec.new_files,
            libvirt_metadata=ready.before is None,
        ),
        action.line("create", "ok", snapshot=spec.name, message=None, started=started),
    )
    return Created(ready.plan, info)


def _leftovers(hv: HypervisorAPI, spec: SnapshotSpec) -> str | None:
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


def adopt(
    hv: HypervisorAPI, catalog: Catalog, domain: str, name: str, *, policy: str | None
) -> None:
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


def refresh_rows(hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo) -> None:
    """Give the catalog's rows of the domain's snapshots libvirt's XML and files again,
    where libvirt has them: an external revert gives its target new overlays
    (``<revertDisks>``), and libvirt 11 deleting an external snapshot hands its parent's
    files on (the parent's ``<disks>`` then name the overlay the revert made).  libvirt
    11.3 was seen naming a file it had just deleted with a child snapshot; where snapshotd
    can see the files (a local URI) a row lists only those that exist."""
    local = files.is_local_uri(hv.uri)
    known = {r.name for r in hv.list_snapshots(domain.name)}
    for row in catalog.snapshots(domain_uuid=domain.uuid):
        if not row.libvirt_metadata or row.name not in known:
            continue
        xml = hv.snapshot_xml(domain.name, row.name, secure=True)
        named = snapxml.named_files(xml, source=f"snapshot {row.name!r} from libvirt")
        made = tuple(f for f in named if not local or os.path.lexists(f))
        if (xml, made) != (row.xml, row.files):
            catalog.update_snapshot(domain.uuid, row.name, row.created_at, xml=xml, files=made)
