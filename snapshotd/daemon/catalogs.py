"""The daemon's catalog connections: how it opens them, and the pool its jobs borrow from.

The daemon opens every catalog through one ``CatalogFactory``, snapshotd.catalog's
``open_catalog`` unless it is given another (a unit test gives it one that returns an
in-memory catalog), at the ``CatalogPlace`` its settings name (a reload may change it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapshotd.catalog import Catalog
from snapshotd.config.settings import DatabaseSettings, Settings


class CatalogFactory(Protocol):
    """``open_catalog``'s signature: the catalog in a database, or in a state directory."""

    def __call__(
        self, state_dir: str, *, shared: bool = False, database: DatabaseSettings | None = None
    ) -> Catalog: ...


@dataclass(frozen=True, slots=True)
class CatalogPlace:
    """Where the settings keep the catalog: ``database`` (snapshotd.yaml's ``catalog:``)
    when it is set, else SQLite in ``state_dir``."""

    state_dir: str
    database: DatabaseSettings | None = None

    @classmethod
    def of(cls, settings: Settings) -> CatalogPlace:
        return cls(settings.state_dir, settings.catalog)

    def open(self, factory: CatalogFactory, *, shared: bool = False) -> Catalog:
        return factory(self.state_dir, shared=shared, database=self.database)

    @property
    def journal(self) -> CatalogPlace:
        """Where a fleet host records while its shared catalog cannot be reached: a
        SQLite catalog of its own in the state directory (snapshotd.actions.journal)."""
        return CatalogPlace(str(Path(self.state_dir) / JOURNAL))

    def journal_exists(self) -> bool:
        return (Path(self.state_dir) / JOURNAL / "catalog.sqlite").exists()


JOURNAL = "offline"  # the journal's folder in the state directory


class Journal:
    """Who writes to the journal: offline jobs do, one at a time or many; the loop merges
    it into the shared catalog only while none does (``idle``), and a job that would
    write meanwhile waits for the merge."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._writers = 0

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._guard:
            self._writers += 1
        try:
            yield
        finally:
            with self._guard:
                self._writers -= 1

    @contextlib.contextmanager
    def idle(self) -> Iterator[bool]:
        """True while no job writes to the journal (and none starts until the end)."""
        with self._guard:
            yield self._writers == 0


class CatalogPool:
    """Catalog connections for jobs, each kept open for the next job afterwards.

    Opening SQLite costs more than a snapshot's whole planning (and PostgreSQL, a
    connection and its authentication); connections are per place (a reload may change
    it) and used by one job at a time.
    """

    def __init__(self, factory: CatalogFactory) -> None:
        self._factory = factory
        self._idle: dict[CatalogPlace, list[Catalog]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self, place: CatalogPlace) -> Iterator[Catalog]:
        """A catalog at ``place`` for one job; back to the pool after it, unless the
        job raised."""
        with self._lock:
            idle = self._idle.setdefault(place, [])
            catalog = idle.pop() if idle else None
        if catalog is None:
            catalog = place.open(self._factory, shared=True)
        try:
            yield catalog
        except BaseException:
            catalog.close()  # a failure may have left it mid-transaction: not reused
            raise
        with self._lock:
            self._idle.setdefault(place, []).append(catalog)

    def discard(self, place: CatalogPlace) -> None:
        """Close the idle connections to ``place`` (a journal about to be removed)."""
        with self._lock:
            for catalog in self._idle.pop(place, []):
                catalog.close()

    def close(self) -> None:
        """Close every idle connection (at the daemon's exit)."""
        with self._lock:
            for idle in self._idle.values():
                for catalog in idle:
                    catalog.close()
            self._idle.clear()
