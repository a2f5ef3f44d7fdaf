"""From a request and a domain to a complete snapshot plan, or a clear refusal.

``plan_snapshot`` is pure: it looks at the request, the domain's state and its
disks (from its own XML) and nothing else.  Every refusal happens here, before
libvirt is called, and names the domain, the disk where one is at fault, the
seed table row and what to do instead.

How a per-disk request folds into the table's single "disk" column
-----------------------------------------------------------------
The seed's table has one disk column.  With several disks, snapshotd folds the
requests of the disks that can take part (see ``_excluded_reason``) like this:

* every such disk asks "no"                  -> the column is ``no``;
* otherwise, ignoring the disks that ask "no",
  the remaining requests are all omit         -> ``omit``;
  they are omit or one explicit location X    -> ``X`` (omitted disks follow X);
  they mix internal and external              -> unsupported (libvirt cannot mix).

The disks that ask "no" are then left out individually; that is allowed for
external and disk-only snapshots, and refused for internal ones, because
libvirt's internal snapshots (savevm and qemu-img) must cover every writable
disk.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from snapshotd.core import naming
from snapshotd.core.model import (
    CreateFlag,
    DiskInfo,
    DiskPlan,
    DomainInfo,
    DomainState,
    Location,
    Method,
    Request,
    SnapshotRequest,
    SnapshotSpec,
)
from snapshotd.core.table import (
    INVALID_ADVICE,
    UNSUPPORTED_ADVICE,
    DiskResult,
    Outcome,
    Row,
    lookup,
)
from snapshotd.errors import PlanError, RequestError

ONLINE_STATES = frozenset({DomainState.RUNNING, DomainState.PAUSED, DomainState.BLOCKED})
OFFLINE_STATES = frozenset({DomainState.SHUTOFF})

# Why the other states are refused.  Decided here, documented in docs/state-table.md.
REFUSED_STATES: dict[DomainState, tuple[str, str]] = {
    DomainState.PMSUSPENDED: (
        "unsupported",
        "the domain is suspended to memory (pmsuspended); QEMU cannot snapshot it. "
        "Wake it (virsh dompmwakeup) or shut it off, then try again",
    ),
    DomainState.SHUTDOWN: (
        "refused",
        "the domain is shutting down; its state will change under the snapshot. "
        "Try again once it is shut off (a schedule retries at the next due time)",
    ),
    DomainState.CRASHED: (
        "refused",
        "the domain has crashed; its memory and disks are not a state worth keeping. "
        "Destroy it (virsh destroy) for an offline snapshot of its disks, or restart it",
    ),
    DomainState.NOSTATE: (
        "refused",
        "libvirt reports no state for the domain; try again when it is running, paused or shut off",
    ),
}

_NON_DISK_DEVICES = frozenset({"cdrom", "floppy"})
_INTERNAL_SOURCE_TYPES = frozenset({"file", "block"})
_REQ_TO_LOC = {
    Request.NO: Location.NO,
    Request.INTERNAL: Location.INTERNAL,
    Request.EXTERNAL: Location.EXTERNAL,
}


@dataclass(frozen=True, slots=True)
class Plan:
    """A successful plan and the table row it came from."""

    spec: SnapshotSpec
    row: Row


def is_online(domain: DomainInfo) -> bool:
    """Online (running, paused, blocked) or offline (shut off); other states are refused."""
    if domain.state in ONLINE_STATES:
        return True
    if domain.state in OFFLINE_STATES:
        return False
    kind, message = REFUSED_STATES[domain.state]
    raise PlanError(kind, message, domain=domain.name)


def resolve_disk_selectors(
    domain: DomainInfo, selectors: tuple[tuple[str, Request], ...]
) -> dict[str, Request]:
    """Map per-disk requests named by target or source path to targets.

    A path that backs two disks is ambiguous and refused, naming both targets.
    """
    by_target = {d.target: d for d in domain.disks}
    result: dict[str, Request] = {}
    origin: dict[str, str] = {}
    for selector, request in selectors:
        if selector in by_target:
            target = selector
        else:
            wanted = posixpath.normpath(selector) if selector.startswith("/") else None
            matches = [
                d.target
                for d in domain.disks
                if d.path is not None
                and wanted is not None
                and posixpath.normpath(d.path) == wanted
            ]
            if len(matches) > 1:
                raise PlanError(
                    "invalid",
                    f"path {selector} backs disks {' and '.join(matches)}; "
                    "name the disk by its target instead",
                    domain=domain.name,
                )
            if not matches:
                known = ", ".join(d.describe for d in domain.disks) or "no disks"
                raise PlanError(
                    "invalid",
                    f"no disk is named {selector!r} (by target or source path); "
                    f"the domain has {known}",
                    domain=domain.name,
                )
            target = matches[0]
        if target in result and result[target] is not request:
            raise PlanError(
                "invalid",
                f"disk {target} is requested twice ({origin[target]}={result[target].value} "
                f"and {selector}={request.value})",
                domain=domain.name,
                disk=target,
            )
        result[target] = request
        origin[target] = selector
    return result


def _excluded_reason(disk: DiskInfo) -> str | None:
    """Why a disk cannot take part in any snapshot, or None when it can."""
    if disk.device in _NON_DISK_DEVICES:
        return f"a {disk.device} drive is never snapshotted"
    if disk.empty:
        return "the drive has no medium"
    if disk.readonly:
        return "the disk is read-only, nothing can change on it"
    if disk.shareable:
        return (
            "the disk is shareable: other domains write to it too, so a snapshot of it "
            "from this domain would not be consistent"
        )
    return None


def fold_requests(requests: Iterable[Request]) -> Request | None:
    """The table's one disk column from the disks' requests (the rules in this module's
    docstring); None when they mix internal and external, which libvirt cannot do."""
    asked = tuple(requests)
    if all(r is Request.NO for r in asked):
        return Request.NO
    explicit = {r for r in asked if r not in (Request.NO, Request.OMIT)}
    if len(explicit) > 1:
        return None
    return explicit.pop() if explicit else Request.OMIT


def _fold(requests: dict[str, Request], domain: str) -> Request:
    """Fold the participating disks' requests into the table's disk column."""
    folded = fold_requests(requests.values())
    if folded is None:
        internal = sorted(t for t, r in requests.items() if r is Request.INTERNAL)
        external = sorted(t for t, r in requests.items() if r is Request.EXTERNAL)
        raise PlanError(
            "unsupported",
            f"disks {', '.join(internal)} ask for internal and {', '.join(external)} for "
            "external snapshots; libvirt cannot mix the two in one snapshot. "
            "Take two snapshots, or ask for one location for all disks",
            domain=domain,
        )
    return folded


def _row_error(kind: str, message: str, row: Row, domain: DomainInfo) -> PlanError:
    """A refusal of the request, naming the state table row that applied."""
    return PlanError(kind, message, domain=domain.name, row=row.number)


def _refuse_row(row: Row, domain: DomainInfo) -> PlanError:
    if row.outcome is Outcome.INVALID:
        reason = row.reason or ""
        advice = f"invalid combination ({reason}): {INVALID_ADVICE[reason]}"
        return _row_error("invalid", advice, row, domain)
    advice = f"unsupported for now: {UNSUPPORTED_ADVICE[row.number]}"
    return _row_error("unsupported", advice, row, domain)


def _default_location(disk: DiskInfo, row: Row) -> tuple[Location, str]:
    """The location of a disk the request left to the row's result."""
    result = row.disk_result
    if result is DiskResult.INTERNAL:
        return Location.INTERNAL, "internal, as the state table row says"
    if result is DiskResult.EXTERNAL:
        return Location.EXTERNAL, "external, as the state table row says"
    if result is DiskResult.NO:
        return Location.NO, "excluded, as the state table row says"
    if disk.snapshot_default == "no":
        return Location.NO, "the domain's XML says snapshot='no' for this disk"
    return Location.EXTERNAL, "the default for a disk snapshot of a running domain (external)"


def _check_internal(disk: DiskInfo, domain: DomainInfo) -> None:
    if disk.source_type not in _INTERNAL_SOURCE_TYPES:
        raise PlanError(
            "unsupported",
            f"{disk.describe}: internal snapshots need a qcow2 file or block device, "
            f"not a {disk.source_type} disk; take an external snapshot instead",
            domain=domain.name,
            disk=disk.target,
        )
    if disk.format != "qcow2":
        raise PlanError(
            "unsupported",
            f"{disk.describe}: internal snapshots are stored inside qcow2 images and this "
            f"disk is {disk.format or 'of unknown format'}; libvirt requires every writable "
            "disk in an internal snapshot, so it cannot be left out either. Take an external "
            "snapshot (memory 'no' or 'external' with external disks), or convert the image "
            "to qcow2",
            domain=domain.name,
            disk=disk.target,
        )


@dataclass(frozen=True, slots=True)
class _Files:
    """Where external files go: a rendered directory and the root it must stay inside."""

    directory: str | None
    root: str | None


def _files_location(req: SnapshotRequest, domain: DomainInfo) -> _Files:
    if req.directory is None:
        return _Files(None, None)
    template = naming.check_directory(req.directory, "snapshot directory")
    naming.template_fields(template, frozenset({"domain"}), "snapshot directory")
    naming.check_file_component(domain.name, "domain name")
    rendered = naming.check_directory(
        template.format_map({"domain": domain.name}), "snapshot directory"
    )
    root = naming.literal_root(template)
    if not naming.is_inside(rendered, root):
        raise RequestError(f"snapshot directory {rendered} is outside {root}")
    return _Files(rendered, root)


def _overlay(
    disk: DiskInfo, req: SnapshotRequest, domain: DomainInfo, files: _Files, explicit: bool
) -> tuple[str, str] | str:
    """(new file, root) for an external disk, or the reason it has no place for one."""
    if files.directory is not None and files.root is not None:
        directory, root = files.directory, files.root
    elif disk.source_type == "file" and disk.path:
        directory = naming.check_directory(posixpath.dirname(disk.path), f"disk {disk.target} path")
        root = directory
    else:
        reason = (
            f"{disk.describe}: a {disk.source_type} disk has no directory beside it for an "
            "external overlay; set a snapshot directory (--directory) to include it"
        )
        if explicit:
            raise PlanError("invalid", reason, domain=domain.name, disk=disk.target)
        return reason
    values = {
        "domain": domain.name,
        "snapshot": req.name,
        "disk": disk.target,
    }
    name = naming.render_template(req.disk_file_template, values, "disk file template")
    naming.check_file_component(name, f"overlay file name for disk {disk.target}")
    return posixpath.join(directory, name), root


def _split_disks(
    domain: DomainInfo, req: SnapshotRequest
) -> tuple[dict[str, Request], dict[str, str]]:
    """Each disk's request, and the disks that cannot take part (with the reason)."""
    explicit = resolve_disk_selectors(domain, req.disk)
    participating: dict[str, Request] = {}
    excluded: dict[str, str] = {}
    for disk in domain.disks:
        why = _excluded_reason(disk)
        asked = explicit.get(disk.target)
        if why is None:
            participating[disk.target] = asked if asked is not None else req.disks
        elif asked in (Request.INTERNAL, Request.EXTERNAL):
            raise PlanError(
                "invalid",
                f"{disk.describe} cannot be snapshotted: {why}. "
                f"Drop the request for {disk.target} (it is left out automatically)",
                domain=domain.name,
                disk=disk.target,
            )
        else:
            excluded[disk.target] = why
    return participating, excluded


def _plan_disk(
    disk: DiskInfo,
    asked: Request,
    row: Row,
    ctx: tuple[DomainInfo, SnapshotRequest, _Files],
) -> tuple[DiskPlan, str | None]:
    """One participating disk's plan, and the root its new file must stay in."""
    domain, req, files = ctx
    if asked is Request.NO:
        if row.internal:
            raise PlanError(
                "unsupported",
                f"{disk.describe} is excluded, but internal snapshots (savevm, qemu-img) "
                "must cover every writable disk; include it, or take an external snapshot",
                domain=domain.name,
                disk=disk.target,
                row=row.number,
            )
        return DiskPlan(disk.target, Location.NO, "excluded by the request", disk.path), None
    if asked is Request.OMIT:
        location, reason = _default_location(disk, row)
    else:
        location, reason = _REQ_TO_LOC[asked], "as requested"
    if location is Location.INTERNAL:
        _check_internal(disk, domain)
    elif location is Location.EXTERNAL:
        placed = _overlay(disk, req, domain, files, explicit=asked is Request.EXTERNAL)
        if isinstance(placed, str):
            return DiskPlan(disk.target, Location.NO, placed, disk.path), None
        new_file, root = placed
        return DiskPlan(disk.target, location, reason, disk.path, new_file, "qcow2"), root
    return DiskPlan(disk.target, location, reason, disk.path), None


def _memory_file(
    row: Row, req: SnapshotRequest, domain: DomainInfo, files: _Files
) -> tuple[str, str] | None:
    """(file, root) for external memory, None otherwise."""
    if row.memory_result is not Location.EXTERNAL:
        return None
    if files.directory is None or files.root is None:
        raise _row_error(
            "invalid",
            "external memory needs a directory for its state file; "
            "set one with --directory (or 'directory:' in the policy)",
            row,
            domain,
        )
    values = {"domain": domain.name, "snapshot": req.name}
    name = naming.render_template(req.memory_file_template, values, "memory file template")
    naming.check_file_component(name, "memory file name")
    return posixpath.join(files.directory, name), files.root


def plan_snapshot(domain: DomainInfo, req: SnapshotRequest) -> Plan:
    """Resolve a request against a domain: the snapshot to create, or PlanError."""
    naming.check_snapshot_name(req.name)
    online = is_online(domain)
    participating, excluded = _split_disks(domain, req)
    row = lookup(online, req.memory, _fold(participating, domain.name), req.disk_only)
    if row.outcome is not Outcome.OK:
        raise _refuse_row(row, domain)
    memory, _disk_result, method = row.result()

    files = _files_location(req, domain)
    plans: list[DiskPlan] = []
    roots: list[str] = []
    for disk in domain.disks:
        if disk.target in excluded:
            plans.append(DiskPlan(disk.target, Location.NO, excluded[disk.target], disk.path))
            continue
        plan, root = _plan_disk(disk, participating[disk.target], row, (domain, req, files))
        plans.append(plan)
        if root is not None:
            roots.append(root)

    memory_file = _memory_file(row, req, domain, files)
    if memory_file is not None:
        roots.append(memory_file[1])
    if row.internal and not any(p.location is Location.INTERNAL for p in plans):
        raise PlanError(
            "invalid",
            "an internal snapshot needs at least one qcow2 disk to hold it",
            domain=domain.name,
            row=row.number,
        )
    _check_something(plans, row, domain)
    _check_files(plans, memory_file[0] if memory_file else None, domain)
    spec = SnapshotSpec(
        domain=domain.name,
        name=req.name,
        description=req.description,
        memory=memory,
        memory_file=memory_file[0] if memory_file else None,
        disks=tuple(plans),
        flags=_flags(req, row, online, plans, domain),
        method=method,
        row=row.number,
        allowed_directories=tuple(dict.fromkeys(roots)),
    )
    return Plan(spec, row)


def _check_something(plans: list[DiskPlan], row: Row, domain: DomainInfo) -> None:
    """After disks were left out, something must still be snapshotted."""
    if row.memory_result is not Location.NO:
        return
    if any(p.location is not Location.NO for p in plans):
        return
    reasons = "; ".join(f"{p.target}: {p.reason}" for p in plans) or "the domain has no disks"
    raise _row_error(
        "invalid",
        f"invalid combination (nothing to snapshot): every disk is left out ({reasons})",
        row,
        domain,
    )


def _check_files(plans: list[DiskPlan], memory_file: str | None, domain: DomainInfo) -> None:
    """New files must be distinct and must not be any disk's current image."""
    seen: dict[str, str] = {}
    sources = {p.source: p.target for p in plans if p.source}
    wanted = [(p.new_file, f"disk {p.target}") for p in plans if p.new_file]
    if memory_file:
        wanted.append((memory_file, "memory"))
    for path, owner in wanted:
        if path in seen:
            raise RequestError(
                f"domain {domain.name!r}: {owner} and {seen[path]} would both be written to "
                f"{path}; use {{domain}} and {{disk}} in the file template"
            )
        if path in sources:
            raise RequestError(
                f"domain {domain.name!r}: {owner} would be written over the image of disk "
                f"{sources[path]} ({path})"
            )
        seen[path] = owner


def _flags(
    req: SnapshotRequest, row: Row, online: bool, plans: list[DiskPlan], domain: DomainInfo
) -> CreateFlag:
    def invalid(message: str) -> PlanError:
        return _row_error("invalid", message, row, domain)

    external_disks = any(p.location is Location.EXTERNAL for p in plans)
    # DISK_ONLY online: QEMU's transaction.  Offline: libvirt implies it for external
    # disks; it is never passed for offline internal snapshots, which libvirt would
    # then refuse.
    disk_only = row.memory_result is Location.NO and (online or external_disks)
    flags = CreateFlag.DISK_ONLY if disk_only else CreateFlag(0)
    if req.quiesce:
        if not (online and row.method is Method.TRANSACTION):
            raise invalid(
                "quiesce freezes the guest's file systems through its agent, which only "
                "works for a disk-only snapshot (memory 'no') of a running domain"
            )
        if domain.state is DomainState.PAUSED:
            raise invalid(
                "quiesce needs the guest agent, which cannot answer while the domain is "
                "paused; resume it or drop quiesce"
            )
        flags |= CreateFlag.QUIESCE
    if req.live:
        if not (online and row.memory_result is Location.EXTERNAL):
            raise invalid(
                "live snapshots keep the guest running while its memory is saved, which "
                "libvirt only supports for external memory of a running domain"
            )
        flags |= CreateFlag.LIVE
    if req.reuse_external:
        if not external_disks:
            raise RequestError(
                f"domain {domain.name!r}: reuse of existing external files was asked for, "
                "but no disk gets an external snapshot"
            )
        flags |= CreateFlag.REUSE_EXT
    if req.atomic:
        flags |= CreateFlag.ATOMIC
    if req.no_metadata:
        flags |= CreateFlag.NO_METADATA
    return flags
