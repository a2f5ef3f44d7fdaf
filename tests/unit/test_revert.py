"""snapshotd.actions.revert.revert with the fake: what each libvirt answers, decided
from that answer (an "unsupported" error) and never from a version number; a current
snapshot before every external revert; the catalog kept true afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapshotd.actions.policyrun import Outcome, PolicyRun
from snapshotd.actions.revert import revert
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.core.model import DomainInfo, DomainState
from snapshotd.errors import RequestError
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml
from tests.policyrun_scenarios import disk_only

OLD = (9, 0, 0)
NEW = (11, 3, 0)


def setup(
    tmp_path: Path, version: tuple[int, int, int]
) -> tuple[FakeHypervisor, MemoryCatalog, FakeClock, DomainInfo]:
    clock = FakeClock()
    hv = FakeHypervisor(clock=clock.timestamp, version=version)
    made = hv.define(domain_xml("web", [("vda", str(tmp_path / "vda.qcow2"))]))
    return hv, MemoryCatalog(), clock, hv.set_state(made.uuid, DomainState.SHUTOFF)


def take(hv: FakeHypervisor, catalog: MemoryCatalog, clock: FakeClock, tmp_path: Path) -> str:
    clock.advance(1)
    domain = hv.domain("web")
    chosen = disk_only("p", domain, tmp_path / "snaps")
    result = PolicyRun(chosen, domain, clock.now()).execute(
        hv, catalog, clock=clock.now, prune=False
    )
    assert result.outcome is Outcome.CREATED, result.error
    return result.snapshot


def test_a_libvirt_that_cannot_revert_externally_says_so_and_the_advice_follows(
    tmp_path: Path,
) -> None:
    hv, catalog, clock, _ = setup(tmp_path, OLD)
    name = take(hv, catalog, clock, tmp_path)
    with pytest.raises(RequestError) as refused:
        revert(hv, catalog, "web", name)
    text = str(refused.value)
    assert "revert to external snapshot not supported yet" in text  # libvirt's own answer
    assert "libvirt 9.0.0 cannot revert" in text
    assert f"vda: {tmp_path / 'vda.qcow2'}" in text  # the image to point the disk back at
    assert hv.current_snapshot("web") == name


def test_a_redefined_chain_gets_its_current_back_before_an_external_revert(
    tmp_path: Path,
) -> None:
    hv, catalog, clock, _ = setup(tmp_path, NEW)
    first = take(hv, catalog, clock, tmp_path)
    second = take(hv, catalog, clock, tmp_path)
    for name in (second, first):  # as after a migration or `virsh snapshot-delete --metadata`
        hv.delete_snapshot("web", name, metadata_only=True)
        catalog.set_libvirt_metadata(hv.domain("web").uuid, name, hv_created(catalog, name), False)
    assert hv.list_snapshots("web") == []

    revert(hv, catalog, "web", first)

    assert not hv.crashed
    # The snapshot the disks were on came back too, as current before the revert, so
    # libvirt's deleting "the current overlays" took its overlay, not first's.
    assert {r.name for r in hv.list_snapshots("web")} == {first, second}
    assert hv.current_snapshot("web") == first
    # The disk now runs on a new overlay built on the first snapshot's image.
    now_on = hv.domain("web").disks[0].path
    assert now_on is not None
    assert now_on.startswith(str(tmp_path / "snaps"))
    assert now_on not in {f for r in catalog.snapshots() for f in r.files}  # first has a child


def test_the_catalog_takes_the_new_overlay_after_an_external_revert(tmp_path: Path) -> None:
    hv, catalog, clock, domain = setup(tmp_path, NEW)
    name = take(hv, catalog, clock, tmp_path)
    before = catalog.find(domain.uuid, name)
    assert before is not None
    clock.advance(60)

    revert(hv, catalog, "web", name)

    after = catalog.find(domain.uuid, name)
    assert after is not None
    now_on = hv.domain("web").disks[0].path
    assert after.files == (now_on,)
    assert after.files != before.files
    assert after.xml == hv.snapshot_xml("web", name, secure=True)


def test_no_current_and_no_snapshot_owning_the_disks_refuses_before_libvirt(
    tmp_path: Path,
) -> None:
    hv, catalog, clock, domain = setup(tmp_path, NEW)
    name = take(hv, catalog, clock, tmp_path)
    hv.delete_snapshot("web", name, metadata_only=True)
    catalog.set_libvirt_metadata(domain.uuid, name, hv_created(catalog, name), False)
    hv.commit_disk("web", "vda")  # someone merged the overlay by hand: the disk is the base

    with pytest.raises(RequestError) as refused:
        revert(hv, catalog, "web", name)

    assert not hv.crashed
    text = str(refused.value)
    assert "no current snapshot" in text
    assert f"vda: {tmp_path / 'vda.qcow2'}" in text
    assert "--redefine --current" in text


def hv_created(catalog: MemoryCatalog, name: str) -> int:
    return next(r.created_at for r in catalog.snapshots() if r.name == name)
