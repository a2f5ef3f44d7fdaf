"""Retention's deletes (actions/prune.py) through FakeHypervisor and MemoryCatalog."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from snapshotd.actions.policyrun import Outcome, PolicyRun
from snapshotd.actions.prune import prune
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState, Request
from snapshotd.core.policy import Metadata, Policy
from snapshotd.core.retention import Retention
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml
from tests.policyrun_scenarios import disk_only, policy


@dataclass
class Fakes:
    clock: FakeClock
    hv: FakeHypervisor
    catalog: MemoryCatalog
    root: Path

    def domain(self, state: DomainState) -> DomainInfo:
        made = self.hv.define(domain_xml("web", [("vda", str(self.root / "vda.qcow2"))]))
        return self.hv.set_state(made.uuid, state)

    def take(self, chosen: Policy, domain: DomainInfo) -> str:
        """One run of ``chosen`` without retention, a second after the last; its name."""
        self.clock.advance(1)
        fresh = self.hv.domain(domain.uuid)
        result = PolicyRun(chosen, fresh, self.clock.now()).execute(
            self.hv, self.catalog, clock=self.clock.now, prune=False
        )
        assert result.outcome is Outcome.CREATED, result.error
        return result.snapshot

    def libvirt_names(self, domain: DomainInfo) -> list[str]:
        return [r.name for r in self.hv.list_snapshots(domain.name)]

    def deletes(self) -> list[tuple[str, str | None]]:
        """(outcome, snapshot) of the delete operations, oldest first."""
        ops = reversed(self.catalog.operations())
        return [(o.outcome, o.snapshot) for o in ops if o.operation == "delete"]


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    clock = FakeClock()
    return Fakes(clock, FakeHypervisor(clock=clock.timestamp), MemoryCatalog(), tmp_path)


def test_the_policy_s_own_snapshots_go_oldest_first_and_are_logged(fakes: Fakes) -> None:
    domain = fakes.domain(DomainState.SHUTOFF)
    keep = policy("keep", domain, disks=Request.INTERNAL, retention=Retention(keep_last=2))
    other = policy("other", domain, disks=Request.INTERNAL)
    taken = [fakes.take(keep, domain) for _ in range(2)]
    theirs = fakes.take(other, domain)
    taken += [fakes.take(keep, domain) for _ in range(2)]
    report = prune(fakes.hv, fakes.catalog, keep, domain, fakes.clock.now())
    assert report.deleted == taken[:2]
    assert report.to_delete == taken[:2]
    assert (report.failed, report.kept) == ([], [])
    assert fakes.libvirt_names(domain) == [theirs, *taken[2:]]
    assert [r.name for r in fakes.catalog.snapshots(policy="keep")] == taken[2:]
    assert fakes.deletes() == [("ok", taken[0]), ("ok", taken[1])]


def test_a_dry_run_judges_and_changes_nothing(fakes: Fakes) -> None:
    domain = fakes.domain(DomainState.SHUTOFF)
    keep = policy("keep", domain, disks=Request.INTERNAL, retention=Retention(keep_last=1))
    taken = [fakes.take(keep, domain) for _ in range(3)]
    report = prune(fakes.hv, fakes.catalog, keep, domain, fakes.clock.now(), dry_run=True)
    assert report.dry_run
    assert report.to_delete == taken[:2]
    assert report.deleted == []
    assert fakes.libvirt_names(domain) == taken
    assert fakes.deletes() == []


def test_a_snapshot_made_again_by_hand_under_our_name_is_not_ours(fakes: Fakes) -> None:
    domain = fakes.domain(DomainState.SHUTOFF)
    keep = policy("keep", domain, disks=Request.INTERNAL, retention=Retention(keep_last=1))
    first = fakes.take(keep, domain)
    # Deleted behind snapshotd's back and made again by hand: same name, later time.
    fakes.hv.delete_snapshot(domain.name, first)
    fakes.clock.advance(5)
    xml = f"<domainsnapshot><name>{first}</name></domainsnapshot>"
    fakes.hv.create_snapshot_secure(domain.name, xml, CreateFlag(0))
    newest = fakes.take(keep, domain)
    report = prune(fakes.hv, fakes.catalog, keep, domain, fakes.clock.now())
    assert report.deleted == []
    assert sorted(fakes.libvirt_names(domain)) == sorted([first, newest])


def test_a_delete_libvirt_refuses_is_reported_and_the_next_one_goes(fakes: Fakes) -> None:
    domain = fakes.domain(DomainState.RUNNING)
    retention = Retention(keep_last=1)
    # The policy changed between runs: first external (FakeHypervisor does not merge
    # overlays, so libvirt refuses the delete), then internal checkpoints.
    external = disk_only("p", domain, fakes.root / "snaps", retention=retention)
    internal = policy("p", domain, memory=Request.INTERNAL, retention=retention)
    old = fakes.take(external, domain)
    taken = [fakes.take(internal, domain) for _ in range(2)]
    report = prune(fakes.hv, fakes.catalog, internal, domain, fakes.clock.now())
    ((name, error),) = report.failed
    assert name == old
    assert "does not merge an external snapshot's overlays" in error
    assert report.deleted == [taken[0]]
    assert fakes.libvirt_names(domain) == [old, taken[1]]
    assert [r.name for r in fakes.catalog.snapshots(policy="p")] == [old, taken[1]]
    assert fakes.deletes() == [("failed", old), ("ok", taken[0])]


def test_catalog_only_snapshots_in_use_are_kept_and_logged(fakes: Fakes) -> None:
    domain = fakes.domain(DomainState.RUNNING)
    chosen = disk_only(
        "cat",
        domain,
        fakes.root / "snaps",
        retention=Retention(keep_last=1),
        metadata=Metadata.CATALOG,
    )
    taken = [fakes.take(chosen, domain) for _ in range(2)]
    report = prune(fakes.hv, fakes.catalog, chosen, domain, fakes.clock.now())
    ((name, why),) = report.kept
    assert name == taken[0]
    assert f"virsh blockcommit {domain.name} vda --active --pivot" in why
    assert fakes.deletes() == [("kept", taken[0])]
    fakes.hv.commit_disk(domain.uuid, "vda")
    report = prune(fakes.hv, fakes.catalog, chosen, domain, fakes.clock.now())
    assert report.deleted == [taken[0]]
    assert sorted(p.name for p in (fakes.root / "snaps").iterdir()) == [f"web.vda.{taken[1]}.qcow2"]
    assert fakes.deletes() == [("kept", taken[0]), ("ok", taken[0])]


def test_a_fleet_prunes_by_the_domain_s_whole_history_each_host_its_own(
    tmp_path: Path,
) -> None:
    """A shut-off domain defined on two hosts sharing a catalog, snapshots taken by
    either: each host's retention counts both hosts' snapshots (keep_last 2 of 5 in
    all), deletes only those its own libvirt holds, and names the others' holder; the
    other host's prune then deletes the rest by the same verdicts."""
    clock = FakeClock()
    shared = MemoryCatalog()
    catalogs = {"kvm-a": shared.as_host("kvm-a"), "kvm-b": shared.as_host("kvm-b")}
    hvs = {h: FakeHypervisor(clock=clock.timestamp) for h in catalogs}
    uuid = "5e1ec7ed-0000-4000-8000-00000000f1ee"
    image = str(tmp_path / "vda.qcow2")
    domains = {
        h: hv.define(domain_xml("web", [("vda", image)], uuid=uuid)) for h, hv in hvs.items()
    }
    keep = policy(
        "keep", domains["kvm-a"], disks=Request.INTERNAL, retention=Retention(keep_last=2)
    )
    taken = []
    for host in ("kvm-a", "kvm-b", "kvm-a", "kvm-b", "kvm-a"):
        clock.advance(1)
        result = PolicyRun(keep, domains[host], clock.now()).execute(
            hvs[host], catalogs[host], clock=clock.now, prune=False
        )
        assert result.outcome is Outcome.CREATED, result.error
        taken.append((host, result.snapshot))
    report = prune(hvs["kvm-b"], catalogs["kvm-b"], keep, domains["kvm-b"], clock.now())
    assert sorted(report.to_delete) == [name for _, name in taken[:3]]
    assert report.deleted == [taken[1][1]]  # b's own; a's are a's to delete
    assert report.elsewhere == [(taken[0][1], "kvm-a"), (taken[2][1], "kvm-a")]
    assert [r.name for r in hvs["kvm-b"].list_snapshots("web")] == [taken[3][1]]
    report = prune(hvs["kvm-a"], catalogs["kvm-a"], keep, domains["kvm-a"], clock.now())
    assert report.deleted == [taken[0][1], taken[2][1]]
    assert report.elsewhere == []
    assert [r.name for r in hvs["kvm-a"].list_snapshots("web")] == [taken[4][1]]
    live = sorted(r.name for r in shared.snapshots(domain_uuid=uuid))
    assert live == sorted(name for _, name in taken[3:])


def test_a_lone_host_does_not_count_a_snapshot_deleted_by_other_hands(fakes: Fakes) -> None:
    """Its row says libvirt holds it here, libvirt has it no more (virsh deleted it):
    not a candidate, so it takes no place of the policy's keep_last."""
    domain = fakes.domain(DomainState.SHUTOFF)
    keep = policy("keep", domain, disks=Request.INTERNAL, retention=Retention(keep_last=2))
    taken = [fakes.take(keep, domain) for _ in range(3)]
    fakes.hv.delete_snapshot(domain.name, taken[2])  # by other hands
    report = prune(fakes.hv, fakes.catalog, keep, domain, fakes.clock.now())
    assert report.to_delete == []
    assert fakes.libvirt_names(domain) == taken[:2]


def test_a_prune_names_this_host_the_holder_of_what_its_libvirt_lists(tmp_path: Path) -> None:
    """A `snapshotd migrate` run on kvm-a redefined the snapshot on kvm-b, and the row
    still names kvm-a: kvm-b's prune makes it kvm-b's, so kvm-a counts it as kvm-b's."""
    clock = FakeClock()
    shared = MemoryCatalog()
    hv = FakeHypervisor(clock=clock.timestamp)
    made = hv.define(domain_xml("web", [("vda", str(tmp_path / "vda.qcow2"))]))
    keep = policy("keep", made, disks=Request.INTERNAL, retention=Retention(keep_last=5))
    clock.advance(1)
    result = PolicyRun(keep, made, clock.now()).execute(
        hv, shared.as_host("kvm-a"), clock=clock.now, prune=False
    )
    assert result.outcome is Outcome.CREATED, result.error
    (row,) = shared.snapshots()
    assert row.held_by == "kvm-a"
    prune(hv, shared.as_host("kvm-b"), keep, made, clock.now())
    (row,) = shared.snapshots()
    assert row.held_by == "kvm-b"
    report = prune(hv, shared.as_host("kvm-a"), keep, made, clock.now(), dry_run=True)
    assert report.to_delete == []
