"""Consistency groups carried through export, import and replicate.

An export's index records, for each snapshot that is a member of a group in the
catalog, its group: the policy, the name the members share, when the group was taken,
whether it is partial, its pause window and the other members (domain name, UUID and
URI without credentials).  An import reads that back as untrusted input (every field
checked, a problem naming the file and the field) and records the imported snapshot
as a member of that group in this catalog, on the importing connection; replicate
records the target's copy of each member snapshot in the same group.

What "partial" means is what the group run meant: on_member_failure: partial kept
fewer members than it had.  A group that has only some of its members' exports
imported so far is not partial: it is the group, with the members this catalog knows;
importing the others' exports adds them.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters import files
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog.api import AlreadyRecorded, Catalog, GroupMember, GroupRow, SnapshotRow
from snapshotd.config.values import check_policy_name
from snapshotd.core import snapxml
from snapshotd.core.hierarchy import ImportPlan, Item, Problem
from snapshotd.core.model import DomainInfo
from snapshotd.core.naming import check_snapshot_name
from snapshotd.errors import RequestError

# Bounds for untrusted input, far above any real group (max_pause grows by 0.1 s a
# member: a group of 1000 would need 100 s) and any real time, URI or domain name.
MAX_MEMBERS = 1000
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z: a time in seconds no clock gives yet
MAX_URI = 2048
MAX_DOMAIN_NAME = 1024


@dataclass(frozen=True, slots=True)
class OtherMember:
    """Another member of the group, as the index names it."""

    domain: str
    uuid: str
    uri: str  # without credentials


@dataclass(frozen=True, slots=True)
class IndexedGroup:
    """One exported snapshot's group, as its export's index records it."""

    where: str  # the index file and the field, for messages
    policy: str
    name: str
    taken_at: int
    partial: bool
    pause_ms: int | None
    others: tuple[OtherMember, ...]

    def row(self, member: GroupMember) -> GroupRow:
        return GroupRow(
            self.policy, self.name, self.taken_at, (member,), self.partial, self.pause_ms
        )


class BadGroup(Exception):
    """A group field of an index that is not what export writes: the field and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


# --- export --------------------------------------------------------------------------------


def memberships(catalog: Catalog | None) -> dict[tuple[str, str, int], GroupRow]:
    """Every live member snapshot (domain UUID, name, creation time) -> its group."""
    if catalog is None:
        return {}
    found = {}
    for group in catalog.groups.all():
        for member in (*group.members, *group.copies):
            found[(member.domain_uuid, group.name, member.created_at)] = group
    return found


def to_index(group: GroupRow, domain_uuid: str) -> dict[str, object]:
    """The index's ``group`` of one member snapshot of ``group``."""
    return {
        "policy": group.policy,
        "name": group.name,
        "taken_at": group.taken_at,
        "partial": group.partial,
        "pause_ms": group.pause_ms,
        "other_members": [
            {"domain": m.domain_name, "uuid": m.domain_uuid, "uri": sanitize_uri(m.uri)}
            for m in group.members
            if m.domain_uuid != domain_uuid
        ],
    }


# --- import: reading -----------------------------------------------------------------------


def from_index(value: object, field: str, where: str) -> IndexedGroup:
    """An index's ``group`` field checked as untrusted input; BadGroup names the field."""
    if not isinstance(value, dict):
        raise BadGroup(field, f"expected an object, got {_kind(value)}")
    policy = _string(value, field, "policy", 256)
    problem = check_policy_name(policy)
    if problem is not None:
        raise BadGroup(f"{field}.policy", problem)
    name = _string(value, field, "name", 256)
    try:
        check_snapshot_name(name)
    except RequestError as exc:
        raise BadGroup(f"{field}.name", str(exc)) from None
    taken_at = _integer(value, field, "taken_at", MAX_TIME)
    partial = value.get("partial")
    if not isinstance(partial, bool):
        raise BadGroup(f"{field}.partial", f"expected true or false, got {_kind(partial)}")
    pause = value.get("pause_ms")
    pause_ms = None if pause is None else _integer(value, field, "pause_ms", 10**9)
    others = value.get("other_members")
    if not isinstance(others, list):
        raise BadGroup(f"{field}.other_members", f"expected a list, got {_kind(others)}")
    if len(others) >= MAX_MEMBERS:  # with this member, more than a group can have
        raise BadGroup(
            f"{field}.other_members",
            f"{len(others)} other members; a group has at most {MAX_MEMBERS} members",
        )
    found = tuple(_other(o, f"{field}.other_members[{i}]") for i, o in enumerate(others))
    return IndexedGroup(where, policy, name, taken_at, partial, pause_ms, found)


def _other(value: object, field: str) -> OtherMember:
    if not isinstance(value, dict):
        raise BadGroup(field, f"expected an object, got {_kind(value)}")
    domain = _string(value, field, "domain", MAX_DOMAIN_NAME)
    if "/" in domain or _control(domain):
        raise BadGroup(f"{field}.domain", f"{_show(domain)} cannot name a libvirt domain")
    text = _string(value, field, "uuid", 36)
    try:
        canonical = str(uuidlib.UUID(text)) == text.lower()
    except ValueError:
        canonical = False
    if not canonical:
        raise BadGroup(f"{field}.uuid", f"{_show(text)} is not a UUID")
    uri = _string(value, field, "uri", MAX_URI)
    if ":" not in uri or _control(uri) or any(c.isspace() for c in uri):
        raise BadGroup(f"{field}.uri", f"{_show(uri)} is not a libvirt connection URI")
    return OtherMember(domain, text.lower(), uri)


def _string(value: dict[object, object], field: str, key: str, limit: int) -> str:
    found = value.get(key)
    if not isinstance(found, str) or not found:
        raise BadGroup(f"{field}.{key}", f"expected a non-empty string, got {_kind(found)}")
    if len(found) > limit:
        raise BadGroup(f"{field}.{key}", f"{len(found)} characters long; at most {limit}")
    return found


def _integer(value: dict[object, object], field: str, key: str, limit: int) -> int:
    found = value.get(key)
    if isinstance(found, bool) or not isinstance(found, int):
        raise BadGroup(f"{field}.{key}", f"expected a whole number, got {_kind(found)}")
    if not 0 <= found <= limit:
        raise BadGroup(f"{field}.{key}", f"{found} is not between 0 and {limit}")
    return found


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null or absent)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        shown = repr(value)
        return f"the number {shown[:40]}" + ("..." if len(shown) > 40 else "")
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, list) else type(value).__name__


def _show(text: str, limit: int = 60) -> str:
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_names(item: Item, group: IndexedGroup) -> Problem | None:
    """The group's name must be the snapshot's own: a group's members share one name."""
    if group.name == item.name:
        return None
    return Problem(
        group.where,
        f"{_show(group.name)} is not the name of the snapshot in {item.source} "
        f"({_show(item.name)}): a group's members share the snapshot's name",
    )


# --- import: recording ---------------------------------------------------------------------


def conflicts(
    catalog: Catalog, domain: DomainInfo, plan: ImportPlan, groups: Mapping[str, IndexedGroup]
) -> list[Problem]:
    """The imported snapshots that this catalog has in another group already."""
    known = memberships(catalog)
    problems = []
    for step in plan.steps:
        group = groups.get(step.item.source)
        created = step.item.info.creation_time
        if group is None or created is None:
            continue
        there = known.get((domain.uuid, step.item.name, created))
        if there is not None and (there.policy, there.taken_at) != (group.policy, group.taken_at):
            problems.append(
                Problem(
                    group.where,
                    f"snapshot {step.item.name!r} of {domain.name!r} is a member of group "
                    f"{there.policy!r} taken at {there.taken_at} in the catalog "
                    f"({catalog.location}), not of group {group.policy!r} taken at "
                    f"{group.taken_at}",
                )
            )
    return problems


def planned(plan: ImportPlan, domain: DomainInfo, groups: Mapping[str, IndexedGroup]) -> list[str]:
    """What an import would record (for --dry-run)."""
    return [
        f"would record {domain.name}'s snapshot {step.item.name!r} as a member of group "
        f"{group.policy!r}"
        for step in plan.steps
        if (group := groups.get(step.item.source)) is not None
    ]


def record_imported(
    hv: HypervisorAPI,
    catalog: Catalog,
    domain: DomainInfo,
    plan: ImportPlan,
    groups: Mapping[str, IndexedGroup],
) -> list[str]:
    """After the import: each imported snapshot that its index names a member of a group
    is recorded as a member of that group on this connection (with a catalog row of the
    group's policy when the catalog has none: retention keeps or deletes it with its
    group).  Returns what was recorded, one line each."""
    said = []
    local = files.is_local_uri(hv.uri)
    for step in plan.steps:
        group = groups.get(step.item.source)
        created = step.item.info.creation_time
        if group is None or created is None:
            continue
        name = step.item.name
        if catalog.owner(domain.uuid, name, created) is None:
            xml = hv.snapshot_xml(domain.name, name, secure=True)
            named = snapxml.named_files(xml, source=f"snapshot {name!r} from libvirt")
            try:
                catalog.record_snapshot(
                    SnapshotRow(
                        uri=hv.uri,
                        domain_uuid=domain.uuid,
                        domain_name=domain.name,
                        name=name,
                        created_at=created,
                        policy=group.policy,
                        parent=step.item.info.parent,
                        xml=xml,
                        files=tuple(f for f in named if not local or os.path.lexists(f)),
                        libvirt_metadata=True,
                    )
                )
            except AlreadyRecorded:
                said.append(
                    f"{domain.name}: snapshot {name!r} is not recorded in group "
                    f"{group.policy!r}: snapshotd deleted it before, and the catalog keeps "
                    "that (its data may be gone; check it before you use it)"
                )
                continue
        try:
            catalog.groups.join(group.row(GroupMember(hv.uri, domain.uuid, domain.name, created)))
        except AlreadyRecorded as exc:
            said.append(f"{domain.name}: snapshot {name!r} is not recorded in its group: {exc}")
            continue
        said.append(_recorded(catalog, domain, group, created))
    return said


def _recorded(catalog: Catalog, domain: DomainInfo, group: IndexedGroup, created: int) -> str:
    here = catalog.groups.of(domain.uuid, group.name, created)
    known = {m.domain_uuid for m in here.members} if here is not None else set()
    missing = [o for o in group.others if o.uuid not in known]
    line = f"{domain.name}: snapshot {group.name!r} recorded as a member of group {group.policy!r}"
    if not missing:
        return line + f"; the catalog has all its {len(known)} members"
    shown = ", ".join(f"{o.domain} ({o.uuid}, {sanitize_uri(o.uri)})" for o in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return line + f"; not yet its other members {shown}{more}: import their exports too"


# --- replicate -------------------------------------------------------------------------------


def carry_replicated(
    catalog: Catalog, target: HypervisorAPI, there: DomainInfo, items: Sequence[Item]
) -> list[tuple[GroupRow, int]]:
    """The target's copy of each replicated snapshot that is a member of a group joins
    that group, on the target's URI.  Returns each group carried with the creation time
    of the member snapshot, one per snapshot."""
    known = memberships(catalog)
    carried = []
    for item in items:
        created = item.info.creation_time
        if created is None:
            continue
        group = known.get((there.uuid, item.name, created))
        if group is None:
            continue
        member = GroupMember(target.uri, there.uuid, there.name, created)
        catalog.groups.join(
            GroupRow(
                group.policy, group.name, group.taken_at, (member,), group.partial, group.pause_ms
            )
        )
        carried.append((group, created))
    return carried


def leave_source(
    catalog: Catalog,
    source: HypervisorAPI,
    domain_uuid: str,
    carried: Sequence[tuple[GroupRow, int]],
) -> None:
    """After --remove-source-metadata: the source's memberships of the carried snapshots
    go (the target's stay)."""
    for group, created in carried:
        catalog.groups.leave(source.uri, domain_uuid, group.name, created)
