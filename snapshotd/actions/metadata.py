"""Snapshot metadata outside libvirt: export, import (REDEFINE), replicate (revert is
actions/revert.py).

Everything is checked before anything is changed (core/hierarchy.py); an import
that fails half-way removes the metadata it added (METADATA_ONLY) and puts the
previous current snapshot back.  Snapshot XML read here may hold secrets: it is
never logged, and export writes it 0600.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapshotd.actions import groupindex
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters import files
from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog.api import Catalog
from snapshotd.core import snapxml
from snapshotd.core.domain import machine_type, machine_types
from snapshotd.core.hierarchy import ImportPlan, Item, Problem, plan_import, referenced_files
from snapshotd.core.model import DomainInfo
from snapshotd.core.naming import is_inside
from snapshotd.errors import RequestError, SnapshotdError, XMLError

INDEX = "index.json"
FORMAT = "snapshotd-export/1"
MAX_DOCUMENT = 16 * 1024 * 1024  # a snapshot with its domain XML is a few kB


class ImportRefused(RequestError):
    """The documents or the domain do not allow the import; nothing was changed."""


def import_refused(problems: Sequence[Problem]) -> ImportRefused:
    lines = "\n  ".join(str(p) for p in problems)
    count = len(problems)
    return ImportRefused(
        f"{count} problem{'s' if count != 1 else ''}; nothing was imported:\n  {lines}"
    )


# --- export ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exported:
    directory: str
    files: tuple[str, ...]
    current: str | None


def _file_name(index: int, name: str) -> str:
    return f"{index:04d}-{re.sub(r'[^A-Za-z0-9._+:@-]', '_', name)[:100]}.xml"


def export(
    hv: HypervisorAPI,
    domain: str,
    out: str,
    *,
    secure: bool = False,
    catalog: Catalog | None = None,
) -> Exported:
    """Write the domain's snapshots as XML files, parents first, and an index.

    With ``catalog``, the index records the group of each snapshot that is a member of
    one there (actions/groupindex.py); a snapshot in none has no ``group``."""
    info = hv.domain(domain)
    records = hv.list_snapshots(info.name)
    groups = groupindex.memberships(catalog)
    current = next((r.name for r in records if r.is_current), None)
    directory = Path(out)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    entries = []
    written = []
    for number, record in enumerate(records, start=1):
        text = hv.snapshot_xml(info.name, record.name, secure=True) if secure else record.xml
        parsed = snapxml.parse_snapshot(text, source=f"snapshot {record.name!r}")
        name = _file_name(number, record.name)
        files.write_private(directory / name, text)
        written.append(str(directory / name))
        entry: dict[str, object] = {
            "file": name,
            "name": record.name,
            "parent": record.parent,
            "creation_time": parsed.creation_time,
        }
        group = groups.get((info.uuid, record.name, parsed.creation_time or 0))
        if group is not None and parsed.creation_time is not None:
            entry["group"] = groupindex.to_index(group, info.uuid)
        entries.append(entry)
    index = {
        "format": FORMAT,
        "domain": info.name,
        "uuid": info.uuid,
        "uri": sanitize_uri(hv.uri),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "secure": secure,
        "current": current,
        "snapshots": entries,
    }
    files.write_private(directory / INDEX, json.dumps(index, indent=2) + "\n")
    return Exported(str(directory), tuple(written), current)


# --- reading documents ---------------------------------------------------------------------


@dataclass(slots=True)
class Documents:
    items: list[Item] = field(default_factory=list)
    current: str | None = None  # what an export's index names
    problems: list[Problem] = field(default_factory=list)
    # The group an export's index records for an item, by the item's source.
    groups: dict[str, groupindex.IndexedGroup] = field(default_factory=dict)


def _read_text(path: Path, docs: Documents) -> str | None:
    """A file's text, or None (and a problem) when it is too large or unreadable."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_DOCUMENT:
            docs.problems.append(Problem(source, f"larger than {MAX_DOCUMENT} bytes"))
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        docs.problems.append(Problem(source, f"cannot be read: {exc}"))
        return None


def _read_document(path: Path, docs: Documents) -> Item | None:
    source = str(path)
    text = _read_text(path, docs)
    if text is None:
        return None
    try:
        info = snapxml.parse_snapshot(text, source=source)
    except XMLError as exc:
        message = str(exc)
        message = message.removeprefix(f"{source}: ").removeprefix(source)
        docs.problems.append(Problem(source, message.lstrip(": ") or "not snapshot XML"))
        return None
    item = Item(source, info, text)
    docs.items.append(item)
    return item


def _stays_inside(directory: Path, path: Path, docs: Documents) -> bool:
    """False (and a problem) when ``path`` resolves, through a symlink, outside
    ``directory``: an export directory's files are read only from inside it."""
    real, root = os.path.realpath(path), os.path.realpath(directory)
    if is_inside(real, root):
        return True
    docs.problems.append(
        Problem(
            str(path),
            f"is a symlink to {real}, outside {directory}; not read (name that file "
            "itself to import it)",
        )
    )
    return False


def _read_directory(directory: Path, docs: Documents) -> None:
    index_path = directory / INDEX
    if not os.path.lexists(index_path):
        for path in sorted(directory.glob("*.xml")):
            if _stays_inside(directory, path, docs):
                _read_document(path, docs)
        return
    if not _stays_inside(directory, index_path, docs):
        return
    text = _read_text(index_path, docs)
    if text is None:
        return
    try:
        index = json.loads(text)
        entries = index["snapshots"]
        names = [str(e["file"]) for e in entries]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        docs.problems.append(Problem(str(index_path), f"not an index snapshotd wrote: {reason}"))
        return
    if index.get("current") is not None:
        docs.current = str(index["current"])
    for number, (entry, name) in enumerate(zip(entries, names, strict=True)):
        if "/" in name or name.startswith(".") or any(ord(c) < 32 for c in name):
            docs.problems.append(
                Problem(
                    str(index_path),
                    f"names a file outside it, or not a plain file name: {name!r}; "
                    "nothing was read for it",
                )
            )
            continue
        if not _stays_inside(directory, directory / name, docs):
            continue
        item = _read_document(directory / name, docs)
        if item is not None and entry.get("group") is not None:
            _read_group(index_path, number, entry["group"], item, docs)


def _read_group(index_path: Path, number: int, value: object, item: Item, docs: Documents) -> None:
    """The group an index's entry records for its snapshot, checked (untrusted input)."""
    where = f"snapshots[{number}].group"
    try:
        group = groupindex.from_index(value, where, f"{index_path}: {where}")
    except groupindex.BadGroup as exc:
        docs.problems.append(Problem(str(index_path), str(exc)))
        return
    mismatch = groupindex.check_names(item, group)
    if mismatch is not None:
        docs.problems.append(mismatch)
        return
    docs.groups[item.source] = group


def read_documents(paths: Sequence[str]) -> Documents:
    """Snapshot XML files and export directories -> items, or a problem per bad file."""
    docs = Documents()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            _read_directory(path, docs)
        elif path.exists():
            _read_document(path, docs)
        else:
            docs.problems.append(Problem(raw, "no such file or directory"))
    return docs


def catalog_items(catalog: Catalog, domain: DomainInfo, names: Sequence[str] = ()) -> list[Item]:
    """The catalog's snapshots of a domain (all, or the named ones) as import items."""
    rows = catalog.snapshots(domain_uuid=domain.uuid)
    if names:
        known = {r.name for r in rows}
        missing = [n for n in names if n not in known]
        if missing:
            raise ImportRefused(
                f"the catalog has no snapshot {', '.join(map(repr, missing))} of domain "
                f"{domain.name!r} ({domain.uuid})"
            )
        rows = [r for r in rows if r.name in names]
    items = []
    for row in rows:
        source = f"catalog: {row.name}"
        items.append(Item(source, snapxml.parse_snapshot(row.xml, source=source), row.xml))
    return items


# --- import ----------------------------------------------------------------------------------


def existing_snapshots(
    hv: HypervisorAPI, domain: str, records: Sequence[SnapshotRecord] | None = None
) -> dict[str, int | None]:
    """What libvirt has: name -> creation time (from ``records`` when just listed)."""
    found: dict[str, int | None] = {}
    for record in hv.list_snapshots(domain) if records is None else records:
        info = snapxml.parse_snapshot(record.xml, source=f"snapshot {record.name!r}")
        found[record.name] = info.creation_time
    return found


def check_import(
    hv: HypervisorAPI,
    domain: DomainInfo,
    items: Sequence[Item],
    *,
    current: str | None,
    existing: dict[str, int | None] | None = None,
) -> ImportPlan:
    """Every check, against the domain and what libvirt has; raises ImportRefused.

    ``existing`` is what libvirt has (name -> creation time), when the caller has
    just read it."""
    missing: dict[str, list[str]] = {}
    if files.is_local_uri(hv.uri):
        for item in items:
            gone = [p for p in referenced_files(item.info) if not Path(p).exists()]
            if gone:
                missing[item.name] = gone
    result = plan_import(
        items,
        domain=domain.name,
        domain_uuid=domain.uuid,
        existing=existing_snapshots(hv, domain.name) if existing is None else existing,
        missing_files=missing,
        current=current,
    )
    if isinstance(result, list):
        raise import_refused(result)
    return result


def run_import(
    hv: HypervisorAPI,
    domain: DomainInfo,
    plan: ImportPlan,
    *,
    catalog: Catalog | None = None,
) -> tuple[str, ...]:
    """Redefine the plan's snapshots, parents first; all or nothing.

    On a failure the snapshots this run defined are removed again (metadata only,
    children first) and the previous current snapshot is made current again.
    """
    before = hv.current_snapshot(domain.name)
    before_xml = hv.snapshot_xml(domain.name, before, secure=True) if before else None
    defined: list[str] = []
    try:
        for step in plan.to_define:
            hv.redefine_snapshot(
                domain.name, step.item.xml, current=step.action == "redefine as current"
            )
            defined.append(step.item.name)
        if plan.current is not None and plan.current not in defined:
            # Already defined: make it current with its own XML.
            xml = hv.snapshot_xml(domain.name, plan.current, secure=True)
            hv.redefine_snapshot(domain.name, xml, current=True)
    except SnapshotdError as exc:
        pending = [s.item for s in plan.to_define if s.item.name not in defined]
        failed = pending[0].name if pending else plan.current
        where = f" ({pending[0].source})" if pending else " (making it current)"
        _undo(hv, domain.name, defined, before_xml)
        raise SnapshotdError(
            f"redefining snapshot {failed!r}{where} of domain "
            f"{domain.name!r} failed: {exc}; the {len(defined)} snapshot(s) this import had "
            "defined were removed again"
        ) from exc
    if catalog is not None:
        for step in plan.to_define:
            if step.item.info.creation_time is not None:
                catalog.set_libvirt_metadata(
                    domain.uuid, step.item.name, step.item.info.creation_time, True
                )
    return tuple(defined)


def _undo(hv: HypervisorAPI, domain: str, defined: list[str], before_xml: str | None) -> None:
    for name in reversed(defined):
        try:
            hv.delete_snapshot(domain, name, metadata_only=True)
        except SnapshotdError:
            continue  # already gone; the others still go
    if before_xml is not None:
        try:
            hv.redefine_snapshot(domain, before_xml, current=True)
        except SnapshotdError:
            return


# --- replicate ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replicated:
    defined: tuple[str, ...]
    current: str | None
    removed_from_source: tuple[str, ...]
    groups: tuple[tuple[str, str], ...] = ()  # (policy, snapshot): each membership carried


def replicate(
    source: HypervisorAPI,
    target: HypervisorAPI,
    domain: str,
    *,
    remove_source_metadata: bool,
    catalog: Catalog | None = None,
) -> Replicated:
    """Copy a domain's snapshot metadata to the same domain (by UUID) on another host.

    With ``catalog``, each replicated snapshot that is a member of a group there is
    recorded as a member on the target too (a copy: the same snapshot on another URI);
    ``remove_source_metadata`` then removes the source's membership, so the group's
    member is the target's."""
    info = source.domain(domain)
    try:
        there = target.domain(info.uuid)
    except SnapshotdError as exc:
        raise RequestError(
            f"{sanitize_uri(target.uri)} has no domain with UUID {info.uuid} ({info.name}): "
            f"define it there first (virsh -c {sanitize_uri(target.uri)} define FILE); {exc}"
        ) from None
    records = source.list_snapshots(info.name)
    items = []
    for record in records:
        xml = source.snapshot_xml(info.name, record.name, secure=True)
        src = f"{sanitize_uri(source.uri)}: {record.name}"
        items.append(Item(src, snapxml.parse_snapshot(xml, source=src), xml))
    check_machine_types(target, items)
    current = next((r.name for r in records if r.is_current), None)
    plan = check_import(target, there, items, current=current)
    defined = run_import(target, there, plan)
    carried = []
    if catalog is not None:
        carried = groupindex.carry_replicated(catalog, target, there, [s.item for s in plan.steps])
    removed: list[str] = []
    if remove_source_metadata:
        for record in reversed(records):  # children first
            source.delete_snapshot(info.name, record.name, metadata_only=True)
            removed.append(record.name)
        if catalog is not None:
            groupindex.leave_source(catalog, source, info.uuid, carried)
    shown = tuple((group.policy, group.name) for group, _created in carried)
    return Replicated(defined, current, tuple(removed), shown)


def check_machine_types(target: HypervisorAPI, items: Sequence[Item]) -> None:
    """Refuse up front when a snapshot's domain names a machine type the target host's
    QEMU does not offer: libvirt would refuse the redefine half-way (a snapshot from a
    QEMU 10 host carries machine='pc-i440fx-10.0', unknown to an older QEMU)."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for item in items:
        if item.info.domain_xml is None:
            continue
        try:
            found = machine_type(item.info.domain_xml)
        except XMLError:
            continue  # check_import reports a broken document
        if found is not None:
            wanted.setdefault(found, []).append(item.name)
    if not wanted:
        return
    capabilities = target.capabilities()
    missing = []
    for (arch, machine), names in sorted(wanted.items()):
        offered = machine_types(capabilities, arch)
        if machine not in offered:
            similar = ", ".join(
                sorted(m for m in offered if m.startswith(machine.rsplit("-", 1)[0]))[-3:]
            )
            missing.append(
                f"machine type {machine!r} ({arch}) of snapshot(s) {', '.join(names)}: "
                f"{sanitize_uri(target.uri)} offers {similar or 'no machine of that family'}"
            )
    if missing:
        raise RequestError(
            "the target host's QEMU cannot run these snapshots, so libvirt there would "
            "refuse them; nothing was replicated:\n  "
            + "\n  ".join(missing)
            + "\nReplicate to a host whose QEMU is as new as the source's (`virsh "
            "capabilities` lists its machine types), or upgrade QEMU on the target."
        )
