"""`list`'s facts: a domain's snapshots as libvirt has them, and after them the
catalog-only ones (metadata: catalog) that only snapshotd's catalog knows."""

from __future__ import annotations

from dataclasses import dataclass, replace

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.catalog import catalog_exists, open_catalog
from snapshotd.catalog.api import GroupRow
from snapshotd.config.settings import DatabaseSettings
from snapshotd.core import snapxml
from snapshotd.core.model import DomainInfo, SnapshotInfo


@dataclass(frozen=True, slots=True)
class Listed:
    """One snapshot of the domain."""

    info: SnapshotInfo
    parent: str | None
    current: bool | None  # None: catalog-only, libvirt has no say
    catalog_only: bool = False
    policy: str | None = None  # catalog-only: the policy that made it
    group: str | None = None  # the group policy whose group it is a member of


@dataclass(frozen=True, slots=True)
class Listing:
    domain: DomainInfo
    snapshots: tuple[Listed, ...]


def _from_libvirt(rec: SnapshotRecord) -> Listed:
    info = snapxml.parse_snapshot(rec.xml, source=f"snapshot {rec.name!r}")
    return Listed(info, parent=rec.parent, current=rec.is_current)


def catalog_only(
    state_dir: str,
    domain: DomainInfo,
    known: set[str],
    *,
    database: DatabaseSettings | None = None,
) -> list[Listed]:
    """The catalog's snapshots of the domain that libvirt has no metadata of and does
    not list (none when there is no catalog yet)."""
    if not catalog_exists(state_dir, database):
        return []
    listed = []
    with open_catalog(state_dir, database=database) as catalog:
        for row in catalog.snapshots(domain_uuid=domain.uuid):
            if row.libvirt_metadata or row.name in known:
                continue
            info = snapxml.parse_snapshot(row.xml, source=f"catalog: {row.name}")
            listed.append(
                Listed(info, parent=info.parent, current=None, catalog_only=True, policy=row.policy)
            )
    return listed


def snapshots(
    hv: HypervisorAPI,
    domain_name: str,
    state_dir: str,
    *,
    database: DatabaseSettings | None = None,
) -> Listing:
    """Every snapshot of the domain: libvirt's, then the catalog-only ones; each with the
    group it is a member of, if any."""
    domain = hv.domain(domain_name)
    records = hv.list_snapshots(domain.name)
    listed = [_from_libvirt(rec) for rec in records]
    listed += catalog_only(state_dir, domain, {rec.name for rec in records}, database=database)
    member_of = {
        (g.name, m.created_at): g.policy
        for g in groups(state_dir, database=database)
        for m in g.members
        if m.domain_uuid == domain.uuid
    }
    listed = [
        replace(item, group=member_of.get((item.info.name or "", item.info.creation_time or 0)))
        for item in listed
    ]
    return Listing(domain, tuple(listed))


def groups(
    state_dir: str, policy: str | None = None, *, database: DatabaseSettings | None = None
) -> list[GroupRow]:
    """The catalog's consistency groups (of one policy), oldest first."""
    if not catalog_exists(state_dir, database):
        return []
    with open_catalog(state_dir, database=database) as catalog:
        return catalog.groups.all(policy)
