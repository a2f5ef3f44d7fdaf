"""The daemon's catalog connections: how it opens them, and the pool its jobs borrow from.

The daemon opens every catalog through one ``CatalogFactory``, snapshotd.catalog's
``open_catalog`` unless it is given another (a unit test gives it one that returns an
in-memory catalog).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Protocol

from snapshotd.catalog import Catalog


class CatalogFactory(Protocol):
    """``open_catalog``'s signature: the catalog of a state directory."""

    def __call__(self, state_dir: str, *, shared: bool = False) -> Catalog: ...


class CatalogPool:
    """Catalog connections for jobs, each kept open for the next job afterwards.

    Opening SQLite costs more than a snapshot's whole planning; connections are per
    state directory (a reload may change it) and used by one job at a time.
    """

    def __init__(self, factory: CatalogFactory) -> None:
        self._factory = factory
        self._idle: dict[str, list[Catalog]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self, state_dir: str) -> Iterator[Catalog]:
        """A catalog of ``state_dir`` for one job; back to the pool after it, unless the
        job raised."""
        with self._lock:
            idle = self._idle.setdefault(state_dir, [])
            catalog = idle.pop() if idle else None
        if catalog is None:
            catalog = self._factory(state_dir, shared=True)
        try:
            yield catalog
        except BaseException:
            catalog.close()  # a failure may have left it mid-transaction: not reused
            raise
        with self._lock:
            self._idle.setdefault(state_dir, []).append(catalog)

    def close(self) -> None:
        """Close every idle connection (at the daemon's exit)."""
        with self._lock:
            for idle in self._idle.values():
                for catalog in idle:
                    catalog.close()
            self._idle.clear()
