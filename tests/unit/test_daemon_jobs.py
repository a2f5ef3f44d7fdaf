"""The daemon's job, driven in milliseconds: FakeHypervisor + MemoryCatalog behind the
real Daemon, its Worker and its recovery (tests/integration proves the same on libvirtd).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.catalog import Catalog
from snapshotd.catalog.api import Run, SnapshotRow
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.config.settings import Overrides, Settings
from snapshotd.core.group import GroupSettings
from snapshotd.core.guard import Guard, Space
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState, Request
from snapshotd.core.policy import Policy
from snapshotd.core.retention import Retention
from snapshotd.core.schedule import Schedule
from snapshotd.daemon.events import JobDone, JobOutcome
from snapshotd.daemon.link import Link
from snapshotd.daemon.loop import LIST_WAIT, Daemon
from snapshotd.daemon.runs import DomainRun, Due, GroupKey, Key
from snapshotd.errors import LibvirtError
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml, libvirt_error
from tests.policyrun_scenarios import policy

URI = "test:///fake"
HOURLY = Schedule(every=dt.timedelta(hours=1))


class LinkedFake(FakeHypervisor):
    """FakeHypervisor with what the daemon asks a connection besides the actions' calls."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(URI, clock=clock.timestamp)
        self.up = True
        self.cut_off_after_create = False  # libvirt makes it, the answer is lost
        self.create_waits = 0.0  # seconds the call hangs first (a cut link, say)
        self._stepper = clock

    def alive(self) -> bool:
        return self.up

    def has_job(self, domain: str) -> bool:
        return False

    def create_snapshot_secure(
        self,
        domain: str,
        xml: str,
        flags: CreateFlag,
        *,
        uuid: str | None = None,
        after: Callable[[], object] | None = None,
    ) -> tuple[str, str]:
        self._stepper.advance(self.create_waits)
        made = super().create_snapshot_secure(domain, xml, flags, uuid=uuid, after=after)
        if self.cut_off_after_create:
            self.up = False
            raise LibvirtError(
                "End of file while reading data: Input/output error",
                operation="create snapshot",
                domain=domain,
                transient=True,
            )
        return made


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def find(self, text: str) -> logging.LogRecord:
        return next(r for r in self.records if text in r.getMessage())


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("snapshotd")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class Rig:
    """A Daemon whose catalog is in memory and whose one connection is a LinkedFake."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.hv = LinkedFake(self.clock)
        self.catalog = MemoryCatalog()
        self.opened: list[tuple[str, bool]] = []
        self.daemon = Daemon(Overrides(), clock=self.clock.timestamp, catalogs=self._open)
        self.daemon.settings = Settings(state_dir=str(root / "state"), connect=(URI,))

    def _open(self, state_dir: str, *, shared: bool = False, database: object = None) -> Catalog:
        self.opened.append((state_dir, shared))
        return self.catalog

    def domain(self) -> DomainInfo:
        directory = self.root / "web"
        directory.mkdir(exist_ok=True)
        xml = domain_xml("web", [("vda", str(directory / "vda.qcow2"))])
        return self.hv.define(xml, state=DomainState.SHUTOFF)

    def policy(self, domain: DomainInfo, **options: Any) -> Policy:
        chosen = policy("hourly", domain, **{"disks": Request.INTERNAL, **options})
        return replace(chosen, schedule=HOURLY)

    def job(self, chosen: Policy, domain: DomainInfo) -> tuple[DomainRun, Due]:
        now = self.clock.timestamp()
        due = Due(now, self.clock.now(), "due")
        return DomainRun(Key(chosen.name, URI, domain.uuid), chosen, domain, self.hv, due), due

    def run(self, chosen: Policy, domain: DomainInfo) -> JobDone:
        """The job on this thread, as a worker thread runs it; its JobDone event."""
        job, _due = self.job(chosen, domain)
        self.daemon.worker.run(job)
        event = self.daemon.events.get_nowait()
        assert isinstance(event, JobDone)
        assert self.daemon.events.empty()
        return event

    def metric(self, name: str, **labels: str) -> float | None:
        return self.daemon.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_a_job_runs_the_policy_and_records_its_run(rig: Rig, records: Records) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain)
    event = rig.run(chosen, domain)
    assert event.outcome == JobOutcome("ok")
    assert event.key == Key("hourly", URI, domain.uuid)
    (made,) = rig.catalog.snapshots(domain_uuid=domain.uuid)
    assert made.policy == "hourly"
    assert {s.name for s in rig.hv.list_snapshots(domain.uuid)} == {made.name}
    run = rig.catalog.runs.get("hourly", domain.uuid)
    assert run is not None
    assert run.in_progress is None
    assert run.last_slot == int(rig.clock.timestamp())
    assert run.last_error is None
    line = records.find(": created ")
    assert line.getMessage().startswith(f"web: created {made.name} (")
    assert line.fields == {  # type: ignore[attr-defined]
        "snapshot": made.name,
        "operation": "create",
        "duration_ms": line.fields["duration_ms"],  # type: ignore[attr-defined]
        "policy": "hourly",
        "domain": "web",
        "uri": URI,
    }
    assert rig.metric("snapshotd_snapshots_created_total", policy="hourly") == 1
    assert rig.metric("snapshotd_snapshots_failed_total", policy="hourly") is None
    assert rig.metric("snapshotd_snapshots_pruned_total", policy="hourly") == 0
    assert rig.metric(
        "snapshotd_last_success_timestamp_seconds", policy="hourly", domain="web"
    ) == float(made.created_at)
    for operation in ("create", "prune"):
        count = "snapshotd_operation_duration_seconds_count"
        assert rig.metric(count, operation=operation) == 1
    # The pool's catalog, opened once (shared between threads) and kept for the next job.
    assert rig.opened == [(str(rig.root / "state"), True)]
    rig.clock.advance(3600)
    assert rig.run(chosen, domain).outcome == JobOutcome("ok")
    assert rig.opened == [(str(rig.root / "state"), True)]


def test_a_run_held_up_past_later_slots_serves_them_and_no_catch_up_follows(
    rig: Rig,
) -> None:
    """A create that hung for 2.5 hours (the link was cut under it, then came back) is
    as fresh as the moment it was made: its run serves the latest slot passed by then,
    and the loop plans the next slot, not a catch-up run right after it."""
    domain = rig.domain()
    chosen = rig.policy(domain)
    dispatched = int(rig.clock.timestamp())
    rig.hv.create_waits = 2.5 * 3600
    assert rig.run(chosen, domain).outcome.kind == "ok"
    run = rig.catalog.runs.get("hourly", domain.uuid)
    assert run is not None
    assert run.last_slot == dispatched + 2 * 3600
    key = Key("hourly", URI, domain.uuid)
    rig.daemon.policies = {chosen.name: chosen}
    rig.daemon.domains = {URI: [domain]}
    rig.daemon._schedule(rig.catalog.runs, rig.clock.timestamp())
    assert rig.daemon.due[key].at == dispatched + 3 * 3600


def test_retention_after_the_snapshot_is_logged_and_counted(rig: Rig, records: Records) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain, retention=Retention(keep_last=1))
    assert rig.run(chosen, domain).outcome.kind == "ok"
    (first,) = [r.name for r in rig.catalog.snapshots(domain_uuid=domain.uuid)]
    rig.clock.advance(3600)
    assert rig.run(chosen, domain).outcome.kind == "ok"
    pruned = records.find(": pruned ")
    assert pruned.getMessage() == f"web: pruned {first}"
    assert pruned.fields == {  # type: ignore[attr-defined]
        "snapshot": first,
        "operation": "delete",
        "policy": "hourly",
        "domain": "web",
        "uri": URI,
    }
    # The second snapshot's line comes before its retention's.
    lines = records.lines()
    created = [i for i, line in enumerate(lines) if ": created " in line]
    assert created[1] < lines.index(f"web: pruned {first}")
    assert rig.metric("snapshotd_snapshots_pruned_total", policy="hourly") == 1
    assert rig.metric("snapshotd_snapshots_created_total", policy="hourly") == 2


@pytest.mark.parametrize(("transient", "kind"), [(True, "transient"), (False, "failed")])
def test_a_libvirt_failure_is_counted_logged_and_rescheduled(
    rig: Rig, records: Records, transient: bool, kind: str
) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain)
    code = libvirt.VIR_ERR_OPERATION_TIMEOUT if transient else libvirt.VIR_ERR_INTERNAL_ERROR
    rig.hv.fail_next_create(
        libvirt_error("the disk is gone", code=code, operation="create snapshot", domain="web")
    )
    event = rig.run(chosen, domain)
    assert event.outcome.kind == kind
    assert event.outcome.error is not None
    assert "the disk is gone" in event.outcome.error
    run = rig.catalog.runs.get("hourly", domain.uuid)
    assert run is not None
    assert run.in_progress is None
    assert run.last_slot is None
    assert run.last_error == event.outcome.error
    assert rig.metric("snapshotd_snapshots_failed_total", policy="hourly") == 1
    assert rig.metric("snapshotd_snapshots_created_total", policy="hourly") is None
    line = records.find("snapshot failed")
    assert line.getMessage() == f"web: snapshot failed: {event.outcome.error}"
    assert line.levelno == logging.ERROR
    assert line.fields == {  # type: ignore[attr-defined]
        "policy": "hourly",
        "domain": "web",
        "operation": "create",
        "uri": URI,
    }
    # The loop: a transient failure retries the same slot in 10 s, a permanent one
    # waits for the next slot.
    rig.daemon.policies = {"hourly": chosen}
    rig.daemon._handle(event)
    due = rig.daemon.due[event.key]
    if transient:
        assert (due.at, due.slot, due.retries) == (rig.clock.timestamp() + 10, event.due.slot, 1)
        assert due.reason.startswith("retry: ")
    else:
        assert due.slot == event.due.slot + dt.timedelta(hours=1)
        assert due.reason.startswith("after failure: ")
    assert rig.daemon.status.last_error == event.outcome.error.splitlines()[0][:120]


def test_a_refusal_by_snapshotd_is_logged_as_refused(rig: Rig, records: Records) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain)
    rig.hv.create_snapshot_secure(
        "web", "<domainsnapshot><name>taken</name></domainsnapshot>", CreateFlag(0)
    )
    named = replace(chosen, snapshot=replace(chosen.snapshot, name="taken"))
    event = rig.run(named, domain)
    assert event.outcome.kind == "failed"
    assert records.find("snapshot refused").getMessage() == (
        f"web: snapshot refused: {event.outcome.error}"
    )
    assert rig.metric("snapshotd_snapshots_failed_total", policy="hourly") == 1


def test_a_snapshot_made_before_the_connection_broke_is_adopted(rig: Rig, records: Records) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain)
    # libvirtd restarted under the call: the snapshot is made, the answer lost.  The
    # link's next connection (another object on the same "libvirtd") still has it.
    rig.hv.cut_off_after_create = True
    fresh = copy.copy(rig.hv)
    fresh.up = True
    link = Link(URI, rig.daemon.events)
    link._hv = fresh  # type: ignore[assignment]  # a connected Link without its thread
    rig.daemon.links[URI] = link
    event = rig.run(chosen, domain)
    assert event.outcome == JobOutcome("ok")
    (adopted,) = rig.catalog.snapshots(domain_uuid=domain.uuid)
    assert adopted.policy == "hourly"
    run = rig.catalog.runs.get("hourly", domain.uuid)
    assert run is not None
    assert run.in_progress is None
    assert run.last_slot == int(event.due.slot.timestamp())
    assert f"web: snapshot {adopted.name} was made before an interruption; recorded" in (
        records.lines()
    )
    assert not any("snapshot failed" in line for line in records.lines())
    assert rig.metric("snapshotd_snapshots_failed_total", policy="hourly") is None


def test_a_domain_whose_state_is_skipped_gets_no_snapshot(rig: Rig, records: Records) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain, states=(DomainState.RUNNING,))
    event = rig.run(chosen, domain)
    assert event.outcome == JobOutcome("ok")
    assert rig.hv.list_snapshots(domain.uuid) == []
    assert any(line.startswith("web: skipped by hourly: ") for line in records.lines())
    run = rig.catalog.runs.get("hourly", domain.uuid)
    assert run is not None
    assert run.in_progress is None
    assert run.last_slot is None


def test_the_loop_dispatches_a_due_run_to_a_worker_thread(rig: Rig) -> None:
    domain = rig.domain()
    chosen = rig.policy(domain)
    daemon = rig.daemon
    daemon.policies = {"hourly": chosen}
    daemon.domains = {URI: [domain]}
    link = Link(URI, daemon.events)
    link._hv = rig.hv  # type: ignore[assignment]  # a connected Link without its thread
    daemon.links[URI] = link
    runs = rig.catalog.runs
    key = Key("hourly", URI, domain.uuid)
    now = rig.clock.timestamp()
    daemon.due[key] = Due(now, rig.clock.now(), "due")
    daemon._dispatch(runs, now)
    assert key not in daemon.due
    assert list(daemon.jobs) == [key]
    event = daemon.events.get(timeout=30)
    assert isinstance(event, JobDone)
    assert event.outcome == JobOutcome("ok")
    daemon._handle(event)
    assert daemon.jobs == {}
    # Served: the next pass schedules the next slot, an hour on.
    daemon.tick(runs, now)
    assert daemon.due[key].slot == rig.clock.now() + dt.timedelta(hours=1)


def test_a_slot_another_host_took_prunes_what_this_host_holds(rig: Rig, records: Records) -> None:
    """In a fleet, kvm-b took this slot of a domain both hosts define (and made the
    newest snapshot): kvm-a's job leaves the slot to it, and prunes the snapshots its
    own libvirt holds by the domain's whole history (keep_last 1: both of its)."""
    rig.catalog = MemoryCatalog().as_host("kvm-a")
    domain = rig.domain()
    chosen = rig.policy(domain, retention=Retention(keep_last=2))
    mine = []
    for _ in range(2):
        assert rig.run(chosen, domain).outcome.kind == "ok"
        mine.append(rig.catalog.find(domain.uuid, rig.catalog.operations()[0].snapshot or ""))
        rig.clock.advance(3600)
    chosen = replace(chosen, retention=Retention(keep_last=1))
    other = rig.catalog.as_host("kvm-b")
    slot = int(rig.clock.timestamp())
    other.runs.start(Run("hourly", domain.uuid, "qemu+ssh://b/system", "web"), "b-1", slot, slot)
    theirs = SnapshotRow(
        uri="qemu+ssh://b/system",
        domain_uuid=domain.uuid,
        domain_name="web",
        name="hourly-on-b",
        created_at=slot,
        policy="hourly",
        parent=None,
        xml="<domainsnapshot><name>hourly-on-b</name></domainsnapshot>",
        files=(),
        libvirt_metadata=True,
    )
    other.record_snapshot(theirs)
    event = rig.run(chosen, domain)
    assert event.outcome.kind == "elsewhere"
    assert rig.hv.list_snapshots(domain.uuid) == []
    names = [row.name for row in mine if row is not None]
    assert len(names) == 2
    assert [r.name for r in rig.catalog.snapshots(domain_uuid=domain.uuid)] == ["hourly-on-b"]
    assert [line for line in records.lines() if ": pruned " in line] == [
        f"web: pruned {name}" for name in names
    ]
    assert rig.metric("snapshotd_snapshots_pruned_total", policy="hourly") == 2


def test_a_snapshot_the_guard_skips_is_logged_counted_and_kept_as_the_error(
    rig: Rig, records: Records
) -> None:
    """min_free more than the file system holds: no snapshot, a warning, the skipped
    metric by guard, the operations log, and the run's last error (status shows it);
    the job moves on to the next slot."""
    domain = rig.domain()
    chosen = replace(
        rig.policy(domain, disks=Request.EXTERNAL, disk_only=True, directory=rig.root / "s"),
        guard=Guard(min_free=Space(size=1 << 60, text="1E")),
    )
    event = rig.run(chosen, domain)
    assert event.outcome.kind == "guarded"
    assert rig.hv.list_snapshots(domain.uuid) == []
    line = records.find("skipped by the policy's guard")
    assert line.levelno == logging.WARNING
    assert "below guard.min_free (1E)" in line.getMessage()
    assert rig.metric("snapshotd_snapshots_skipped_total", policy="hourly", guard="min_free") == 1
    run = rig.catalog.runs.get("hourly", domain.uuid)
    assert run is not None
    assert run.in_progress is None
    assert (run.last_error or "").startswith("skipped by the policy's guard: only ")
    (op,) = [o for o in rig.catalog.operations() if o.operation == "create"]
    assert (op.outcome, op.message) == ("skipped", run.last_error)


def test_a_group_waits_at_the_start_for_every_connection_to_list_its_domains(rig: Rig) -> None:
    """At the start a member may be on a connection that has not listed its domains yet:
    a group of the members known so far is not run, for up to LIST_WAIT seconds."""
    domain = rig.domain()
    daemon = rig.daemon
    group = replace(rig.policy(domain), group=GroupSettings())
    daemon.policies = {"hourly": group}
    daemon.domains = {URI: [domain]}
    for uri in (URI, "qemu+ssh://kvm-b/system"):  # the second has not connected
        daemon.links[uri] = Link(uri, daemon.events)
    daemon.links[URI]._hv = rig.hv  # type: ignore[assignment]  # connected, no thread
    daemon._settled_uris.add(URI)
    key = GroupKey("hourly", ((URI, domain.uuid),))
    daemon.due[key] = Due(rig.clock.timestamp(), rig.clock.now(), "due")
    assert daemon._runnable(key) is None
    daemon._settled_uris.add("qemu+ssh://kvm-b/system")  # it listed its domains: none of them
    assert daemon._runnable(key) is not None
    daemon._settled_uris.discard("qemu+ssh://kvm-b/system")
    rig.clock.advance(LIST_WAIT)  # it never answers: the group goes on with whom it has
    assert daemon._runnable(key) is not None
