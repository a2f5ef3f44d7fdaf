"""One instant across a group's members, shown with two real guests (guest.py).

Guest A has twelve more disks than B, so libvirt takes about half a second longer to
make A's snapshot than B's: creates that merely ran at the same moment, without the
group's holds, would catch A several writes later than B (tried: they do).

A writer on the host counts n = 1, 2, 3, ... and writes each n into guest A's raw disk,
then into guest B's, each write through the guest agent and durable (dd with fsync in the
guest) before the next one starts.  At every moment A holds B's number or one more.  A
snapshot of the pair at one instant must show the same: in every group snapshot, A's
number is B's or B's + 1.  Snapshots of the two taken one after the other, without a
group, need not: the writer goes on between them, and the test makes sure it does, to
show the check would catch a group that is not one instant.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from snapshotd.actions.grouprun import GroupOutcome, GroupRun
from snapshotd.actions.policyrun import PolicyRun
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import open_catalog
from snapshotd.config.load import parse_policy
from snapshotd.core.policy import Policy
from tests.integration.guest import AgentError, Guest

SEQ = "vdc"  # the raw disk each guest of guest_pair has
GROUP_SNAPSHOTS = 25
UNGROUPED_PAIRS = 3
STALL = 60.0  # seconds the writer may go without a step before the test fails


class Writer(threading.Thread):
    """n into A's disk, then into B's, for n = 1, 2, ...; ``step`` is the last n that
    reached both.  An agent command that fails (libvirt refuses them while a member is
    paused) is retried until it went through."""

    def __init__(self, a: Guest, b: Guest) -> None:
        super().__init__(name="ordered-writer", daemon=True)
        self.guests = [(a, a.device(SEQ)), (b, b.device(SEQ))]
        self.step = 0
        self.retries = 0
        self.failure: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=STALL)

    def wait_for(self, step: int) -> None:
        deadline = time.monotonic() + STALL
        while self.step < step:
            if self.failure is not None:
                raise AssertionError(f"the writer failed: {self.failure!r}")
            assert time.monotonic() < deadline, f"the writer is stuck at step {self.step}"
            time.sleep(0.02)

    def run(self) -> None:
        n = 0
        try:
            while not self._halt.is_set():
                n += 1
                for guest, device in self.guests:
                    self._write(guest, device, n)
                self.step = n
        except BaseException as exc:  # noqa: BLE001 - reported by wait_for and the test
            self.failure = exc

    def _write(self, guest: Guest, device: str, n: int) -> None:
        script = 'printf "%020d\\n" "$1" | dd of="$2" bs=512 count=1 conv=sync,fsync 2>&1'
        arguments = {"path": "sh", "arg": ["-c", script, "sh", str(n), device]}
        arguments["capture-output"] = True  # type: ignore[assignment]
        pid = self._retried(guest, "guest-exec", arguments)["pid"]
        while True:
            status = self._retried(guest, "guest-exec-status", {"pid": pid})
            if status["exited"]:
                break
            time.sleep(0.01)
        if status.get("exitcode") != 0:
            raise AgentError(f"{guest.name}: writing {n} to {device} failed: {status}")

    def _retried(self, guest: Guest, command: str, arguments: dict[str, Any]) -> Any:
        deadline = time.monotonic() + STALL
        while True:
            try:
                return guest.command(command, arguments)
            except AgentError:
                self.retries += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def seq_at(conn: Any, guest: Guest, snapshot: str, scratch: Path) -> int:
    """The number on the guest's raw disk in ``snapshot``: the image its overlay sits on
    (a disk-only snapshot's state is the overlay's backing chain)."""
    xml = conn.lookupByName(guest.name).snapshotLookupByName(snapshot).getXMLDesc(0)
    (overlay,) = etree.fromstring(xml.encode()).xpath(f"disks/disk[@name='{SEQ}']/source/@file")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(overlay)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    raw = scratch / "seq.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", info["full-backing-filename"], str(raw)],
        check=True,
        capture_output=True,
    )
    try:
        head = raw.read_bytes()[:21].strip(b"\0").strip()
    finally:
        raw.unlink()
    return int(head) if head else 0


def one_instant(a: int, b: int) -> bool:
    return a in (b, b + 1)


def _policy(text: str) -> Policy:
    parsed = parse_policy(text, "pair.yaml")
    assert isinstance(parsed, Policy), parsed
    return parsed


def pair_policy(a: Guest, b: Guest, directory: Path, *, group: bool) -> Policy:
    return _policy(
        f"name: {'pair' if group else 'alone'}\n"
        f'domains: {{include: ["{a.name}", "{b.name}"]}}\n'
        + ("group: {consistency: crash, max_pause: 10s}\n" if group else "")
        + "schedule: {every: 1h}\n"
        "snapshot:\n"
        "  disk_only: true\n"
        "  disks: external\n"
        f'  directory: "{directory}/{{domain}}"\n'
        '  name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"\n'
    )


SLOW_DISKS = 12  # more disks for guest A: its create takes about 0.5 s longer than B's


@pytest.mark.parametrize("guest_pair", [SLOW_DISKS], indirect=True)
def test_every_group_snapshot_of_two_guests_with_ordered_writes_is_one_instant(
    guest_pair: tuple[Guest, Guest], libvirt_conn: Any, hypervisor: Hypervisor, tmp_path: Path
) -> None:
    a, b = guest_pair
    group = pair_policy(a, b, tmp_path / "snaps", group=True)
    alone = pair_policy(a, b, tmp_path / "snaps", group=False)
    writer = Writer(a, b)
    writer.start()
    taken: list[tuple[str, int]] = []  # (group snapshot, writer step just before it)
    ungrouped: list[tuple[str, str]] = []  # (A's snapshot, B's snapshot), taken apart
    try:
        writer.wait_for(3)
        with open_catalog(str(tmp_path / "state")) as catalog:
            for _ in range(GROUP_SNAPSHOTS):
                before = writer.step
                members = [(hypervisor, hypervisor.domain(g.name)) for g in (a, b)]
                result = GroupRun(group, members, dt.datetime.now(dt.UTC)).execute(catalog)
                assert result.outcome is GroupOutcome.CREATED, result.error
                taken.append((result.name, before))
                time.sleep(random.uniform(0.05, 0.5))  # noqa: S311 - spacing, not secrets
            for _ in range(UNGROUPED_PAIRS):
                names = []
                for guest in (a, b):
                    run = PolicyRun(alone, hypervisor.domain(guest.name), dt.datetime.now(dt.UTC))
                    made = run.take(hypervisor, catalog)
                    assert made.error is None, made.error
                    names.append(run.name)
                    if guest is a:
                        writer.wait_for(writer.step + 2)  # B moves on before its snapshot
                ungrouped.append((names[0], names[1]))
        writer.wait_for(writer.step + 1)  # still writing after the last snapshot
    finally:
        writer.stop()
    assert writer.failure is None, writer.failure

    seen = [
        (name, seq_at(libvirt_conn, a, name, tmp_path), seq_at(libvirt_conn, b, name, tmp_path))
        for name, _ in taken
    ]
    broken = [(name, na, nb) for name, na, nb in seen if not one_instant(na, nb)]
    assert broken == [], f"group snapshots not of one instant (name, A, B): {broken}"
    # The writer went on through the run: the snapshots saw many different steps, each
    # no earlier than the step reached just before its run began.
    assert all(na >= before for (_, na, _), (_, before) in zip(seen, taken, strict=True))
    assert len({na for _, na, _ in seen}) >= GROUP_SNAPSHOTS // 2, seen
    # Without a group, the pair is not one instant: the same check fails every pair.
    apart = [
        (seq_at(libvirt_conn, a, sa, tmp_path), seq_at(libvirt_conn, b, sb, tmp_path))
        for sa, sb in ungrouped
    ]
    assert all(not one_instant(na, nb) for na, nb in apart), apart
    print(
        f"\n{len(seen)} group snapshots, all one instant (A, B): {[(x, y) for _, x, y in seen]}"
        f"\n{len(apart)} pairs taken apart, none one instant (A, B): {apart}"
        f"\nwriter: {writer.step} steps, {writer.retries} agent commands retried"
    )


def _log_length(guest: Guest) -> int:
    try:
        return len(guest.freeze_log())
    except AgentError:  # no freeze yet: the hook's log does not exist
        return 0


def app_policy(names: list[str], directory: Path, *, fallback: bool) -> Policy:
    return _policy(
        "name: app\n"
        f"domains: {{include: {json.dumps(names)}}}\n"
        "group: {consistency: application, max_pause: 30s"
        + (", fallback: crash" if fallback else "")
        + "}\n"
        "schedule: {every: 1h}\n"
        "snapshot:\n"
        "  disk_only: true\n"
        "  disks: external\n"
        f'  directory: "{directory}/{{domain}}"\n'
        '  name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"\n'
    )


def test_an_application_group_freezes_every_guest_and_falls_back_only_when_told(
    guest_pair: tuple[Guest, Guest],
    domain_factory: Any,
    libvirt_conn: Any,
    hypervisor: Hypervisor,
    tmp_path: Path,
) -> None:
    """Two guests with agents: each is frozen for the group and thawed after, never
    paused.  A third member without an agent fails the group (both guests thawed,
    nothing left) unless ``fallback: crash``, which takes all three crash-consistent."""
    a, b = guest_pair
    snaps = tmp_path / "snaps"

    def run(policy: Policy, names: list[str]) -> Any:
        members = [(hypervisor, hypervisor.domain(n)) for n in names]
        with open_catalog(str(tmp_path / "state")) as catalog:
            return GroupRun(policy, members, dt.datetime.now(dt.UTC)).execute(catalog)

    def freezes(guest: Guest, seen: int) -> list[str]:
        """The hook's entries after the first ``seen`` (the guest's clock is its own)."""
        return [what for _, what in guest.freeze_log()[seen:]]

    seen = {g.name: _log_length(g) for g in (a, b)}
    made = run(app_policy([a.name, b.name], snaps, fallback=False), [a.name, b.name])
    assert made.outcome is GroupOutcome.CREATED, made.error
    assert made.consistency.value == "application"
    assert {m.hold.value for m in made.members} == {"freeze"}
    for guest in (a, b):
        assert freezes(guest, seen[guest.name]) == ["freeze", "thaw"], guest.freeze_log()
        assert not guest.fs_frozen()
        assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        (snap,) = guest.dom.listAllSnapshots()
        assert snap.getName() == made.name

    plain = domain_factory(state="running", suffix="noagent")
    names = [a.name, b.name, plain.name]
    refused = run(app_policy(names, snaps, fallback=False), names)
    assert refused.outcome is GroupOutcome.FAILED
    assert plain.name in str(refused.error)
    assert "agent" in str(refused.error)
    for guest in (a, b):
        assert not guest.fs_frozen()
        assert len(guest.dom.listAllSnapshots()) == 1  # the first group's only
    assert plain.dom.listAllSnapshots() == []

    fell_back = run(app_policy(names, snaps, fallback=True), names)
    assert fell_back.outcome is GroupOutcome.CREATED, fell_back.error
    assert fell_back.consistency.value == "crash"
    assert "fell back to crash" in str(fell_back.note)
    for guest in (a, b):
        assert not guest.fs_frozen()
        assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    for dom in (a.dom, b.dom, plain.dom):
        assert fell_back.name in [s.getName() for s in dom.listAllSnapshots()]
