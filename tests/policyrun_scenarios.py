"""One policy run, scenario by scenario, against any hypervisor and catalog.

Shared by tests/unit/test_policyrun.py (FakeHypervisor + MemoryCatalog, milliseconds)
and tests/integration/test_policyrun.py (the real Hypervisor on qemu:///system + the
SQLite catalog, real QEMU domains): each scenario is one function of an ``Env``, and
both test files run every function in SCENARIOS, so the same run is proven both ways.

An Env makes fresh domains with one qcow2 disk (vda) in a directory of their own, and
does the few things a scenario needs from outside snapshotd: let libvirt's clock move
on (creation times have one-second resolution), make libvirt fail the next snapshot of
a shut-off domain, make a snapshot by hand, and merge a disk's overlays back into its
base image (an active block commit and pivot).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from snapshotd.actions.policyrun import HookSkipped, Outcome, PolicyRun, RunResult
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.catalog.api import Catalog
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState, Request
from snapshotd.core.policy import (
    BeforeFailure,
    Hooks,
    Metadata,
    Policy,
    Quiesce,
    Selector,
    SnapshotSettings,
)
from snapshotd.core.retention import Retention
from snapshotd.errors import LibvirtError, PlanError

# Microseconds: two runs within one second never share a name.
NAME = "{policy}-{time:%Y%m%dT%H%M%S%fZ}"


class Env(Protocol):
    @property
    def hv(self) -> HypervisorAPI: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def root(self) -> Path:
        """A private directory for hook scripts and their logs."""
        ...

    def domain(self, state: DomainState) -> DomainInfo:
        """A fresh domain in ``state``, with one qcow2 disk vda."""
        ...

    def directory(self, domain: DomainInfo) -> Path:
        """The domain's own directory (its image; its snapshots' files may go there)."""
        ...

    def now(self) -> dt.datetime: ...

    def tick(self) -> None:
        """Let libvirt's clock move past the current second."""
        ...

    def break_next_create(self, domain: DomainInfo) -> None:
        """libvirt fails the next snapshot of this shut-off domain."""
        ...

    def hand_made(self, domain: DomainInfo, name: str) -> None:
        """A snapshot made outside snapshotd (internal, with libvirt's metadata)."""
        ...

    def merge_disk(self, domain: DomainInfo, target: str) -> None:
        """Merge the disk's overlays into its base image and use that again."""
        ...


# --- helpers ----------------------------------------------------------------------------


def policy(
    name: str,
    domain: DomainInfo,
    *,
    states: tuple[DomainState, ...] = (DomainState.RUNNING, DomainState.SHUTOFF),
    retention: Retention | None = None,
    hooks: Hooks | None = None,
    memory: Request = Request.OMIT,
    disks: Request = Request.OMIT,
    disk_only: bool = False,
    quiesce: Quiesce = Quiesce.NO,
    directory: Path | None = None,
    metadata: Metadata = Metadata.LIBVIRT,
) -> Policy:
    """A policy that selects only ``domain``, with these snapshot: settings."""
    return Policy(
        name=name,
        source=f"scenario:{name}",
        selector=Selector(include=(domain.name,), states=frozenset(states)),
        snapshot=SnapshotSettings(
            memory=memory,
            disks=disks,
            disk_only=disk_only,
            quiesce=quiesce,
            name=NAME,
            directory=None if directory is None else str(directory),
            metadata=metadata,
        ),
        retention=retention,
        hooks=hooks or Hooks(),
    )


def disk_only(name: str, domain: DomainInfo, directory: Path, **options: Any) -> Policy:
    """A policy of external disk-only snapshots (no memory), its files in ``directory``."""
    return policy(
        name,
        domain,
        memory=Request.NO,
        disks=Request.EXTERNAL,
        disk_only=True,
        directory=directory,
        **options,
    )


def run(env: Env, chosen: Policy, domain: DomainInfo, *, prune: bool = True) -> RunResult:
    """One run of ``chosen`` for the domain as libvirt describes it now."""
    fresh = env.hv.domain(domain.uuid)
    return PolicyRun(chosen, fresh, env.now()).execute(
        env.hv, env.catalog, clock=env.now, prune=prune
    )


def names(env: Env, domain: DomainInfo) -> set[str]:
    """The domain's snapshots, as libvirt lists them."""
    return {r.name for r in env.hv.list_snapshots(domain.name)}


def ours(env: Env, domain: DomainInfo, policy_name: str | None = None) -> list[str]:
    """The catalog's live snapshots of the domain (of one policy), oldest first."""
    return [r.name for r in env.catalog.snapshots(domain_uuid=domain.uuid, policy=policy_name)]


def operations(env: Env, domain: DomainInfo) -> list[tuple[str, str, str | None]]:
    """The domain's (operation, outcome, snapshot) log lines, oldest first."""
    lines = [o for o in env.catalog.operations(limit=1000) if o.domain_uuid == domain.uuid]
    return [(o.operation, o.outcome, o.snapshot) for o in reversed(lines)]


@dataclass(frozen=True)
class HookScript:
    """A real hook script: it logs "STAGE RESULT SNAPSHOT" (and the error) and exits
    with its second argument."""

    path: Path
    log: Path
    errors: Path

    @classmethod
    def write(cls, directory: Path) -> HookScript:
        log, errors, path = directory / "hooks.log", directory / "errors.log", directory / "hook"
        path.write_text(
            "#!/bin/sh\n"
            f'echo "$1 $SNAPSHOTD_RESULT $SNAPSHOTD_SNAPSHOT" >> {log}\n'
            f'[ -z "$SNAPSHOTD_ERROR" ] || echo "$SNAPSHOTD_ERROR" >> {errors}\n'
            'exit "${2:-0}"\n'
        )
        path.chmod(0o755)
        return cls(path, log, errors)

    def hooks(self, *, before_exit: int = 0, skip: bool = True) -> Hooks:
        return Hooks(
            before=((str(self.path), "before", str(before_exit)),),
            after=((str(self.path), "after"),),
            on_failure=((str(self.path), "on_failure"),),
            before_failure=BeforeFailure.SKIP if skip else BeforeFailure.CONTINUE,
        )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def error_text(self) -> str:
        return self.errors.read_text() if self.errors.exists() else ""


# --- scenarios ----------------------------------------------------------------------------


def created(env: Env) -> None:
    """A running domain's disk-only snapshot: made, recorded, hooks told, retention run."""
    domain = env.domain(DomainState.RUNNING)
    script = HookScript.write(env.root)
    chosen = disk_only("made", domain, env.directory(domain), hooks=script.hooks())
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.CREATED, result.error
    assert result.created is not None
    assert result.created.info.name == result.snapshot
    assert result.snapshot.startswith("made-")
    assert (result.error, result.reason, result.note) == (None, None, None)
    assert names(env, domain) == {result.snapshot}
    row = env.catalog.owner(domain.uuid, result.snapshot, result.created.info.creation_time)
    assert row is not None
    assert (row.policy, row.libvirt_metadata) == ("made", True)
    overlay = env.directory(domain) / f"{domain.name}.vda.{result.snapshot}.qcow2"
    assert row.files == (str(overlay),)
    assert overlay.is_file()
    assert operations(env, domain) == [("create", "ok", result.snapshot)]
    assert script.lines() == [
        f"before pending {result.snapshot}",
        f"after ok {result.snapshot}",
    ]
    # No retention: the prune that ran had nothing to do.
    assert result.pruned is not None
    assert (result.pruned.verdicts, result.pruned.deleted) == ([], [])


def skipped_by_state(env: Env) -> None:
    """A domain in a state the policy does not take: skipped, no hook runs, nothing made."""
    domain = env.domain(DomainState.SHUTOFF)
    script = HookScript.write(env.root)
    chosen = policy("awake", domain, states=(DomainState.RUNNING,), hooks=script.hooks())
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.SKIPPED
    assert result.reason == "domain is shutoff; the policy takes only running"
    assert (result.created, result.error, result.pruned) == (None, None, None)
    assert result.snapshot.startswith("awake-")
    assert script.lines() == []
    assert names(env, domain) == set()
    assert operations(env, domain) == []


def refused_by_the_state_table(env: Env) -> None:
    """Memory of a shut-off domain: the table refuses it; on_failure hooks are told."""
    domain = env.domain(DomainState.SHUTOFF)
    script = HookScript.write(env.root)
    chosen = policy("mem", domain, hooks=script.hooks(), memory=Request.INTERNAL)
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.FAILED
    assert isinstance(result.error, PlanError)
    assert result.error.row == 6
    assert "a shut-off domain has no memory to save" in str(result.error)
    assert result.pruned is None
    assert script.lines() == [
        f"before pending {result.snapshot}",
        f"on_failure failed {result.snapshot}",
    ]
    assert "no memory to save" in script.error_text()
    assert names(env, domain) == set()
    assert ours(env, domain) == []
    assert operations(env, domain) == []  # refused before libvirt was asked


def libvirt_failure(env: Env) -> None:
    """libvirt fails the snapshot: FAILED with its error, logged, nothing recorded."""
    domain = env.domain(DomainState.SHUTOFF)
    script = HookScript.write(env.root)
    chosen = policy("fails", domain, hooks=script.hooks(), disks=Request.INTERNAL)
    env.break_next_create(domain)
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.FAILED
    assert isinstance(result.error, LibvirtError)
    assert result.error.operation == "create snapshot"
    assert not result.error.transient
    assert (result.created, result.pruned) == (None, None)
    assert script.lines() == [
        f"before pending {result.snapshot}",
        f"on_failure failed {result.snapshot}",
    ]
    assert "create snapshot failed" in script.error_text()
    assert names(env, domain) == set()
    assert ours(env, domain) == []
    assert operations(env, domain) == [("create", "failed", result.snapshot)]


def quiesce_try_falls_back(env: Env) -> None:
    """quiesce: try and no guest agent: the same snapshot, taken without the freeze."""
    domain = env.domain(DomainState.RUNNING)
    snaps = env.directory(domain) / "snaps"
    chosen = disk_only("qtry", domain, snaps, quiesce=Quiesce.TRY)
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.CREATED, result.error
    assert result.created is not None
    assert result.note is not None
    assert result.note.startswith(
        "quiesce: try: taken without quiesce, the guest agent did not help ("
    )
    assert "agent" in result.note.removeprefix("quiesce: try").lower()
    assert CreateFlag.QUIESCE not in result.created.plan.spec.flags
    assert names(env, domain) == {result.snapshot}
    # The attempt with quiesce failed on the agent; the one without it made the snapshot.
    assert operations(env, domain) == [
        ("create", "failed", result.snapshot),
        ("create", "ok", result.snapshot),
    ]
    assert (snaps / f"{domain.name}.vda.{result.snapshot}.qcow2").is_file()
    assert env.hv.domain_state(domain.uuid) is DomainState.RUNNING


def quiesce_true_without_agent_fails(env: Env) -> None:
    """quiesce: true and no guest agent: a clear failure, nothing made, not frozen."""
    domain = env.domain(DomainState.RUNNING)
    snaps = env.directory(domain) / "snaps"
    chosen = disk_only("qyes", domain, snaps, quiesce=Quiesce.YES)
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.FAILED
    assert isinstance(result.error, LibvirtError)
    assert domain.name in str(result.error)
    assert "agent" in str(result.error).lower()
    assert result.note is None
    assert names(env, domain) == set()
    assert ours(env, domain) == []
    assert operations(env, domain) == [("create", "failed", result.snapshot)]
    assert not snaps.exists()  # the directory made for the overlay was removed again
    assert env.hv.domain_state(domain.uuid) is DomainState.RUNNING


def a_failed_before_hook_skips(env: Env) -> None:
    """before_failure: skip: the snapshot is not taken, on_failure hooks are told why."""
    domain = env.domain(DomainState.SHUTOFF)
    script = HookScript.write(env.root)
    hooks = script.hooks(before_exit=3)
    chosen = policy("guarded", domain, hooks=hooks, disks=Request.INTERNAL)
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.FAILED
    assert isinstance(result.error, HookSkipped)
    assert str(result.error) == (
        f"snapshot skipped: before hook {script.path} exited with status 3 "
        "(hooks.before_failure: skip)"
    )
    assert script.lines() == [
        f"before pending {result.snapshot}",
        f"on_failure skipped {result.snapshot}",
    ]
    assert script.error_text() == f"before hook {script.path} exited with status 3\n"
    assert names(env, domain) == set()
    assert operations(env, domain) == []


def a_failed_before_hook_may_continue(env: Env) -> None:
    """before_failure: continue: the snapshot is taken all the same; after hooks run."""
    domain = env.domain(DomainState.SHUTOFF)
    script = HookScript.write(env.root)
    hooks = script.hooks(before_exit=1, skip=False)
    chosen = policy("onward", domain, hooks=hooks, disks=Request.INTERNAL)
    result = run(env, chosen, domain)
    assert result.outcome is Outcome.CREATED, result.error
    assert script.lines() == [
        f"before pending {result.snapshot}",
        f"after ok {result.snapshot}",
    ]
    assert names(env, domain) == {result.snapshot}


def retention_prunes_only_its_own_oldest_first(env: Env) -> None:
    """keep_last: 1 deletes the policy's older snapshots, oldest first; another policy's
    snapshot and a hand-made one named like the policy's stay."""
    domain = env.domain(DomainState.SHUTOFF)
    keep1 = policy("keep1", domain, retention=Retention(keep_last=1), disks=Request.INTERNAL)
    other = policy("other", domain, disks=Request.INTERNAL)
    lookalike = "keep1-20200101T000000000000Z"
    env.hand_made(domain, lookalike)
    env.tick()
    theirs = run(env, other, domain)
    taken = []
    for _ in range(3):
        env.tick()
        result = run(env, keep1, domain, prune=False)
        assert result.outcome is Outcome.CREATED, result.error
        assert result.pruned is None
        taken.append(result.snapshot)
    env.tick()
    last = run(env, keep1, domain)
    assert last.outcome is Outcome.CREATED, last.error
    assert last.pruned is not None
    assert last.pruned.deleted == taken  # oldest first
    assert last.pruned.failed == []
    assert names(env, domain) == {lookalike, theirs.snapshot, last.snapshot}
    assert ours(env, domain, "keep1") == [last.snapshot]
    assert ours(env, domain, "other") == [theirs.snapshot]
    deletes = [s for op, outcome, s in operations(env, domain) if op == "delete"]
    assert deletes == taken


def catalog_only_snapshots_pruned_by_their_files(env: Env) -> None:
    """metadata: catalog: libvirt keeps nothing; retention keeps the overlays the disk
    still uses, and deletes their files once the disk no longer does."""
    domain = env.domain(DomainState.RUNNING)
    snaps = env.directory(domain) / "snaps"
    chosen = disk_only(
        "cat", domain, snaps, retention=Retention(keep_last=1), metadata=Metadata.CATALOG
    )
    taken = []
    for _ in range(3):
        env.tick()
        result = run(env, chosen, domain)
        assert result.outcome is Outcome.CREATED, result.error
        taken.append(result.snapshot)
    assert names(env, domain) == set()
    assert [r.libvirt_metadata for r in env.catalog.snapshots(domain_uuid=domain.uuid)] == [
        False
    ] * 3
    assert result.pruned is not None
    assert result.pruned.deleted == []
    assert [name for name, _ in result.pruned.kept] == taken[:2]
    assert all("current backing chain" in why for _, why in result.pruned.kept)

    env.merge_disk(domain, "vda")
    env.tick()
    last = run(env, chosen, domain)
    assert last.outcome is Outcome.CREATED, last.error
    assert last.pruned is not None
    assert last.pruned.deleted == taken  # by their files, oldest first
    assert sorted(p.name for p in snaps.glob("*.qcow2")) == [
        f"{domain.name}.vda.{last.snapshot}.qcow2"
    ]
    assert ours(env, domain) == [last.snapshot]


SCENARIOS: list[Callable[[Env], None]] = [
    created,
    skipped_by_state,
    refused_by_the_state_table,
    libvirt_failure,
    quiesce_try_falls_back,
    quiesce_true_without_agent_fails,
    a_failed_before_hook_skips,
    a_failed_before_hook_may_continue,
    retention_prunes_only_its_own_oldest_first,
    catalog_only_snapshots_pruned_by_their_files,
]
