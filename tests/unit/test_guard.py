"""A policy's guard (core/guard.py decides, actions/guard.py measures, PolicyRun skips):
through FakeHypervisor, with this machine's own statvfs for a local connection and
storage pools for a remote one."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from snapshotd.actions.policyrun import Outcome, PolicyRun
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.config.load import parse_policy
from snapshotd.core.guard import Guard, Space, human, parse_space
from snapshotd.core.model import DomainState, Request
from snapshotd.core.policy import Policy
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml
from tests.policyrun_scenarios import policy

G = 1 << 30


@pytest.mark.parametrize(
    ("text", "percent", "size"),
    [("10%", 10.0, None), ("2.5%", 2.5, None), ("20G", None, 20 * G), ("512m", None, 512 << 20),
     (" 1T ", None, 1 << 40), ("64K", None, 64 << 10)],
)  # fmt: skip
def test_a_space_is_a_share_or_a_size(text: str, percent: float | None, size: int | None) -> None:
    space = parse_space(text)
    assert (space.percent, space.size) == (percent, size)


@pytest.mark.parametrize("text", ["10", "0%", "100%", "-5G", "5 parsecs", "G", "0G", "10%%"])
def test_a_space_that_is_none_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"percentage|size|nothing"):
        parse_space(text)


def test_the_space_problem_says_how_much_where_and_what_to_do() -> None:
    guard = Guard(min_free=parse_space("10%"))
    assert guard.space_problem("/srv", free=20 * G, total=100 * G) is None
    assert guard.space_problem("/srv", free=10 * G, total=100 * G) is None  # exactly enough
    assert guard.space_problem("/srv", free=5 * G, total=100 * G) == (
        "only 5G (5.0%) of 100G is free on /srv, below guard.min_free (10%); make room "
        "there or lower min_free (retention deletes nothing to make room)"
    )
    sized = Guard(min_free=Space(size=20 * G, text="20G"))
    assert sized.space_problem("/srv", free=19 * G, total=1000 * G) is not None
    assert sized.space_problem("/srv", free=21 * G, total=1000 * G) is None
    assert human(1536 << 20) == "1.5G"
    assert human(512) == "512 bytes"


def test_the_chain_problem_names_the_disk_and_the_merge() -> None:
    guard = Guard(max_chain=3)
    assert guard.chain_problem("web", "vda", 3) is None
    assert guard.chain_problem("web", "vda", 4) == (
        "disk vda's backing chain would be 4 images long, more than guard.max_chain (3); "
        "merge it (virsh blockcommit web vda --active --pivot) or prune older external "
        "snapshots, and the next slot takes it"
    )
    assert Guard().chain_problem("web", "vda", 100) is None  # 0: no cap
    assert not Guard().active


def test_guard_options_are_read_and_checked_at_load() -> None:
    loaded = parse_policy(
        "schedule: {every: 1h}\nguard: {min_free: 15%, max_chain: 25}\n", "p.yaml"
    )
    assert isinstance(loaded, Policy)
    assert loaded.guard == Guard(min_free=parse_space("15%"), max_chain=25)
    bad = parse_policy(
        "schedule: {every: 1h}\nguard:\n  min_free: lots\n  max_chain: 1\n", "p.yaml"
    )
    assert not isinstance(bad, Policy)
    assert [str(e) for e in bad] == [
        "p.yaml:3:13: guard.min_free: 'lots' is not a percentage of the file system such as "
        "10%, or a size such as 512M, 20G or 1T",
        "p.yaml:4:14: guard.max_chain: 1 would refuse every external snapshot (a disk and "
        "its overlay are 2); 0 is no cap",
    ]


def _run(hv: FakeHypervisor, chosen: Policy, state: DomainState = DomainState.SHUTOFF) -> object:
    clock = FakeClock()
    domain = hv.set_state(chosen.selector.include[0], state)
    return PolicyRun(chosen, domain, clock.now()).execute(
        hv, MemoryCatalog(), clock=clock.now, prune=False
    )


def _fake(tmp_path: Path, uri: str = "qemu:///system", xml: str | None = None) -> FakeHypervisor:
    clock = FakeClock()
    hv = FakeHypervisor(clock=clock.timestamp, uri=uri)
    hv.define(xml or domain_xml("web", [("vda", str(tmp_path / "vda.qcow2"))]))
    return hv


def test_too_little_free_space_here_skips_before_any_hook_or_libvirt(tmp_path: Path) -> None:
    """statvfs of the directory the overlay goes to (this machine's): a min_free bigger
    than the whole file system can never be met."""
    hv = _fake(tmp_path)
    made = hv.domain("web")
    total = os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    chosen = policy("g", made, disks=Request.EXTERNAL, disk_only=True, directory=tmp_path / "s")
    huge = replace(chosen, guard=Guard(min_free=Space(size=total + 1, text="all")))
    result = _run(hv, huge)
    assert result.outcome is Outcome.GUARDED  # type: ignore[attr-defined]
    assert f"is free on {tmp_path}, below guard.min_free (all)" in result.reason  # type: ignore[attr-defined]
    assert hv.list_snapshots("web") == []
    fine = replace(chosen, guard=Guard(min_free=Space(size=1, text="1 byte")))
    assert _run(hv, fine).outcome is Outcome.CREATED  # type: ignore[attr-defined]


def test_a_remote_host_s_space_comes_from_its_storage_pool(tmp_path: Path) -> None:
    hv = _fake(tmp_path, uri="qemu+ssh://root@kvm-b/system")
    made = hv.domain("web")
    where = tmp_path / "pool" / "s"
    chosen = policy("g", made, disks=Request.EXTERNAL, disk_only=True, directory=where)
    guarded = replace(chosen, guard=Guard(min_free=parse_space("10%")))
    result = _run(hv, guarded)  # no pool holds the directory: not measured, taken, said
    assert result.outcome is Outcome.CREATED, result.error  # type: ignore[attr-defined]
    assert f"the guard could not measure {where} on qemu+ssh://root@kvm-b/system" in (
        result.note  # type: ignore[attr-defined]
    )
    hv.pools[str(tmp_path / "pool")] = ("images", 2 * G, 100 * G)
    result = _run(hv, replace(guarded, name="g2"))
    assert result.outcome is Outcome.GUARDED  # type: ignore[attr-defined]
    assert f"on {where} (storage pool images), below guard.min_free (10%)" in result.reason  # type: ignore[attr-defined]


def test_a_chain_at_max_chain_skips_the_external_snapshot(tmp_path: Path) -> None:
    """A remote running domain's chain, as libvirt's live XML shows it: vda on o2 on o1
    on base (4 images with the new overlay)."""
    chain = (
        "<backingStore type='file'><format type='qcow2'/><source file='/i/o1.qcow2'/>"
        "<backingStore type='file'><format type='qcow2'/><source file='/i/base.qcow2'/>"
        "<backingStore/></backingStore></backingStore>"
    )
    xml = domain_xml("web", [("vda", "/i/o2.qcow2")]).replace(
        "<target dev='vda' bus='virtio'/>", f"<target dev='vda' bus='virtio'/>{chain}"
    )
    hv = _fake(tmp_path, uri="qemu+ssh://root@kvm-b/system", xml=xml)
    made = hv.domain("web")
    chosen = policy("g", made, disks=Request.EXTERNAL, disk_only=True, directory=tmp_path / "s")
    result = _run(hv, replace(chosen, guard=Guard(max_chain=3)), DomainState.RUNNING)
    assert result.outcome is Outcome.GUARDED  # type: ignore[attr-defined]
    assert "disk vda's backing chain would be 4 images long" in result.reason  # type: ignore[attr-defined]
    result = _run(hv, replace(chosen, guard=Guard(max_chain=4)), DomainState.RUNNING)
    assert result.outcome is Outcome.CREATED  # type: ignore[attr-defined]
