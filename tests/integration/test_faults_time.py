"""Fault and bad-input cases 9, 10, 11, 12 (issue 7): retention, time and policy files.

Against real libvirtd (tests/integration/target.py's URI) and real QEMU domains made by
``domain_factory``.
Case 19 (random documents and ``snapshotd check``) needs no libvirt: it is in
tests/unit/test_faults_check.py.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import Run
from snapshotd.config.settings import Overrides
from snapshotd.daemon.link import Link
from snapshotd.daemon.loop import Daemon as Loop
from tests.integration.cli import make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.target import URI
from tests.integration.test_daemon import Daemon, snapshots, write_policy

NAME = "{policy}-{time:%Y%m%dT%H%M%S%fZ}"
UTC = dt.UTC


def _policy_file(root: Path, name: str, body: str) -> Path:
    path = root / "policies" / f"{name}.yaml"
    path.write_text(body)
    path.chmod(0o644)
    return path


def _libvirt_names(dom: ScratchDomain) -> set[str]:
    return {s.getName() for s in dom.dom.listAllSnapshots(0)}


def _catalog_names(state: Path, uuid: str) -> set[str]:
    with open_catalog(str(state)) as catalog:
        return {row.name for row in catalog.snapshots(domain_uuid=uuid)}


def _files(dom: ScratchDomain) -> set[str]:
    return {str(p.relative_to(dom.directory)) for p in dom.directory.rglob("*") if p.is_file()}


# --- 11: the clock stepped backward and forward -----------------------------------------


class SteppedClock:
    """A wall clock the test sets; the daemon reads it instead of time.time()."""

    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def set(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


class Driven:
    """The daemon's main loop, driven pass by pass: its own tick(), events and jobs."""

    def __init__(self, root: Path, clock: SteppedClock) -> None:
        config = make_settings(root)
        paths = Overrides(str(config), str(root / "policies"), str(root / "state"))
        self.clock = clock
        self.loop = Loop(paths, workers=1, clock=clock)
        assert self.loop.reload(first=True)
        self.loop.links[URI] = Link(URI, self.loop.events)
        self.loop.links[URI].start()
        self.catalog = open_catalog(str(root / "state"))
        self.runs = self.catalog.runs
        self.jobs_started = 0
        self.drain(until=lambda: URI in self.loop.domains, what="the domain list")

    def drain(self, until: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}"
            try:
                event = self.loop.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.loop._handle(event)

    def tick(self, when: dt.datetime) -> int:
        """One loop pass at ``when``; waits for the jobs it started; returns how many."""
        self.clock.set(when)
        self.loop.tick(self.runs, self.clock())
        started = len(self.loop.jobs)
        self.jobs_started += started
        self.drain(until=lambda: not self.loop.jobs, what="the snapshot job")
        return started

    def close(self) -> None:
        for link in self.loop.links.values():
            link.stop()
        self.catalog.close()


def test_fault_11_clock_stepped_backward_and_forward_no_duplicates_no_burst(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """11. "Clock stepped backward and forward by hours: no duplicate snapshots, no
    burst."  The daemon's own loop (tick, dispatch, job threads, real libvirt) reads
    a stepped wall clock: forward by hours gives one catch-up run serving the latest
    slot (not the stale planned slot and then a catch-up); backward gives no second
    run for any slot already served."""
    dom = domain_factory(state="shutoff")
    make_settings(tmp_path)
    _policy_file(
        tmp_path,
        "hourly",
        f"""
domains:
  include: ["{dom.name}"]
schedule:
  cron: "0 * * * *"
  catch_up: true
snapshot:
  name: "{NAME}"
""",
    )
    day = dt.datetime(2031, 3, 4, tzinfo=UTC)

    def at(h: int, m: int = 0, s: int = 0) -> dt.datetime:
        return day + dt.timedelta(hours=h, minutes=m, seconds=s)

    clock = SteppedClock(at(10, 30))
    driven = Driven(tmp_path, clock)
    try:
        assert driven.tick(at(10, 30)) == 0  # never run: waits for 11:00
        assert driven.tick(at(11, 0, 5)) == 1
        slot = driven.runs.get("hourly", dom.uuid)
        assert slot is not None
        assert slot.last_slot == int(at(11).timestamp())
        assert driven.tick(at(11, 0, 10)) == 0  # 12:00 is planned now

        # Stepped forward five hours: one run, serving 16:00, then nothing until 17:00.
        assert driven.tick(at(16, 10)) == 1
        assert driven.tick(at(16, 10, 1)) == 0
        assert driven.tick(at(16, 30)) == 0
        run = driven.runs.get("hourly", dom.uuid)
        assert run is not None
        assert run.last_slot == int(at(16).timestamp())
        assert len(_libvirt_names(dom)) == 2

        # Stepped back three hours: the slots 14:00..16:00 pass again, none is re-served,
        # also after a reload (which forgets the planned times).
        assert driven.tick(at(13, 10)) == 0
        driven.loop.reload()
        for h in (13, 14, 15, 16):
            assert driven.tick(at(h, 0, 5)) == 0, f"slot {h}:00 served twice"
        assert driven.tick(at(16, 59, 59)) == 0
        assert len(_libvirt_names(dom)) == 2
        assert driven.tick(at(17, 0, 5)) == 1  # the schedule goes on
        names = _libvirt_names(dom)
        assert len(names) == 3
        assert _catalog_names(tmp_path / "state", dom.uuid) == names
        assert driven.jobs_started == 3
    finally:
        driven.close()


# --- 12: policy files truncated, renamed over, deleted and re-created, half-written -------


def _body(dom: ScratchDomain, description: str) -> str:
    return f"""domains:
  include: ["{dom.name}"]
schedule:
  every: 2s
  catch_up: true
snapshot:
  name: "{NAME}"
  description: "{description}"
retention:
  keep_last: 100
"""


def _located_error(daemon: Daemon, path: Path, line: int) -> bool:
    """The status line names the policy file and the line of the error."""
    daemon.drain()
    pattern = re.compile(rf"policy errors: {re.escape(str(path))}:{line}:\d+: \S")
    return any(pattern.search(m) for m in daemon.messages if m.startswith("STATUS="))


def _still_in_force(daemon: Daemon, dom: ScratchDomain, description: str) -> None:
    """A snapshot taken after this moment still carries ``description``."""
    after = max((t for t, _, _ in snapshots(dom)), default=0)
    daemon.wait_for(
        lambda: any(t > after for t, _, _ in snapshots(dom)), 15, f"a snapshot after {after}"
    )
    assert {d for t, _, d in snapshots(dom) if t > after} == {description}


@pytest.mark.parametrize("variant", ["truncated", "renamed-over", "deleted-recreated", "half"])
def test_fault_12_policy_file_damage_keeps_the_last_good_policy(
    domain_factory: DomainFactory, daemon: Daemon, variant: str
) -> None:
    """12. "Policy file truncated, replaced by rename, deleted and re-created, or saved
    half-written: the last good policy stays in force, the error names file and line."
    Against the real daemon: after each fault the snapshots it goes on taking show which
    policy is in force, the STATUS line shows FILE:LINE, and no snapshot is lost."""
    dom = domain_factory(state="shutoff")
    path = daemon.policies / "pol.yaml"
    write_policy(daemon, "pol", _body(dom, "good"))
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(dom)) >= 1, 20, "a first snapshot")
    good = _body(dom, "new")
    if variant == "truncated":
        path.open("w").close()  # truncated to 0 bytes in place
        daemon.wait_for(lambda: _located_error(daemon, path, 1), 10, "the located error")
        assert any(f"{path}:1:1: the file is empty" in m for m in daemon.messages)
        _still_in_force(daemon, dom, "good")
        write_policy(daemon, "pol", good)
    elif variant == "renamed-over":
        broken = _body(dom, "bad").replace("every: 2s", "every: 2 seconds")
        write_policy(daemon, "pol", broken, rename=True)
        daemon.wait_for(lambda: _located_error(daemon, path, 4), 10, "the located error")
        _still_in_force(daemon, dom, "good")
        write_policy(daemon, "pol", good, rename=True)
    elif variant == "deleted-recreated":
        # As a tool that removes and writes anew: the watcher sees one change.
        path.unlink()
        write_policy(daemon, "pol", good)
    else:  # half-written: a prefix is saved, a pause, then the rest
        cut = good.index("  catch_up")
        with path.open("w") as f:
            f.write(good[: cut + len("  catch_u")])
        daemon.wait_for(lambda: _located_error(daemon, path, 5), 10, "the located error")
        _still_in_force(daemon, dom, "good")
        with path.open("a") as f:
            f.write(good[cut + len("  catch_u") :])
    daemon.wait_for(
        lambda: bool(snapshots(dom)) and snapshots(dom)[-1][2] == "new", 15, "the good edit"
    )
    before = {name for _, name, _ in snapshots(dom)}
    _still_in_force(daemon, dom, "new")
    assert daemon.proc is not None
    assert daemon.proc.poll() is None  # never crashed
    assert daemon.stop() == 0
    after = {name for _, name, _ in snapshots(dom)}
    assert before <= after  # nothing lost
    assert _catalog_names(daemon.state, dom.uuid) == after
    log = daemon.log.read_text()
    assert "Traceback" not in log
    if variant == "deleted-recreated":
        assert "policies in force: none" not in log  # there was no moment without it


# --- 10: the host was down for 30 days ----------------------------------------------------

DAY = 86400


def _age(dom: ScratchDomain, state: Path, name: str, created: int, *, current: bool) -> None:
    """Give snapshot ``name`` the creation time ``created``, in libvirt and the catalog.

    libvirt keeps the snapshot's data; REDEFINE replaces its metadata, creationTime
    included, which is how a history made 30 days ago looks to everyone who reads it.
    """
    snap = dom.dom.snapshotLookupByName(name, 0)
    xml = re.sub(
        r"<creationTime>\d+</creationTime>",
        f"<creationTime>{created}</creationTime>",
        snap.getXMLDesc(0),
    )
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    dom.dom.snapshotCreateXML(xml, flags)
    db = sqlite3.connect(state / "catalog.sqlite")
    with db:
        changed = db.execute(
            "UPDATE snapshots SET created_at = ?, xml = ? WHERE domain_uuid = ? AND name = ?",
            (created, xml, dom.uuid, name),
        ).rowcount
    db.close()
    assert changed == 1


def _status(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    assert isinstance(data, dict)
    return data


def test_fault_10_host_down_30_days_one_catch_up_and_the_history_stays(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """10. "Host down for 30 days (simulated clock): one catch-up snapshot; retention
    does not wipe the history on return."  A daily policy's four snapshots and its
    runs row are made 30..33 days old (libvirt's creationTime through REDEFINE, the
    catalog's created_at and last_slot); then the real daemon starts: it takes one
    snapshot, serving the latest slot, and its hourly/daily retention keeps the old
    history (periods count the ones that have a snapshot, not calendar windows)."""
    dom = domain_factory(state="shutoff")
    root = daemon.root
    make_settings(root)
    body = f"""
domains:
  include: ["{dom.name}"]
schedule:
  cron: "0 3 * * *"
  catch_up: true
snapshot:
  name: "{NAME}"
"""
    write_policy(daemon, "daily", body)  # the history is taken without retention...
    old = []
    for _ in range(4):
        result = snapshotd("take", "--policy", "daily", "--json", *settings_args(root))
        assert result.code == 0, result.err
        old.append(json.loads(result.out)[0]["snapshot"]["name"])
    write_policy(daemon, "daily", body + "retention:\n  hourly: 24\n  daily: 7\n")  # ...kept by it
    now = int(time.time())
    today_slot = (now - 3 * 3600) // DAY * DAY + 3 * 3600  # the latest 03:00 UTC <= now
    for age, name in zip((33, 32, 31, 30), old, strict=True):
        _age(dom, root / "state", name, today_slot - age * DAY + 60, current=age == 30)
    with open_catalog(str(root / "state")) as catalog:
        runs = catalog.runs
        last = today_slot - 30 * DAY
        runs.start(Run("daily", dom.uuid, URI, dom.name), old[-1], last, last)
        runs.finish("daily", dom.uuid, slot=last, error=None, now=last + 60)
    before_libvirt, before_files = _libvirt_names(dom), _files(dom)
    assert before_libvirt == set(old) == _catalog_names(root / "state", dom.uuid)

    daemon.start()
    daemon.wait_ready()

    def settled() -> bool:  # the catch-up ran and the next run is tomorrow's slot
        entries = [e for e in _status(root / "state").get("scheduled", []) if e["policy"]]
        return bool(entries) and all(e["next_due"] >= today_slot + DAY for e in entries)

    daemon.wait_for(settled, 30, "the catch-up run and tomorrow's slot")
    after = _libvirt_names(dom)
    assert before_libvirt < after
    assert len(after) == 5  # one catch-up, no burst of 30
    assert _catalog_names(root / "state", dom.uuid) == after
    assert before_files <= _files(dom)
    with open_catalog(str(root / "state")) as catalog:
        run = catalog.runs.get("daily", dom.uuid)
        deletes = [op for op in catalog.operations() if op.operation == "delete"]
    assert run is not None
    assert run.last_slot == today_slot  # the latest slot, served once
    assert deletes == []
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    assert daemon.stop(signal.SIGTERM) == 0


# --- 9: retention next to foreign snapshots and next to a parent that is still needed ------

VIRSH = ["virsh", "-q", "-c", URI]


def _virsh(*args: str) -> str:
    return subprocess.run([*VIRSH, *args], check=True, capture_output=True, text=True).stdout


def _take(root: Path, policy: str) -> dict[str, Any]:
    result = snapshotd("take", "--policy", policy, "--json", *settings_args(root))
    (entry,) = json.loads(result.out)
    assert isinstance(entry, dict)
    assert entry["outcome"] == "created", result.err
    entry["code"] = result.code
    time.sleep(1.1)  # libvirt's creation times have one-second resolution
    return entry


def _keep_one(dom: ScratchDomain, extra: str = "") -> str:
    return f"""
domains:
  include: ["{dom.name}"]
schedule:
  every: 1h
snapshot:
  name: "{NAME}"
{extra}
retention:
  keep_last: 1
"""


def _parent(dom: ScratchDomain, name: str) -> str | None:
    try:
        return str(dom.dom.snapshotLookupByName(name, 0).getParent(0).getName())
    except libvirt.libvirtError:
        return None


def _creation(dom: ScratchDomain, name: str) -> int:
    xml = dom.dom.snapshotLookupByName(name, 0).getXMLDesc(0)
    return int(etree.fromstring(xml.encode()).findtext("creationTime") or "")


def test_fault_09_foreign_lookalikes_are_never_pruned(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """9. "Retention next to snapshots snapshotd did not make ...: those are never
    deleted."  Two foreign snapshots made by virsh directly: one with the policy's
    prefix and an older time in its name, and one that re-uses the exact name of a
    snapshot the policy took (deleted by hand, then made again by hand).  keep_last 1
    prunes the policy's own older snapshots around them and never them."""
    dom = domain_factory(state="shutoff")
    make_settings(tmp_path)
    _policy_file(tmp_path, "keep1", _keep_one(dom))
    lookalike = "keep1-20200101T000000000000Z"
    _virsh("snapshot-create-as", dom.name, lookalike, "--description", "by hand")
    first = _take(tmp_path, "keep1")["snapshot"]["name"]
    _virsh("snapshot-delete", dom.name, first)  # by hand: the catalog still has its row
    _virsh("snapshot-create-as", dom.name, first, "--description", "by hand, same name")
    time.sleep(1.1)
    files = _files(dom)
    taken = [_take(tmp_path, "keep1") for _ in range(3)]
    names = [t["snapshot"]["name"] for t in taken]
    assert [t["pruned"] for t in taken] == [[], [names[0]], [names[1]]]
    assert all(t["code"] == 0 for t in taken)
    assert _libvirt_names(dom) == {lookalike, first, names[-1]}
    for name, text in ((lookalike, "by hand"), (first, "by hand, same name")):
        xml = dom.dom.snapshotLookupByName(name, 0).getXMLDesc(0)
        assert etree.fromstring(xml.encode()).findtext("description") == text
        with open_catalog(str(tmp_path / "state")) as catalog:
            assert catalog.owner(dom.uuid, name, _creation(dom, name)) is None
    assert _files(dom) == files  # internal snapshots: no file came or went


def _pattern(image: Path, snapshot: str | None, byte: int) -> bool:
    """Whether the first 64 KiB of ``image`` (at internal ``snapshot``) hold ``byte``."""
    args = ["qemu-img", "convert", "-U", "-O", "raw"]
    if snapshot is not None:
        args += ["-l", f"snapshot.name={snapshot}"]
    out = image.with_suffix(".check.raw")
    subprocess.run([*args, str(image), str(out)], check=True, capture_output=True)
    try:
        with out.open("rb") as f:
            return f.read(65536) == bytes([byte]) * 65536
    finally:
        out.unlink()


def _write(image: Path, byte: int) -> None:
    subprocess.run(
        ["qemu-io", "-c", f"write -P {byte} 0 64k", str(image)], check=True, capture_output=True
    )


def test_fault_09_internal_parent_of_a_needed_child_loses_no_data(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """9. "... and next to a snapshot whose children still need it: those are never
    deleted" -- what retention does with the policy's own internal snapshot A, past
    retention, whose child B (made by hand) must stay: libvirt deletes A's qcow2
    snapshot and re-parents B (metadata merge); B's data is its own, so nothing of B
    is lost: its disk contents read the same, and reverting to it gives them back."""
    dom = domain_factory(state="shutoff")
    image = dom.image("vda")
    make_settings(tmp_path)
    _policy_file(tmp_path, "chain", _keep_one(dom))
    _write(image, 0x11)
    a = _take(tmp_path, "chain")["snapshot"]["name"]
    _write(image, 0x22)
    _virsh("snapshot-create-as", dom.name, "hand-b", "--description", "needed child")
    assert _parent(dom, "hand-b") == a
    assert _pattern(image, "hand-b", 0x22)
    _write(image, 0x33)
    c = _take(tmp_path, "chain")
    assert c["code"] == 0
    assert c["pruned"] == [a]
    assert _libvirt_names(dom) == {"hand-b", c["snapshot"]["name"]}
    assert _parent(dom, "hand-b") is None  # A's metadata merged away, B re-parented
    assert _parent(dom, c["snapshot"]["name"]) == "hand-b"
    assert _pattern(image, "hand-b", 0x22)  # B's data untouched
    assert _pattern(image, c["snapshot"]["name"], 0x33)
    assert _pattern(image, None, 0x33)
    _virsh("snapshot-revert", dom.name, "hand-b")
    assert _pattern(image, None, 0x22)


def _overlay(dom: ScratchDomain, snapshot: str) -> Path:
    """The overlay an external snapshot started (its <disk><source file=...>)."""
    xml = dom.dom.snapshotLookupByName(snapshot, 0).getXMLDesc(0)
    source = etree.fromstring(xml.encode()).find("./disks/disk[@name='vda']/source")
    assert source is not None, xml
    return Path(source.get("file") or "")


def _backing(image: Path) -> Path:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(info)["full-backing-filename"])


def test_fault_09_external_parent_of_a_needed_child_loses_no_data(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """9. A needed parent in an external chain: the policy's external disk-only
    snapshot A of a shut-off domain, past retention, with a child B made by hand on
    top.  What libvirt does differs, and snapshotd follows it; no data is lost either way:
    - libvirt 9.0 cannot merge A's overlay offline and refuses to delete it.  The prune
      keeps A, names A, the domain and libvirt's reason, the take exits 1 with its own
      snapshot made, every overlay is still there.
    - libvirt 11.3 merges A's overlay into A's image and re-points B's overlay at it.
      The prune deletes A, and B's and the newest snapshot's data read as before."""
    dom = domain_factory(state="shutoff")
    base = dom.image("vda")
    make_settings(tmp_path)
    _policy_file(tmp_path, "ext", _keep_one(dom, "  disk_only: true\n  disks: external"))
    _write(base, 0x11)
    a = _take(tmp_path, "ext")["snapshot"]["name"]
    overlay_a = _overlay(dom, a)
    _write(overlay_a, 0x22)
    child = dom.directory / "hand-b.qcow2"
    _virsh(
        "snapshot-create-as", dom.name, "hand-b", "--disk-only", "--diskspec", f"vda,file={child}"
    )
    assert _parent(dom, "hand-b") == a
    _write(child, 0x33)
    files = _files(dom)
    c = _take(tmp_path, "ext")
    newest = c["snapshot"]["name"]
    version = dom.dom.connect().getLibVersion()
    merged = not c.get("prune_failed")
    if version < 9_001_000:
        assert not merged, json.dumps(c)
    elif version >= 11_003_000:
        assert merged, json.dumps(c)
    assert _parent(dom, newest) == "hand-b"
    assert _pattern(_backing(child), None, 0x22)  # B's state
    assert _pattern(_backing(_overlay(dom, newest)), None, 0x33)  # C's state
    with open_catalog(str(tmp_path / "state")) as catalog:
        ours = catalog.find(dom.uuid, a)
    if merged:
        assert c["code"] == 0, json.dumps(c)
        assert c["pruned"] == [a]
        assert _libvirt_names(dom) == {"hand-b", newest}
        assert _backing(child) == base  # A's overlay merged into A's image
        assert not overlay_a.exists()
        assert ours is None  # deleted, and recorded so
    else:
        assert c["code"] == 1
        assert c["pruned"] == []
        (failure,) = c["prune_failed"]
        assert failure["snapshot"] == a
        assert f"domain {dom.name!r}: delete snapshot {a!r} failed" in failure["error"]
        assert "invalid argument" in failure["error"]  # libvirt's own reason follows
        assert _libvirt_names(dom) == {a, "hand-b", newest}
        assert files <= _files(dom)  # every overlay is still there
        assert _pattern(_backing(overlay_a), None, 0x11)  # A's state
        assert ours is not None  # still ours, live


def _guest_write(dom: ScratchDomain, byte: int) -> None:
    """Write through the running QEMU's own block layer (HMP qemu-io), then flush."""
    device = "/machine/peripheral/virtio-disk0/virtio-backend"
    for command in (f"write -P {byte} 0 64k", "flush"):
        out = _virsh("qemu-monitor-command", dom.name, "--hmp", f'qemu-io -d {device} "{command}"')
        assert "rror" not in out, out


def test_fault_09_running_external_parent_is_merged_and_no_data_is_lost(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """9. The same chain on a running domain, where libvirt 9.0 can delete the
    policy's external snapshot A although its child B (made by hand) needs it: it
    commits A's overlay into A's image and re-points B's overlay at it.  B's data and
    the policy's newest snapshot's data read exactly as before, and A's overlay is
    gone (no leftover)."""
    dom = domain_factory(state="running")
    base = dom.image("vda")
    make_settings(tmp_path)
    _policy_file(tmp_path, "ext", _keep_one(dom, "  disk_only: true\n  disks: external"))
    _guest_write(dom, 0x11)
    a = _take(tmp_path, "ext")["snapshot"]["name"]
    overlay_a = _overlay(dom, a)
    _guest_write(dom, 0x22)
    child = dom.directory / "hand-b.qcow2"
    _virsh(
        "snapshot-create-as", dom.name, "hand-b", "--disk-only", "--diskspec", f"vda,file={child}"
    )
    _guest_write(dom, 0x33)
    assert _pattern(_backing(child), None, 0x22)  # B's state, before
    files = _files(dom)
    c = _take(tmp_path, "ext")
    newest = c["snapshot"]["name"]
    assert c["code"] == 0, json.dumps(c)
    assert c["pruned"] == [a]
    assert _libvirt_names(dom) == {"hand-b", newest}
    assert _parent(dom, newest) == "hand-b"
    assert _backing(child) == base  # A's overlay merged into A's image
    assert not overlay_a.exists()
    made = str(_overlay(dom, newest).relative_to(dom.directory))
    assert _files(dom) == (files - {str(overlay_a.relative_to(dom.directory))}) | {made}
    assert _pattern(_backing(child), None, 0x22)  # B's state, after
    assert _pattern(_backing(_overlay(dom, newest)), None, 0x33)  # C's state
    assert dom.state() == libvirt.VIR_DOMAIN_RUNNING
