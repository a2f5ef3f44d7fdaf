"""The progress shown on a terminal while a long libvirt call runs: the memory file of
an external memory snapshot as it grows, and the merges that retention's deletions start.
(output.progress draws it; quiet when stderr is not a terminal.)"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.cli import output
from snapshotd.core.model import DomainInfo
from snapshotd.errors import SnapshotdError


def memory(domain: DomainInfo, memory_file: str | None) -> contextlib.AbstractContextManager[None]:
    """How much of the guest's RAM the snapshot's memory file holds so far (nothing
    shown when the snapshot writes no memory file)."""
    ram = domain.memory_kib * 1024 if domain.memory_kib else None
    poll = output.file_progress(memory_file, ram)
    return output.progress(f"memory of {domain.name}", poll, sys.stderr)


@contextlib.contextmanager
def retention(uri: str, domain: DomainInfo) -> Iterator[None]:
    """Show the progress of the merges that retention starts, on a terminal.

    The block jobs are read on a second connection, opened at the first sample (so
    only on a terminal): on the connection that runs the deletion libvirt 9.0 holds
    the answers until the merge is over.
    """
    targets = tuple(d.target for d in domain.disks)
    watcher: list[Hypervisor | None] = []

    def poll() -> tuple[int, int] | None:
        if not watcher:
            try:
                watcher.append(Hypervisor.open(uri))
            except SnapshotdError:
                watcher.append(None)  # no progress shown, the deletion goes on
        opened = watcher[0]
        return opened.job_progress(domain.name, targets) if opened else None

    try:
        with output.progress(f"retention of {domain.name}", poll, sys.stderr):
            yield
    finally:
        for opened in watcher:
            if opened is not None:
                opened.close()
