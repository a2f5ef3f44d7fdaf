"""libvirt's storage pools, as far as a guard needs them: the free space where a
snapshot's files grow on a host whose files are not files here (a remote URI)."""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt
from lxml import etree

from snapshotd.adapters.hypervisor.errors import calling


def space(conn: Any, path: str) -> tuple[str, int, int] | None:
    """(pool name, free bytes, capacity) of the active pool whose target directory holds
    ``path`` (the deepest such pool), refreshed first; None when no pool does."""
    with calling("list storage pools", None):
        pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    best: tuple[int, Any] | None = None
    for pool in pools:
        with calling("read a storage pool", None):
            target = etree.fromstring(pool.XMLDesc(0).encode()).findtext("target/path")
        if not target:
            continue
        root = target.rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(root) and (best is None or len(root) > best[0]):
            best = (len(root), pool)
    if best is None:
        return None
    pool = best[1]
    with calling(f"refresh storage pool {pool.name()}", None):
        with contextlib.suppress(libvirt.libvirtError):  # a pool being built: as it is
            pool.refresh(0)
        _state, capacity, _allocation, available = pool.info()
    return str(pool.name()), int(available), int(capacity)
