"""Revert a domain to one of its snapshots, as libvirt and the snapshot allow.

``revert`` first makes sure libvirt has the snapshot (redefining it, and its
ancestors, from the catalog when libvirt lost the metadata: actions/metadata.py's
import), then reverts; after an external revert, what the revert discarded is
forgotten by the catalog.  `snapshotd revert --domain` and `revert --group`
(actions/grouprevert.py) call it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from snapshotd.actions import snapshot as snapshot_action
from snapshotd.actions.metadata import check_import, existing_snapshots, run_import
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters import files
from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.catalog.api import Catalog, SnapshotRow
from snapshotd.core import snapxml
from snapshotd.core.domain import parse_domain
from snapshotd.core.hierarchy import Item
from snapshotd.core.model import DomainInfo, DomainState, SnapshotInfo
from snapshotd.errors import LibvirtError, RequestError, XMLError


def revert(
    hv: HypervisorAPI,
    catalog: Catalog,
    domain: str,
    snapshot: str,
    *,
    running: bool = False,
    paused: bool = False,
) -> list[str]:
    """Revert to a snapshot, redefining it (and any missing ancestors) from the catalog
    first when libvirt has no metadata for it.  Returns what was redefined.

    Before an external revert the domain must have a current snapshot: libvirt (9.9 and
    newer) deletes the current snapshot's overlays as part of it, and libvirt 11.3 was
    seen crashing when there was none.  Whether this libvirt can revert to an external
    snapshot at all is its own answer (an "unsupported" error), not a version compared.
    After the revert the catalog's rows take libvirt's XML again (a revert to an
    external snapshot gives the target new overlay files) and forget the overlays
    libvirt discarded.
    """
    info = hv.domain(domain)
    records = hv.list_snapshots(info.name)
    existing = existing_snapshots(hv, info.name, records)
    rows = {r.name: r for r in catalog.snapshots(domain_uuid=info.uuid)}
    if snapshot in existing:
        xml = hv.snapshot_xml(info.name, snapshot)
    elif snapshot in rows:
        xml = rows[snapshot].xml
    else:
        raise RequestError(
            f"domain {info.name!r} has no snapshot {snapshot!r}, in libvirt or in "
            "snapshotd's catalog (`snapshotd list --domain` shows both)"
        )
    parsed = snapxml.parse_snapshot(xml, source=f"snapshot {snapshot!r}")
    external = parsed.memory == "external" or any(d.snapshot == "external" for d in parsed.disks)
    leaf = None
    if external and not any(r.is_current for r in records):
        leaf = _leaf(info, records, rows, snapshot)
    redefined: list[str] = []
    items: list[Item] = []
    for name in (snapshot, leaf):
        if name is not None and name not in existing:
            chain = _with_ancestors(catalog, info, name, existing)
            items.extend(i for i in chain if i.name not in {j.name for j in items})
    if items or leaf is not None:
        plan = check_import(hv, info, items, current=leaf, existing=existing)
        redefined = list(run_import(hv, info, plan, catalog=catalog))
    in_use = {d.path for d in info.disks if d.path}
    try:
        hv.revert_snapshot(info.name, snapshot, running=running, paused=paused)
    except LibvirtError as exc:
        if external and exc.unsupported:
            version = ".".join(map(str, hv.libvirt_version()))
            raise RequestError(
                _external_advice(info.name, snapshot, parsed, version, exc.reason)
            ) from None
        raise
    snapshot_action.refresh_rows(hv, catalog, info)
    if external:
        _forget_discarded(hv, catalog, info, in_use)
    return redefined


def _leaf(
    domain: DomainInfo, records: Sequence[SnapshotRecord], rows: dict[str, SnapshotRow], target: str
) -> str:
    """The snapshot whose overlays the domain's disks use now, in libvirt or in the
    catalog: the one libvirt must know as current before an external revert.

    libvirt (9.9 and newer) deletes the current snapshot's overlays in an external
    revert, and libvirt 11.3 was seen crashing when there was no current snapshot.
    Marking any other snapshot current would have it delete files another snapshot is
    built on, so when none owns the files in use the revert is refused.
    """
    in_use = {d.target: d.path for d in domain.disks if d.path}
    known = {r.name for r in records}
    candidates = [(r.name, r.xml) for r in records] + [
        (name, row.xml) for name, row in rows.items() if name not in known
    ]
    for name, xml in reversed(candidates):  # the newest first
        source = f"snapshot {name!r}"
        disks = (
            snapxml.revert_disks(xml, source=source)
            or snapxml.parse_snapshot(xml, source=source).disks
        )
        made = {d.name: d.source_file for d in disks if d.snapshot == "external"}
        if made and all(in_use.get(t) == path for t, path in made.items()):
            return name
    using = ", ".join(f"{t}: {p}" for t, p in sorted(in_use.items())) or "none"
    raise RequestError(
        f"cannot revert domain {domain.name!r} to external snapshot {target!r}: libvirt "
        "knows no current snapshot for it, and no snapshot made the files its disks use "
        f"now ({using}). An external revert deletes the current snapshot's overlay "
        "files, so libvirt must know which snapshot that is. Mark it with `virsh "
        f"snapshot-create {domain.name} FILE --redefine --current` (FILE from `virsh "
        f"snapshot-dumpxml {domain.name} NAME --security-info`) and run the revert again."
    )


def _forget_discarded(
    hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo, in_use: set[str]
) -> None:
    """After an external revert: the overlays the disks used before it, and use no more,
    were discarded by libvirt (the writes since the current snapshot); a row that listed
    one lists it no longer, so retention never counts on a file that is gone.  Where
    snapshotd can see the files (a local URI), only a file that is really gone leaves."""
    now = {d.path for d in hv.domain(domain.name).disks if d.path}
    local = files.is_local_uri(hv.uri)
    discarded = {p for p in in_use - now if not (local and os.path.lexists(p))}
    if not discarded:
        return
    for row in catalog.snapshots(domain_uuid=domain.uuid):
        kept = tuple(f for f in row.files if f not in discarded)
        if kept != row.files:
            catalog.update_snapshot(domain.uuid, row.name, row.created_at, xml=row.xml, files=kept)


def _with_ancestors(
    catalog: Catalog, domain: DomainInfo, snapshot: str, existing: dict[str, int | None]
) -> list[Item]:
    rows = {r.name: r for r in catalog.snapshots(domain_uuid=domain.uuid)}
    if snapshot not in rows:
        raise RequestError(
            f"domain {domain.name!r} has no snapshot {snapshot!r}, in libvirt or in "
            "snapshotd's catalog (`snapshotd list --domain` shows both)"
        )
    chain: list[Item] = []
    name: str | None = snapshot
    while name is not None and name not in existing and name in rows and len(chain) < 1000:
        source = f"catalog: {name}"
        parsed = snapxml.parse_snapshot(rows[name].xml, source=source)
        chain.append(Item(source, parsed, rows[name].xml))
        name = parsed.parent
    return list(reversed(chain))


def _external_advice(
    domain: str, snapshot: str, parsed: SnapshotInfo, version: str, reason: str
) -> str:
    lines = [
        f"libvirt {version} cannot revert domain {domain!r} to external snapshot "
        f"{snapshot!r}: {reason}. (libvirt reverts to external snapshots from 9.9 on.)",
        "Instead: upgrade libvirt to 9.9 or newer, or restore it by hand: shut the domain "
        f"off (virsh shutdown {domain}), point each disk back at the image the snapshot kept",
    ]
    if parsed.domain_xml is not None:
        try:
            then = parse_domain(parsed.domain_xml, DomainState.SHUTOFF)
        except XMLError:
            then = None
        for disk in then.disks if then is not None else ():
            if disk.path:
                lines.append(f"  {disk.target}: {disk.path}")
    lines.append(
        f"with virsh edit {domain}, and start it; a memory file, if any, can only be "
        "restored with libvirt 9.9 or newer."
    )
    return "\n".join(lines)
