"""Snapshot hierarchies: checking a set of snapshot XML documents before redefining them.

Pure: the caller reads the files, asks libvirt what it already has and which files
exist, and hands the answers in.  ``plan_import`` either returns the order to
redefine in (parents first) or every problem found, each naming its source.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from snapshotd.core.model import SnapshotInfo


@dataclass(frozen=True, slots=True)
class Item:
    """One snapshot to import: where it came from, its parsed form and its text."""

    source: str  # a file name, or "catalog" with the snapshot's name
    info: SnapshotInfo
    xml: str

    @property
    def name(self) -> str:
        return self.info.name or ""


@dataclass(frozen=True, slots=True)
class Step:
    item: Item
    action: str  # "redefine" | "redefine as current" | "already defined"


@dataclass(frozen=True, slots=True)
class ImportPlan:
    steps: tuple[Step, ...]
    current: str | None
    notes: tuple[str, ...] = ()

    @property
    def to_define(self) -> list[Step]:
        return [s for s in self.steps if s.action != "already defined"]


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass(slots=True)
class _Checks:
    problems: list[Problem] = field(default_factory=list)

    def add(self, source: str, message: str) -> None:
        self.problems.append(Problem(source, message))


def referenced_files(info: SnapshotInfo) -> list[str]:
    """The local files a snapshot needs: external disk images and the memory file."""
    found = [
        d.source_file for d in info.disks if d.snapshot == "external" and d.source_file is not None
    ]
    if info.memory == "external" and info.memory_file:
        found.append(info.memory_file)
    return found


def order(items: Sequence[Item]) -> tuple[list[Item], list[list[str]]]:
    """Parents before children, oldest first among siblings; and any cycles found.

    A parent outside ``items`` does not hold its children back.
    """
    by_name = {i.name: i for i in items}
    children: dict[str, list[str]] = {}
    waiting: dict[str, int] = {}
    for item in items:
        parent = item.info.parent
        inside = parent is not None and parent in by_name
        waiting[item.name] = 1 if inside else 0
        if inside and parent is not None:
            children.setdefault(parent, []).append(item.name)

    def rank(name: str) -> tuple[int, str]:
        return (by_name[name].info.creation_time or 0, name)

    ready = [rank(n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    result: list[Item] = []
    while ready:
        _, name = heapq.heappop(ready)
        result.append(by_name[name])
        for child in children.get(name, []):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, rank(child))
    cycles: list[list[str]] = []
    stuck = {n for n, count in waiting.items() if count > 0}
    seen: set[str] = set()
    for start in sorted(stuck):
        if start in seen:
            continue
        path: list[str] = []
        step: str | None = start
        while step is not None and step in stuck and step not in path:
            path.append(step)
            step = by_name[step].info.parent
        seen.update(path)
        if step is not None and step in path:
            cycles.append([*path[path.index(step) :], step])
    return result, cycles


def _check_alone(item: Item, seen: dict[str, str], checks: _Checks) -> bool:
    """What one document must have whatever the domain; False when it has no name."""
    info = item.info
    if not info.name:
        checks.add(item.source, "has no <name>; libvirt needs one to redefine it")
        return False
    if info.name in seen:
        checks.add(item.source, f"snapshot {info.name!r} is also in {seen[info.name]}")
    seen.setdefault(info.name, item.source)
    if info.creation_time is None:
        checks.add(item.source, f"snapshot {info.name!r} has no <creationTime>")
    if info.state is None:
        checks.add(item.source, f"snapshot {info.name!r} has no <state>")
    return True


def _check_for_domain(
    item: Item,
    *,
    domain: str,
    domain_uuid: str,
    existing: Mapping[str, int | None],
    missing: Iterable[str],
    checks: _Checks,
) -> None:
    """What a document must agree on with the domain it is imported into."""
    info = item.info
    if info.domain_uuid is None:
        checks.add(
            item.source,
            f"snapshot {info.name!r} has no <domain> definition, so it cannot be checked "
            f"against domain {domain!r}; export it again with its domain XML",
        )
    elif info.domain_uuid.lower() != domain_uuid.lower():
        checks.add(
            item.source,
            f"snapshot {info.name!r} belongs to the domain with UUID {info.domain_uuid}, "
            f"not {domain!r} ({domain_uuid})",
        )
    there = existing.get(item.name)
    if there is not None and info.creation_time is not None and there != info.creation_time:
        checks.add(
            item.source,
            f"domain {domain!r} already has a different snapshot named {info.name!r} "
            f"(created {there}, this one {info.creation_time}); delete or rename one",
        )
    for path in missing:
        checks.add(
            item.source,
            f"snapshot {info.name!r} refers to {path}, which does not exist on this host",
        )


def _action(name: str, existing: Mapping[str, int | None], current: str | None) -> str:
    if name in existing:
        return "already defined"
    return "redefine as current" if name == current else "redefine"


def plan_import(
    items: Sequence[Item],
    *,
    domain: str,
    domain_uuid: str | None,
    existing: Mapping[str, int | None],
    missing_files: Mapping[str, Iterable[str]] | None = None,
    current: str | None = None,
) -> ImportPlan | list[Problem]:
    """Check ``items`` against the domain and what libvirt has; order them.

    ``existing`` maps the names of the snapshots libvirt already has for the domain
    to their creation times.  ``missing_files`` maps a snapshot's name to the files
    it refers to that do not exist.  ``current`` names the snapshot to make current;
    without it, the one an export's index or libvirt's XML marks current is used.
    ``domain_uuid`` None checks each document alone (the validator mode of
    ``import --dry-run`` without a domain).
    """
    checks = _Checks()
    seen: dict[str, str] = {}
    for item in items:
        if _check_alone(item, seen, checks) and domain_uuid is not None:
            missing = (missing_files or {}).get(item.name, ())
            _check_for_domain(
                item,
                domain=domain,
                domain_uuid=domain_uuid,
                existing=existing,
                missing=missing,
                checks=checks,
            )
    names = {i.name for i in items if i.name}
    if domain_uuid is not None:
        for item in items:
            parent = item.info.parent
            if item.name and parent is not None and parent not in names and parent not in existing:
                checks.add(
                    item.source,
                    f"the parent of {item.name!r}, {parent!r}, is neither among the snapshots "
                    f"imported nor defined for domain {domain!r}; import it too",
                )
    ordered, cycles = order([i for i in items if i.name])
    for cycle in cycles:
        first = next(i for i in items if i.name == cycle[0])
        checks.add(first.source, "the parents form a cycle: " + " -> ".join(cycle))
    if current is None:
        marked = [i.name for i in items if i.info.current]
        current = marked[-1] if marked else None
    elif current not in names and current not in existing:
        checks.add("--current", f"{current!r} is not among the snapshots imported or defined")
    if checks.problems:
        return checks.problems
    steps = [Step(item, _action(item.name, existing, current)) for item in ordered]
    notes = []
    if current is not None and current in existing:
        notes.append(f"{current!r} is already defined; it is made current")
    return ImportPlan(tuple(steps), current, tuple(notes))
