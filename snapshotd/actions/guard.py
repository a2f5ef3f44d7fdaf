"""A policy's guard, measured: the free space of each file system a snapshot's files
grow on, and the backing chain each external disk gets; core/guard.py decides.

Free space is statvfs here for a local connection; for a remote one, libvirt's storage
pool that holds the directory (a directory no pool holds cannot be measured there: the
snapshot goes ahead, and the reason says so).  Chains are read from the qcow2 headers
here, and from libvirt's domain XML (``<backingStore>``) for a remote connection.
"""

from __future__ import annotations

import posixpath

from lxml import etree

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters import files
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.core.guard import Guard
from snapshotd.core.model import DomainInfo, Location, SnapshotSpec


def growing(spec: SnapshotSpec) -> list[str]:
    """The directories a snapshot's data grows in, each once: an external disk's and the
    memory file's new files, an internal disk's image."""
    paths = [d.new_file for d in spec.disks if d.new_file]
    paths += [d.source for d in spec.disks if d.location is Location.INTERNAL and d.source]
    if spec.memory_file:
        paths.append(spec.memory_file)
    return list(dict.fromkeys(posixpath.dirname(p) for p in paths))


def check(
    hv: HypervisorAPI, guard: Guard, domain: DomainInfo, spec: SnapshotSpec
) -> tuple[str | None, str | None]:
    """(why the snapshot is skipped, or None; a note on what could not be measured)."""
    if not guard.active:
        return None, None
    problems: list[str] = []
    unmeasured: list[str] = []
    for found, missing in (_space(hv, guard, spec), _chain(hv, guard, domain, spec)):
        problems += found
        unmeasured += missing
    note = None
    if unmeasured:
        note = (
            f"the guard could not measure {', '.join(unmeasured)} on "
            f"{sanitize_uri(hv.uri)}: not checked (free space there needs a libvirt "
            "storage pool holding the directory, virsh pool-define-as; a shut-off "
            "domain's chain is not in its domain XML)"
        )
    return ("; ".join(problems) or None), note


def _space(hv: HypervisorAPI, guard: Guard, spec: SnapshotSpec) -> tuple[list[str], list[str]]:
    """(the space problems, the directories that could not be measured)."""
    problems: list[str] = []
    unmeasured: list[str] = []
    if guard.min_free is None:
        return problems, unmeasured
    local = files.is_local_uri(hv.uri)
    for directory in growing(spec):
        if local:
            where, free, total = files.free_space(directory)
        else:
            pool = hv.pool_space(directory)
            if pool is None:
                unmeasured.append(directory)
                continue
            name, free, total = pool
            where = f"{directory} (storage pool {name})"
        problem = guard.space_problem(where, free, total)
        if problem is not None:
            problems.append(problem)
    return problems, unmeasured


def _chain(
    hv: HypervisorAPI, guard: Guard, domain: DomainInfo, spec: SnapshotSpec
) -> tuple[list[str], list[str]]:
    """(the chain problems, the disks whose chain could not be measured)."""
    problems: list[str] = []
    unmeasured: list[str] = []
    if not guard.max_chain:
        return problems, unmeasured
    lengths = _chains(hv, domain, files.is_local_uri(hv.uri))
    for disk in spec.disks:
        if disk.location is not Location.EXTERNAL:
            continue
        if disk.target not in lengths:
            unmeasured.append(f"{disk.target}'s backing chain")
            continue
        problem = guard.chain_problem(domain.name, disk.target, lengths[disk.target] + 1)
        if problem is not None:
            problems.append(problem)
    return problems, unmeasured


def _chains(hv: HypervisorAPI, domain: DomainInfo, local: bool) -> dict[str, int]:
    """Each file disk's backing chain length now (its image counts), by target; a disk
    whose chain libvirt does not show (a remote shut-off domain) is left out."""
    if local:
        return {
            d.target: len(files.backing_chain(d.path))
            for d in domain.disks
            if d.path is not None and d.source_type == "file"
        }
    root = etree.fromstring(hv.domain_xml(domain.name).encode())
    found = {}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if target is None or disk.find("source") is None or disk.find("backingStore") is None:
            continue
        length, store = 1, disk.find("backingStore")
        while store is not None and store.find("source") is not None:
            length, store = length + 1, store.find("backingStore")
        found[str(target.get("dev"))] = length
    return found
