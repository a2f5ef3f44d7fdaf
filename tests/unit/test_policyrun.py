"""One policy run through the fakes: FakeHypervisor + MemoryCatalog, in milliseconds.

The scenarios are tests/policyrun_scenarios.py's, which tests/integration/test_policyrun.py
runs against real libvirt; the tests after them are the run's own details.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.actions.policyrun import Outcome, PolicyRun
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.actions.snapshot import create, create_planned
from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.policy import Quiesce
from snapshotd.core.retention import Retention
from snapshotd.errors import LibvirtError, RequestError, SnapshotdError
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml, libvirt_error
from tests.policyrun_scenarios import SCENARIOS, Env, disk_only, policy


class FakeEnv:
    """tests/policyrun_scenarios.py's Env on the fakes; domains live under ``root``."""

    _numbers = itertools.count(1)

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.hv = FakeHypervisor(clock=self.clock.timestamp)
        self.catalog = MemoryCatalog()

    def domain(self, state: DomainState) -> DomainInfo:
        name = f"fake-{next(self._numbers):03d}"
        directory = self.root / name
        directory.mkdir()
        return self.hv.define(
            domain_xml(name, [("vda", str(directory / "vda.qcow2"))]), state=state
        )

    def directory(self, domain: DomainInfo) -> Path:
        return self.root / domain.name

    def now(self) -> dt.datetime:
        return self.clock.now()

    def tick(self) -> None:
        self.clock.advance(1)

    def break_next_create(self, domain: DomainInfo) -> None:
        self.hv.fail_next_create(
            libvirt_error(
                "internal error: Child process (/usr/bin/qemu-img snapshot -c) unexpected "
                "exit status 1: qemu-img: Could not open the image",
                code=libvirt.VIR_ERR_INTERNAL_ERROR,
                operation="create snapshot",
                domain=domain.name,
            )
        )

    def hand_made(self, domain: DomainInfo, name: str) -> None:
        xml = f"<domainsnapshot><name>{name}</name></domainsnapshot>"
        self.hv.create_snapshot_secure(domain.name, xml, CreateFlag(0))

    def merge_disk(self, domain: DomainInfo, target: str) -> None:
        self.hv.commit_disk(domain.uuid, target)


@pytest.fixture
def env(tmp_path: Path) -> FakeEnv:
    return FakeEnv(tmp_path)


def test_the_fake_env_is_an_env(env: FakeEnv) -> None:
    # The scenarios are typed against Env and HypervisorAPI; the fakes must fit both.
    as_env: Env = env
    as_hypervisor: HypervisorAPI = env.hv
    assert as_env.hv is as_hypervisor


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario(scenario: Callable[[Env], None], env: FakeEnv) -> None:
    scenario(env)


# --- the run's own details ------------------------------------------------------------------


def test_the_name_is_rendered_once_from_the_run_s_instant(env: FakeEnv) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    chosen = policy("p", domain, disks=Request.INTERNAL)
    now = env.now()
    run = PolicyRun(chosen, domain, now)
    env.tick()  # the clock moves on; the name stays the run's
    result = run.execute(env.hv, env.catalog, clock=env.now)
    assert run.name == chosen.snapshot_name(domain.name, now) == result.snapshot
    assert result.created is not None
    assert result.created.plan.spec.name == run.name


def test_an_invalid_name_is_refused_when_the_run_is_made(env: FakeEnv) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    chosen = policy("p", domain, disks=Request.INTERNAL)
    bad = replace(chosen, snapshot=replace(chosen.snapshot, name="{policy}/{time:%Y}"))
    with pytest.raises(RequestError, match="snapshot name 'p/2026' is not allowed"):
        PolicyRun(bad, domain, env.now())


def test_retention_runs_after_the_snapshot_inside_its_progress_at_the_clock_s_time(
    env: FakeEnv,
) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    chosen = policy("p", domain, disks=Request.INTERNAL, retention=Retention(keep_last=5))
    seen: list[str] = []

    def clock() -> dt.datetime:
        seen.append(f"clock with {len(env.catalog.snapshots())} recorded")
        return env.now()

    @contextmanager
    def progress(of: DomainInfo) -> Iterator[None]:
        seen.append(f"progress of {of.name}")
        yield
        seen.append("progress done")

    result = PolicyRun(chosen, domain, env.now()).execute(
        env.hv, env.catalog, clock=clock, retention_progress=progress
    )
    assert result.outcome is Outcome.CREATED
    assert seen == ["clock with 1 recorded", f"progress of {domain.name}", "progress done"]
    assert result.pruned is not None
    assert [v.name for v in result.pruned.verdicts] == [result.snapshot]


def test_no_retention_without_prune_and_none_after_a_failure(env: FakeEnv) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    entered: list[DomainInfo] = []

    @contextmanager
    def progress(of: DomainInfo) -> Iterator[None]:
        entered.append(of)
        yield

    kept = policy("p", domain, disks=Request.INTERNAL, retention=Retention(keep_last=1))
    for _ in range(2):
        env.tick()
        result = PolicyRun(kept, domain, env.now()).execute(
            env.hv, env.catalog, clock=env.now, retention_progress=progress, prune=False
        )
        assert result.pruned is None
    refused = policy("q", domain, memory=Request.INTERNAL, retention=Retention(keep_last=1))
    failed = PolicyRun(refused, domain, env.now()).execute(
        env.hv, env.catalog, clock=env.now, retention_progress=progress
    )
    assert failed.outcome is Outcome.FAILED
    assert failed.pruned is None
    assert entered == []
    assert len(env.hv.list_snapshots(domain.name)) == 2


class ListingFails(FakeHypervisor):
    """libvirt stops answering list requests: retention's first call."""

    def list_snapshots(self, domain: str) -> list[SnapshotRecord]:
        raise libvirt_error(
            "Cannot recv data: Connection reset by peer",
            code=libvirt.VIR_ERR_SYSTEM_ERROR,
            operation="list snapshots",
            domain=domain,
            origin=libvirt.VIR_FROM_RPC,
        )


def test_a_failure_of_retention_itself_propagates(tmp_path: Path) -> None:
    hv = ListingFails()
    catalog = MemoryCatalog()
    domain = hv.define(domain_xml("web", [("vda", str(tmp_path / "vda.qcow2"))]))
    chosen = disk_only("p", domain, tmp_path, retention=Retention(keep_last=1))
    run = PolicyRun(chosen, domain, dt.datetime.now(dt.UTC))
    with pytest.raises(LibvirtError, match="Connection reset by peer") as caught:
        run.execute(hv, catalog, clock=lambda: dt.datetime.now(dt.UTC))
    assert caught.value.transient
    assert [r.name for r in catalog.snapshots()] == [run.name]  # the snapshot stands


def test_quiesce_with_an_agent_freezes_and_makes_no_note(env: FakeEnv, tmp_path: Path) -> None:
    domain = env.hv.define(domain_xml("agent", [("vda", str(tmp_path / "vda.qcow2"))]), agent=True)
    chosen = disk_only("q", domain, tmp_path / "snaps", quiesce=Quiesce.TRY)
    result = PolicyRun(chosen, domain, env.now()).execute(env.hv, env.catalog, clock=env.now)
    assert result.outcome is Outcome.CREATED
    assert result.note is None
    assert result.created is not None
    assert CreateFlag.QUIESCE in result.created.plan.spec.flags
    assert env.hv.creates == 1


def test_the_fallback_is_only_for_an_agent_that_does_not_answer(env: FakeEnv) -> None:
    domain = env.domain(DomainState.RUNNING)
    env.hv.fail_next_create(
        libvirt_error(
            "internal error: unable to execute QEMU command 'transaction'",
            code=libvirt.VIR_ERR_INTERNAL_ERROR,
            operation="create snapshot",
            domain=domain.name,
        )
    )
    chosen = disk_only("q", domain, env.directory(domain) / "snaps", quiesce=Quiesce.TRY)
    result = PolicyRun(chosen, domain, env.now()).execute(env.hv, env.catalog, clock=env.now)
    assert result.outcome is Outcome.FAILED
    assert isinstance(result.error, LibvirtError)
    assert "transaction" in str(result.error)
    assert env.hv.creates == 1  # no second attempt


def test_create_takes_the_plan_it_is_given(env: FakeEnv) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    request = SnapshotRequest(name="planned", disks=Request.INTERNAL)
    plan = plan_snapshot(domain, request)
    made = create_planned(env.hv, env.catalog, domain, plan, policy=None, now=env.now())
    assert made.plan is plan
    assert made.info.name == "planned"
    env.tick()
    again = create(
        env.hv, env.catalog, domain, SnapshotRequest(name="asked"), policy=None, now=env.now()
    )
    assert again.info.parent == "planned"
    owners = [(r.name, r.policy) for r in env.catalog.snapshots(domain_uuid=domain.uuid)]
    assert owners == [("planned", None), ("asked", None)]


class LockChecking(FakeHypervisor):
    """Asserts that whoever creates or deletes a snapshot holds the domain's lock."""

    def __init__(self, catalog: MemoryCatalog, **options: Any) -> None:
        super().__init__(**options)
        self.catalog = catalog
        self.checked: list[str] = []

    def _assert_locked(self, what: str, domain: str) -> None:
        info = self.domain(domain)
        held = self.catalog.domain_lock(info.uuid, info.name, wait=0)
        with pytest.raises(SnapshotdError, match="is busy"), held:  # held by the caller
            pass
        self.checked.append(what)

    def create_snapshot_secure(
        self,
        domain: str,
        xml: str,
        flags: CreateFlag,
        *,
        uuid: str | None = None,
        after: Callable[[], object] | None = None,
    ) -> tuple[str, str]:
        self._assert_locked("create", uuid or domain)
        return super().create_snapshot_secure(domain, xml, flags, uuid=uuid, after=after)

    def delete_snapshot(self, domain: str, snapshot: str, *, metadata_only: bool = False) -> None:
        self._assert_locked("delete", domain)
        super().delete_snapshot(domain, snapshot, metadata_only=metadata_only)


def test_creating_and_pruning_hold_the_domain_s_lock(tmp_path: Path) -> None:
    clock = FakeClock()
    catalog = MemoryCatalog()
    hv = LockChecking(catalog, clock=clock.timestamp)
    domain = hv.define(domain_xml("web", [("vda", str(tmp_path / "vda.qcow2"))]))
    domain = hv.set_state(domain.uuid, DomainState.SHUTOFF)
    chosen = policy("p", domain, disks=Request.INTERNAL, retention=Retention(keep_last=1))
    for _ in range(2):
        clock.advance(1)
        result = PolicyRun(chosen, domain, clock.now()).execute(hv, catalog, clock=clock.now)
        assert result.outcome is Outcome.CREATED, result.error
    assert hv.checked == ["create", "create", "delete"]
    with catalog.domain_lock(domain.uuid, domain.name, wait=0):
        pass  # and let go afterwards


def test_take_then_retain_is_execute_with_room_in_between(env: FakeEnv) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    chosen = policy("p", domain, disks=Request.INTERNAL, retention=Retention(keep_last=1))
    first = PolicyRun(chosen, domain, env.now()).execute(env.hv, env.catalog, clock=env.now)
    env.tick()
    run = PolicyRun(chosen, domain, env.now())
    taken = run.take(env.hv, env.catalog)
    assert taken.outcome is Outcome.CREATED
    assert taken.pruned is None
    # What the daemon does here (its run log, its counters) sees both snapshots.
    assert len(env.hv.list_snapshots(domain.name)) == 2
    retained = run.retain(env.hv, env.catalog, taken, clock=env.now)
    assert retained.pruned is not None
    assert retained.pruned.deleted == [first.snapshot]
    assert retained.created == taken.created


def test_retain_leaves_a_run_that_made_nothing_as_it_is(env: FakeEnv) -> None:
    domain = env.domain(DomainState.SHUTOFF)
    refused = policy("q", domain, memory=Request.INTERNAL, retention=Retention(keep_last=1))
    run = PolicyRun(refused, domain, env.now())
    taken = run.take(env.hv, env.catalog)
    assert taken.outcome is Outcome.FAILED
    assert run.retain(env.hv, env.catalog, taken, clock=env.now) is taken
