"""Adopt a domain that arrived from another host of a shared catalog (``virsh migrate``,
a cluster manager): the catalog's snapshots of it that this host's libvirt lacks are
redefined here, parents first, so its history and retention go on where it runs now.

Only for a domain that runs here: no other host can have it running, and libvirt
refuses to migrate a domain with snapshot metadata, so the source had none left.  A
shut-off domain may be defined on other hosts with their own metadata; it is left alone.
The snapshots' files must be on storage this host reaches (docs/fleet.md).
"""

from __future__ import annotations

from snapshotd.actions import metadata
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.catalog import Catalog
from snapshotd.core import snapxml
from snapshotd.core.hierarchy import Item
from snapshotd.core.model import DomainInfo
from snapshotd.core.plan import ONLINE_STATES


def adopt(hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo) -> tuple[str, ...]:
    """Redefine what the catalog has of ``domain`` and ``hv`` lacks; what was redefined."""
    if domain.state not in ONLINE_STATES:
        return ()
    existing = {r.name for r in hv.list_snapshots(domain.name)}
    rows = [
        r
        for r in catalog.snapshots(domain_uuid=domain.uuid)
        if r.libvirt_metadata and r.name not in existing
    ]
    if not rows:
        return ()
    items = []
    for row in rows:
        source = f"catalog: {row.name}"
        items.append(Item(source, snapxml.parse_snapshot(row.xml, source=source), row.xml))
    plan = metadata.check_import(hv, domain, items, current=None)
    return metadata.run_import(hv, domain, plan, catalog=catalog)
