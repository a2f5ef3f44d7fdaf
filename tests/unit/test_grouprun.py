"""A consistency group's run through the fakes: FakeHypervisor + MemoryCatalog.

tests/integration/test_groups.py runs the same guarantees against real libvirt; these
pin down the order of operations and every failure path in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.actions.grouprun import GroupOutcome, GroupRun
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog.memory import MemoryCatalog
from snapshotd.cli import reports
from snapshotd.cli.app import main
from snapshotd.config.load import parse_policy
from snapshotd.core.group import Consistency, Hold
from snapshotd.core.guard import Guard, Space
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState
from snapshotd.core.policy import Policy
from snapshotd.errors import SnapshotdError
from tests.fakes.clock import FakeClock
from tests.fakes.hypervisor import FakeHypervisor, domain_xml, libvirt_error

_numbers = itertools.count(1)


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.hv = FakeHypervisor(clock=self.clock.timestamp)
        self.catalog = MemoryCatalog()

    def domain(
        self, state: DomainState = DomainState.RUNNING, *, agent: bool = False
    ) -> DomainInfo:
        name = f"shop-{next(_numbers):03d}"
        directory = self.root / name
        directory.mkdir()
        xml = domain_xml(name, [("vda", str(directory / "vda.qcow2"))])
        return self.hv.define(xml, state=state, agent=agent)

    def run(self, policy: Policy, members: list[DomainInfo]) -> GroupRun:
        return GroupRun(policy, [(self.hv, self.hv.domain(m.uuid)) for m in members], self.now())

    def now(self) -> dt.datetime:
        return self.clock.now()

    def state(self, domain: DomainInfo) -> DomainState:
        return self.hv.domain(domain.uuid).state


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def group_policy(group: str, snapshot: str = "{}") -> Policy:
    text = (
        "name: shop\n"
        'domains: {include: ["shop-*"], states: [running, paused, shutoff]}\n'
        f"group: {group}\n"
        "schedule: {every: 1h}\n"
        f"snapshot: {snapshot}\n"
    )
    parsed = parse_policy(text, "shop.yaml")
    assert isinstance(parsed, Policy), parsed
    return parsed


CRASH = group_policy("{consistency: crash}")


def broken(domain: DomainInfo) -> SnapshotdError:
    return libvirt_error(
        "internal error: unable to execute QEMU command 'savevm': Error while writing",
        code=libvirt.VIR_ERR_INTERNAL_ERROR,
        operation="create snapshot",
        domain=domain.name,
    )


def test_crash_group_suspends_all_before_any_snapshot_and_resumes_all(env: Env) -> None:
    members = [env.domain() for _ in range(3)]
    result = env.run(CRASH, members).execute(env.catalog)

    assert result.outcome is GroupOutcome.CREATED, result.error
    names = {m.name for m in members}
    suspends = [n for op, n in env.hv.holds if op == "suspend"]
    resumes = [n for op, n in env.hv.holds if op == "resume"]
    assert set(suspends) == names
    assert set(resumes) == names
    # Every suspend came before every resume: one window for the whole group.
    assert max(env.hv.holds.index(("suspend", n)) for n in names) < min(
        env.hv.holds.index(("resume", n)) for n in names
    )
    assert all(env.state(m) is DomainState.RUNNING for m in members)
    # Each member's snapshot was taken while it was paused, under the one name.
    for m in members:
        (record,) = env.hv.list_snapshots(m.name)
        assert record.name == result.name
        assert env.hv.snapshot_xml(m.name, result.name).count("<state>paused</state>") == 1
    (group,) = env.catalog.groups.all("shop")
    assert {g.domain_name for g in group.members} == names
    assert not group.partial
    assert group.pause_ms is not None
    assert result.pause is not None
    assert env.catalog.groups.held() == []


def test_each_member_is_resumed_as_soon_as_its_own_snapshot_is_made(env: Env) -> None:
    """No create before every member is suspended (the instant); then a member whose
    snapshot is made is resumed without waiting for a slower member's create."""
    fast, slow = env.domain(), env.domain()
    fast_resumed = threading.Event()
    make = env.hv.create_snapshot_secure

    def create(domain: str, xml: str, flags: CreateFlag, **kw: Any) -> tuple[str, str]:
        if (kw.get("uuid") or domain) == slow.uuid:
            # The slow member's create ends only once the fast one was resumed.
            assert fast_resumed.wait(5), "the fast member waited for the slow one's create"
        return make(domain, xml, flags, **kw)

    resume = env.hv.resume

    def resumed(domain: str) -> None:
        resume(domain)
        if domain == fast.uuid:
            fast_resumed.set()

    env.hv.create_snapshot_secure = create  # type: ignore[method-assign]
    env.hv.resume = resumed  # type: ignore[method-assign]
    result = env.run(CRASH, [fast, slow]).execute(env.catalog)

    assert result.outcome is GroupOutcome.CREATED, result.error
    timeline = env.hv.timeline
    creates = [i for i, (op, _) in enumerate(timeline) if op == "create"]
    suspends = [i for i, (op, _) in enumerate(timeline) if op == "suspend"]
    assert len(creates) == 2
    assert max(suspends) < min(creates)
    assert timeline.index(("resume", fast.name)) < timeline.index(("create", slow.name))
    assert timeline.index(("create", slow.name)) < timeline.index(("resume", slow.name))
    assert result.pause is not None
    assert result.pause > 0


def test_paused_and_shut_off_members_are_taken_as_they_are(env: Env) -> None:
    paused = env.domain(DomainState.PAUSED)
    off = env.domain(DomainState.SHUTOFF)
    running = env.domain()
    result = env.run(CRASH, [paused, off, running]).execute(env.catalog)

    assert result.outcome is GroupOutcome.CREATED, result.error
    holds = {m.domain.name: m.hold for m in result.members}
    assert holds == {paused.name: Hold.NONE, off.name: Hold.NONE, running.name: Hold.SUSPEND}
    assert env.hv.holds == [("suspend", running.name), ("resume", running.name)]
    assert env.state(paused) is DomainState.PAUSED  # it was paused before: left so
    assert env.state(off) is DomainState.SHUTOFF


def test_abort_deletes_what_the_group_made_when_one_member_fails(env: Env) -> None:
    good = [env.domain(), env.domain()]
    bad = env.domain()
    env.hv.fail_creates_of(bad.uuid, broken(bad))
    result = env.run(CRASH, [*good, bad]).execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert result.error is not None
    assert bad.name in str(result.error)
    for m in good:
        assert env.hv.list_snapshots(m.name) == []  # rolled back
    assert {m.domain.name for m in result.members if m.rolled_back} == {m.name for m in good}
    assert env.catalog.snapshots() == []
    assert env.catalog.groups.all() == []
    assert all(env.state(m) is DomainState.RUNNING for m in [*good, bad])
    assert env.catalog.groups.held() == []


def test_partial_keeps_the_others_and_marks_the_group(env: Env) -> None:
    partial = group_policy("{on_member_failure: partial}")
    good, bad = env.domain(), env.domain()
    env.hv.fail_creates_of(bad.uuid, broken(bad))
    result = env.run(partial, [good, bad]).execute(env.catalog)

    assert result.outcome is GroupOutcome.PARTIAL
    (group,) = env.catalog.groups.all("shop")
    assert group.partial
    assert [m.domain_name for m in group.members] == [good.name]
    assert [r.name for r in env.hv.list_snapshots(good.name)] == [result.name]


def test_a_member_whose_suspend_fails_stops_the_group_before_any_snapshot(env: Env) -> None:
    members = [env.domain(), env.domain()]
    run = env.run(CRASH, members)
    env.hv.set_state(members[1].uuid, DomainState.PAUSED)  # paused by someone since
    result = run.execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert env.hv.creates == 0
    assert env.state(members[0]) is DomainState.RUNNING
    assert env.catalog.groups.held() == []


def test_a_taken_name_refuses_the_group_before_anything_is_held(env: Env) -> None:
    members = [env.domain(), env.domain()]
    run = env.run(CRASH, members)
    xml = f"<domainsnapshot><name>{run.name}</name></domainsnapshot>"
    env.hv.create_snapshot_secure(members[1].name, xml, CreateFlag(0))
    creates = env.hv.creates
    result = run.execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert "already has a snapshot named" in str(result.error)
    assert env.hv.holds == []
    assert env.hv.creates == creates


def test_a_suspend_that_hangs_past_max_pause_releases_the_others_and_waits_for_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's QEMU does not answer its suspend: the others are resumed once
    max_pause has passed, no snapshot is asked; the hanging one is resumed once its
    suspend returned (not before: a resume sent first would leave it paused)."""
    policy = group_policy("{max_pause: 2s}")
    quick, stuck = env.domain(), env.domain()
    answer = threading.Event()
    suspend = env.hv.suspend

    def hanging(domain: str) -> None:
        if domain == stuck.uuid:
            assert answer.wait(10)
        suspend(domain)

    monkeypatch.setattr(env.hv, "suspend", hanging)
    run = env.run(policy, [quick, stuck])
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(run.execute(env.catalog)))
    runner.start()
    deadline = time.monotonic() + 5
    while ("resume", quick.name) not in env.hv.holds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ("resume", quick.name) in env.hv.holds  # released while the other still hangs
    assert runner.is_alive()
    # Its hold stays written (a daemon killed now would resume it when it starts again).
    assert stuck.name in {h.domain_name for h in env.catalog.groups.held()}
    answer.set()
    runner.join(10)
    (result,) = results

    assert result.outcome is GroupOutcome.FAILED
    assert "had not returned when group.max_pause (2s) passed" in str(result.error)
    assert env.hv.creates == 0
    assert env.hv.holds[-2:] == [("suspend", stuck.name), ("resume", stuck.name)]
    assert env.state(quick) is DomainState.RUNNING
    assert env.state(stuck) is DomainState.RUNNING
    assert env.catalog.groups.held() == []


@pytest.mark.parametrize("failure", ["abort", "partial"])
def test_the_window_past_max_pause_releases_every_member_and_aborts(
    env: Env, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Also with partial: what finished after the release is not of one instant."""
    policy = group_policy(f"{{max_pause: 2s, on_member_failure: {failure}}}")
    fast, slow = env.domain(), env.domain()
    create = env.hv.create_snapshot_secure

    def slow_create(domain: str, xml: str, flags: CreateFlag, **kw: Any) -> tuple[str, str]:
        if (kw.get("uuid") or domain) == slow.uuid:
            time.sleep(2.3)
        return create(domain, xml, flags, **kw)

    monkeypatch.setattr(env.hv, "create_snapshot_secure", slow_create)
    result = env.run(policy, [fast, slow]).execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert "the pause window passed group.max_pause (2s)" in str(result.error)
    # Both were asked, both made it; what finished late was deleted again.
    assert env.hv.creates == 2
    assert all(m.rolled_back for m in result.members)
    assert env.state(fast) is DomainState.RUNNING
    assert env.state(slow) is DomainState.RUNNING
    assert env.hv.list_snapshots(fast.name) == []
    assert env.catalog.groups.all() == []


def test_application_freezes_every_member_and_keeps_them_running(env: Env) -> None:
    policy = group_policy("{consistency: application}", "{disk_only: true}")
    members = [env.domain(agent=True), env.domain(agent=True)]
    result = env.run(policy, members).execute(env.catalog)

    assert result.outcome is GroupOutcome.CREATED, result.error
    assert result.consistency is Consistency.APPLICATION
    ops = [op for op, _ in env.hv.holds]
    assert ops[:2] == ["freeze", "freeze"]
    assert ops[2:] == ["thaw", "thaw"]
    assert all(env.state(m) is DomainState.RUNNING for m in members)


def test_application_without_an_agent_fails_and_thaws_every_member(env: Env) -> None:
    policy = group_policy("{consistency: application}", "{disk_only: true}")
    with_agent, without = env.domain(agent=True), env.domain(agent=False)
    result = env.run(policy, [with_agent, without]).execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert "agent" in str(result.error).lower()
    assert without.name in str(result.error)
    thawed = {n for op, n in env.hv.holds if op == "thaw"}
    assert thawed == {with_agent.name, without.name}
    assert env.hv.creates == 0


def test_application_falls_back_to_crash_when_told(env: Env) -> None:
    policy = group_policy("{consistency: application, fallback: crash}", "{disk_only: true}")
    with_agent, without = env.domain(agent=True), env.domain(agent=False)
    result = env.run(policy, [with_agent, without]).execute(env.catalog)

    assert result.outcome is GroupOutcome.CREATED, result.error
    assert result.consistency is Consistency.CRASH
    assert result.note is not None
    assert "fell back to crash" in result.note
    assert {n for op, n in env.hv.holds if op == "resume"} == {with_agent.name, without.name}


def test_a_failed_before_hook_touches_no_member(env: Env, tmp_path: Path) -> None:
    policy = replace(CRASH, hooks=replace(CRASH.hooks, before=(("/bin/false",),)))
    members = [env.domain(), env.domain()]
    result = env.run(policy, members).execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert env.hv.holds == []
    assert env.hv.creates == 0


def test_a_member_in_a_state_the_policy_skips_is_left_out(env: Env) -> None:
    running_only = replace(
        CRASH, selector=replace(CRASH.selector, states=frozenset({DomainState.RUNNING}))
    )
    running, off = env.domain(), env.domain(DomainState.SHUTOFF)
    result = env.run(running_only, [running, off]).execute(env.catalog)

    assert result.outcome is GroupOutcome.CREATED
    assert [d.name for d, _ in result.skipped] == [off.name]
    assert [m.domain.name for m in result.members] == [running.name]


def test_a_refusal_after_planning_leaves_no_directory_behind(env: Env) -> None:
    snaps = env.root / "snaps"
    policy = group_policy("{}", f'{{disk_only: true, directory: "{snaps}/{{domain}}"}}')
    members = [env.domain(), env.domain()]
    run = env.run(policy, members)
    xml = f"<domainsnapshot><name>{run.name}</name></domainsnapshot>"
    env.hv.create_snapshot_secure(members[1].name, xml, CreateFlag(0))
    result = run.execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert not snaps.exists() or list(snaps.iterdir()) == []  # the first member's went again


def test_take_shows_each_member_s_uri_without_its_password(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.hv = FakeHypervisor("qemu+ssh://root:hunter2@kvm1/system", clock=env.clock.timestamp)
    members = [env.domain(), env.domain()]
    result = env.run(CRASH, members).execute(env.catalog)
    shown = reports.group_result(result, [])
    assert shown["outcome"] == "created"
    assert "hunter2" not in json.dumps(shown)
    assert {m["uri"] for m in shown["members"]} == {sanitize_uri(env.hv.uri)}


def test_check_says_which_policies_are_groups(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755)
    (policies / "shop.yaml").write_text(
        "name: shop\n"
        'domains: {include: ["shop-db", "shop-web"]}\n'
        "group: {consistency: application, max_pause: 7s, on_member_failure: partial}\n"
        "schedule: {every: 1h}\n"
        "snapshot: {disk_only: true, disks: external}\n"
    )
    (policies / "web.yaml").write_text(
        "name: web\ndomains: {include: [web]}\nschedule: {every: 1h}\n"
    )
    for path in policies.iterdir():
        path.chmod(0o644)
    config = tmp_path / "snapshotd.yaml"
    config.write_text("connect: [qemu:///system]\n")
    config.chmod(0o644)
    out = io.StringIO()
    argv = ["check", "--offline", "--config", str(config)]
    code = main([*argv, "--policy-dir", str(policies)], out=out)

    assert code == 0, out.getvalue()
    lines = {line.split(" (", 1)[0].strip(): line for line in out.getvalue().splitlines()}
    assert lines["shop"].endswith(
        "; group: application consistency, max_pause 7s, on_member_failure partial"
    )
    assert "group" not in lines["web"]


def test_a_member_the_guard_skips_touches_no_member(env: Env) -> None:
    """min_free more than any file system holds: the group is refused before a member is
    held, naming the member and the guard."""
    guarded = replace(CRASH, guard=Guard(min_free=Space(size=1 << 60, text="1E")))
    members = [env.domain(), env.domain()]
    result = env.run(guarded, members).execute(env.catalog)

    assert result.outcome is GroupOutcome.FAILED
    assert f"{members[0].name}: skipped by the policy's guard: only " in str(result.error)
    assert "no member was touched" in str(result.error)
    assert env.hv.holds == []
    assert env.hv.creates == 0
