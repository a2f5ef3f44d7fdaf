"""Overlays that nothing uses: what an interrupted libvirt operation leaves behind.

A libvirtd that crashes in the middle of a snapshot or a revert can leave an overlay it
had just made (libvirt 11.3 did, reverting: ``<base>.<epoch>`` beside the image): a
qcow2 file built on one of the domain's images that no disk, no snapshot of libvirt's
and no row of the catalog names.  The daemon's reconcile looks for them after it
connects and reports each one; it deletes nothing (only the admin can tell such a file
from one that something outside libvirt uses).

Only on a local URI: the files of a remote host are not files here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from snapshotd.actions.ports import HypervisorAPI
from snapshotd.actions.prune import backing_chains
from snapshotd.adapters import files
from snapshotd.catalog.api import Catalog
from snapshotd.core import snapxml
from snapshotd.core.model import DomainInfo


@dataclass(frozen=True)
class Stray:
    path: str  # the overlay nothing uses
    backing: str  # the domain's image it is built on


def find_strays(hv: HypervisorAPI, catalog: Catalog, domain: DomainInfo) -> list[Stray]:
    """The overlays of ``domain``'s images, in the directories its files are in, that
    neither this domain (its disks' chains, its snapshots in libvirt or the catalog)
    nor any other domain of the connection (a linked clone) uses."""
    if not files.is_local_uri(hv.uri):
        return []
    ours = {f for _target, chain in backing_chains(hv, domain) for f in chain}
    for record in hv.list_snapshots(domain.name):
        named = snapxml.named_files(record.xml, source=f"snapshot {record.name!r}")
        ours |= {files.absolute(f) for f in named}
    for row in catalog.snapshots(domain_uuid=domain.uuid):
        ours |= {files.absolute(f) for f in row.files}
    ours = {f for path in ours for f in files.backing_chain(path)}
    others = {
        f
        for other in hv.list_domains()
        if other.uuid != domain.uuid
        for disk in other.disks
        if disk.path and disk.source_type == "file"
        for f in files.backing_chain(disk.path)
    }
    found = []
    for directory in sorted({str(Path(f).parent) for f in ours}):
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            path = files.absolute(entry.path)
            if path in ours or path in others or not entry.is_file(follow_symlinks=False):
                continue
            backing = files.backing_file(path)
            if backing is not None and backing in ours:
                found.append(Stray(path, backing))
    return found
