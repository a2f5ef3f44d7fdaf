"""`revert --group`: every member of a consistency group back to the group's snapshot.

Checked for every member before any is touched: the group is in the catalog, every
member is a domain on this connection, and every member still has the snapshot (in
libvirt, or in the catalog to redefine it from).  Then each member is reverted by
actions/revert.py's ``revert`` (redefining from the catalog, making a current snapshot
before an external revert, refreshing the catalog after).  A group's members were all made by one
policy, so they are all the same kind (internal, or external): what this libvirt cannot
revert, it refuses at the first member, before any other is changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapshotd.actions import revert as reverting
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog.api import Catalog, GroupRow
from snapshotd.errors import NotFoundError, RequestError


@dataclass(frozen=True, slots=True)
class Reverted:
    domain: str
    redefined: tuple[str, ...]  # what was redefined from the catalog first
    state: str  # the domain's state afterwards


def revert_group(
    hv: HypervisorAPI,
    catalog: Catalog,
    policy: str,
    snapshot: str,
    *,
    running: bool = False,
    paused: bool = False,
) -> list[Reverted]:
    """Revert every member of ``policy``'s group ``snapshot``; RequestError before any
    member is touched when one of them cannot be."""
    group = _group(catalog, policy, snapshot)
    problems = []
    for member in group.members:
        # The member itself, or its copy on this connection (replicate, import).
        where = group.everywhere(member)
        if hv.uri not in {m.uri for m in where}:
            uris = " and ".join(sanitize_uri(m.uri) for m in where)
            problems.append(f"{member.domain_name} is on {uris}, not this connection")
            continue
        try:
            domain = hv.domain(member.domain_uuid)
        except NotFoundError:
            problems.append(f"{member.domain_name} ({member.domain_uuid}) is not defined here")
            continue
        in_libvirt = hv.snapshot_created(domain.uuid, snapshot) == member.created_at
        if not in_libvirt and catalog.owner(domain.uuid, snapshot, member.created_at) is None:
            problems.append(f"{domain.name} no longer has the snapshot")
    if problems:
        raise RequestError(
            f"group {policy!r} snapshot {snapshot!r} cannot be reverted: "
            + "; ".join(problems)
            + ": nothing was changed"
        )
    done = []
    for member in group.members:
        redefined = reverting.revert(
            hv, catalog, member.domain_uuid, snapshot, running=running, paused=paused
        )
        state = hv.domain(member.domain_uuid).state.value
        done.append(Reverted(member.domain_name, tuple(redefined), state))
    return done


def _group(catalog: Catalog, policy: str, snapshot: str) -> GroupRow:
    for group in catalog.groups.all(policy):
        if group.name == snapshot:
            if group.partial:
                raise RequestError(
                    f"group {policy!r} snapshot {snapshot!r} is partial (some members "
                    "failed when it was taken): revert its members one by one with "
                    "`snapshotd revert --domain`, if that is what you want"
                )
            return group
    known = ", ".join(g.name for g in catalog.groups.all(policy)) or "none"
    raise RequestError(
        f"policy {policy!r} has no group snapshot {snapshot!r} in the catalog "
        f"(its groups: {known}; `snapshotd list --group {policy}`)"
    )
