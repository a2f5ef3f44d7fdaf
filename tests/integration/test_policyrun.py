"""One policy run against real libvirt: tests/policyrun_scenarios.py's scenarios, each on
real QEMU domains (target.URI) through snapshotd's Hypervisor and the SQLite catalog.

tests/unit/test_policyrun.py runs the same scenarios through the fakes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import Catalog, open_catalog
from snapshotd.core.model import DomainInfo, DomainState
from tests.integration.domains import DomainFactory, ScratchDomain, commit_active
from tests.policyrun_scenarios import SCENARIOS, Env


class LibvirtEnv:
    """tests/policyrun_scenarios.py's Env on the tested libvirt host."""

    def __init__(
        self, factory: DomainFactory, hv: Hypervisor, catalog: Catalog, root: Path
    ) -> None:
        self.hv = hv
        self.catalog = catalog
        self.root = root
        self._factory = factory
        self._made: dict[str, ScratchDomain] = {}

    def domain(self, state: DomainState) -> DomainInfo:
        made = self._factory(state=state.value)
        self._made[made.uuid] = made
        return self.hv.domain(made.uuid)

    def directory(self, domain: DomainInfo) -> Path:
        return self._made[domain.uuid].directory

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def tick(self) -> None:
        # Into the next second: a snapshot made from now on is a second newer.
        time.sleep(1.05 - time.time() % 1)

    def break_next_create(self, domain: DomainInfo) -> None:
        # qemu-img, which snapshots a shut-off domain, can no longer open the image.
        image = self._made[domain.uuid].image("vda")
        image.rename(image.with_name(image.name + ".away"))

    def hand_made(self, domain: DomainInfo, name: str) -> None:
        xml = f"<domainsnapshot><name>{name}</name></domainsnapshot>"
        self._made[domain.uuid].dom.snapshotCreateXML(xml, 0)

    def merge_disk(self, domain: DomainInfo, target: str) -> None:
        commit_active(self._made[domain.uuid].dom, target)


@pytest.fixture
def env(
    domain_factory: DomainFactory, hypervisor: Hypervisor, tmp_path: Path
) -> Iterator[LibvirtEnv]:
    with open_catalog(str(tmp_path / "state")) as catalog:
        yield LibvirtEnv(domain_factory, hypervisor, catalog, tmp_path)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(scenario: Callable[[Env], None], env: LibvirtEnv) -> None:
    scenario(env)
