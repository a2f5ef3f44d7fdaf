"""Consistency groups against real libvirt: several real domains at one instant.

`snapshotd take --policy` and the daemon run one GroupRun (actions/grouprun.py) over
every member; tests/unit/test_grouprun.py holds the same run to each failure path on
the fakes.  Here: every member suspended before any snapshot and resumed after, the
rollback when one member's snapshot fails (nothing of the group left, the others'
overlays merged back by libvirt), retention deleting groups as units, and the
daemon releasing a member that a killed process left paused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import HoldRow
from tests.integration import target
from tests.integration.cli import files_under, make_settings, settings_args, snapshotd, start
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.test_daemon import (
    Daemon,
    free_port,
    metric,
    metrics_text,
    snapshots,
    status,
    write_policy,
)

RUNNING = libvirt.VIR_DOMAIN_RUNNING
PAUSED = libvirt.VIR_DOMAIN_PAUSED


def group_policy(prefix: str, directory: Path, *, group: str = "", retention: str = "") -> str:
    """A crash-consistent group of every domain whose name starts with ``prefix``."""
    return (
        "name: shop\n"
        f'domains: {{include: ["{prefix}*"], states: [running, paused, shutoff]}}\n'
        f"group: {{max_pause: 10s{group}}}\n"
        "schedule: {every: 1h}\n"
        "snapshot:\n"
        "  disk_only: true\n"
        "  disks: external\n"
        f'  directory: "{directory}/{{domain}}"\n'
        '  name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"\n'
        f"{retention}"
    )


def members(domain_factory: DomainFactory, count: int, group: str) -> list[ScratchDomain]:
    """``count`` running domains named with the group's own prefix."""
    return [domain_factory(state="running", suffix=f"{group}{i}") for i in range(count)]


def state(dom: ScratchDomain) -> int:
    return int(dom.dom.state()[0])


def group_rows(state_dir: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(state_dir / "catalog.sqlite")) as db:
        rows = db.execute("SELECT name, domain_name FROM group_members ORDER BY domain_name")
        return [(str(a), str(b)) for a, b in rows.fetchall()]


def write_shop(root: Path, body: str) -> None:
    """The group policy ``shop`` in ``root``'s policy directory, with a mode snapshotd
    trusts."""
    path = root / "policies" / "shop.yaml"
    path.write_text(body)
    path.chmod(0o644)


def run_until_a_group(daemon: Daemon, prefix: str) -> str:
    """`snapshotd run` with ``shop`` every 3 s over the domains named ``prefix*``, until
    it made a group; stopped cleanly; its log."""
    body = group_policy(prefix, daemon.root / "snaps").replace("every: 1h", "every: 3s")
    write_policy(daemon, "shop", body)
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: "group shop: created" in daemon.log.read_text(), 60, "a group")
    assert daemon.stop() == 0
    return daemon.log.read_text()


def take(root: Path) -> tuple[int, dict[str, object], str]:
    result = snapshotd("take", "--policy", "shop", "--json", *settings_args(root))
    shown = json.loads(result.out) if result.out.strip() else {}
    return result.code, shown, result.err


def test_a_crash_group_of_three_running_domains_is_taken_at_one_instant(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    doms = members(domain_factory, 3, "ga")
    prefix = doms[0].name[:-1]
    make_settings(tmp_path)
    snaps = tmp_path / "snaps"
    write_shop(tmp_path, group_policy(prefix, snaps))

    code, shown, err = take(tmp_path)

    assert code == 0, (shown, err)
    assert shown["outcome"] == "created"
    assert {m["domain"] for m in shown["members"]} == {d.name for d in doms}  # type: ignore[attr-defined, index]
    assert all(m["hold"] == "suspend" for m in shown["members"])  # type: ignore[attr-defined, index]
    pause = shown["pause_seconds"]
    assert isinstance(pause, float)
    assert 0 < pause < 10
    name = str(shown["snapshot"])
    for dom in doms:
        assert state(dom) == RUNNING, dom.name
        assert [n for _, n, _ in snapshots(dom)] == [name]
        overlay = snaps / dom.name / f"{dom.name}.vda.{name}.qcow2"
        assert overlay.is_file()
        assert str(overlay) in dom.dom.XMLDesc(0)  # the domain writes to the overlay now
    assert group_rows(tmp_path / "state") == sorted((name, d.name) for d in doms)

    # list shows each member's group; list --group the group with its members.
    listed = json.loads(
        snapshotd("list", "--domain", doms[0].name, "--json", *settings_args(tmp_path)).out
    )
    assert [(i["name"], i["group"]) for i in listed] == [(name, "shop")]
    grouped = json.loads(
        snapshotd("list", "--group", "shop", "--json", *settings_args(tmp_path)).out
    )
    assert [g["snapshot"] for g in grouped] == [name]
    assert sorted(m["domain"] for m in grouped[0]["members"]) == sorted(d.name for d in doms)
    # status shows the group's last snapshot and its pause window.
    status = json.loads(snapshotd("status", "--json", *settings_args(tmp_path)).out)
    (shop,) = status["groups"]
    assert (shop["policy"], shop["last_snapshot"]) == ("shop", name)
    assert sorted(shop["members"]) == sorted(d.name for d in doms)
    assert shop["pause_seconds"] == pytest.approx(pause, abs=0.002)
    # plan shows the members, how each is held and the order of operations.
    planned = json.loads(
        snapshotd("plan", "--policy", "shop", "--json", *settings_args(tmp_path)).out
    )
    (group,) = planned["groups"]
    assert sorted((m["domain"], m["hold"]) for m in group["members"]) == sorted(
        (d.name, "suspend") for d in doms
    )
    assert [step.split()[0] for step in group["steps"]] == ["suspend", "create", "resume"]
    assert group["last_pause_seconds"] == pytest.approx(pause, abs=0.002)
    # Reverting a disk-only external group: where libvirt can, every member goes back;
    # where it cannot (9.0), the first member's refusal leaves every member as it was.
    sources = {d.name: _sources(d.dom.XMLDesc(0)) for d in doms}
    back = snapshotd("revert", "--group", "shop", name, "--running", *settings_args(tmp_path))
    if back.code == 0:
        for dom in doms:
            assert f"reverted {dom.name} to {name}; it is running" in back.out
            assert state(dom) == RUNNING
    else:
        assert back.code == 2, back
        assert "external" in back.err
        for dom in doms:
            assert state(dom) == RUNNING
            assert _sources(dom.dom.XMLDesc(0)) == sources[dom.name]


def test_revert_group_brings_every_member_back_and_refuses_a_missing_one(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """Internal snapshots (taken while suspended, with memory): every member goes back
    to the group's instant.  A member that is gone makes the revert refuse before any
    member is touched."""
    doms = members(domain_factory, 2, "ge")
    prefix = doms[0].name[:-1]
    make_settings(tmp_path)
    body = group_policy(prefix, tmp_path / "snaps")
    body = body.replace("  disk_only: true\n  disks: external\n", "")
    write_shop(tmp_path, body)
    code, shown, err = take(tmp_path)
    assert code == 0, (shown, err)
    name = str(shown["snapshot"])
    for dom in doms:
        root = dom.dom.snapshotLookupByName(name, 0).getXMLDesc(0)
        assert "<state>paused</state>" in root  # taken while the group held it
        dom.dom.suspend()  # a change the revert undoes

    back = snapshotd("revert", "--group", "shop", name, "--running", *settings_args(tmp_path))
    assert back.code == 0, back
    for dom in doms:
        assert f"reverted {dom.name} to {name}; it is running" in back.out
        assert state(dom) == RUNNING
        assert dom.dom.snapshotCurrent(0).getName() == name

    # One member is gone (undefined): nothing is reverted.
    domain_factory.remove(doms[1])
    doms[0].dom.suspend()
    refused = snapshotd("revert", "--group", "shop", name, *settings_args(tmp_path))
    assert refused.code == 2, refused
    assert f"{doms[1].name} ({doms[1].uuid}) is not defined here" in refused.err
    assert "nothing was changed" in refused.err
    assert state(doms[0]) == PAUSED  # untouched


def test_one_member_failing_rolls_the_whole_group_back(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """The last member's overlay directory is a full filesystem: libvirt fails its
    create; the others' snapshots are deleted again (their overlays merged back), every
    member runs, and the catalog has no group."""
    doms = members(domain_factory, 3, "gb")
    prefix = doms[0].name[:-1]
    make_settings(tmp_path)
    snaps = tmp_path / "snaps"
    write_shop(tmp_path, group_policy(prefix, snaps))
    images = {d.name: d.dom.XMLDesc(0) for d in doms}
    before = {d.name: files_under(d.directory) for d in doms}
    with full_directory(snaps / doms[-1].name):
        code, shown, err = take(tmp_path)

    assert code == 1, (shown, err)
    assert shown["outcome"] == "failed"
    outcomes = {m["domain"]: m["outcome"] for m in shown["members"]}  # type: ignore[attr-defined, index]
    assert outcomes == {
        doms[0].name: "rolled back",
        doms[1].name: "rolled back",
        doms[2].name: "failed",
    }
    assert doms[-1].name in str(shown["error"])
    for dom in doms:
        assert state(dom) == RUNNING, dom.name
        assert snapshots(dom) == []
        # The disk is the base image again; no file of the group is left beside it.
        assert _sources(dom.dom.XMLDesc(0)) == _sources(images[dom.name])
        assert files_under(dom.directory) == before[dom.name]
    for dom in doms[:-1]:
        assert not any((snaps / dom.name).glob("*.qcow2"))
    assert group_rows(tmp_path / "state") == []


def test_retention_deletes_groups_as_units(domain_factory: DomainFactory, tmp_path: Path) -> None:
    doms = members(domain_factory, 2, "gc")
    prefix = doms[0].name[:-1]
    make_settings(tmp_path)
    snaps = tmp_path / "snaps"
    body = group_policy(prefix, snaps, retention="retention: {keep_last: 2}\n")
    write_shop(tmp_path, body)
    names = []
    for _ in range(3):
        code, shown, err = take(tmp_path)
        assert code == 0, (shown, err)
        names.append(str(shown["snapshot"]))
        time.sleep(1.1)  # a later creation time for each group
    # The third take pruned the first group, from both members.
    assert shown["pruned"] == [names[0]]
    for dom in doms:
        assert [n for _, n, _ in snapshots(dom)] == names[1:], dom.name
        assert state(dom) == RUNNING
    assert sorted({n for n, _ in group_rows(tmp_path / "state")}) == names


def test_the_daemon_takes_the_group_and_resumes_a_member_a_killed_process_left_paused(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """A hold in the catalog with its member paused is what kill -9 in the middle of a
    group run leaves: the next daemon resumes the member before anything else, then
    takes the group on schedule."""
    doms = members(domain_factory, 2, "gd")
    prefix = doms[0].name[:-1]
    with open_catalog(str(daemon.state)) as catalog:
        catalog.groups.hold(
            HoldRow("shop", "shop-killed", target.URI, doms[0].uuid, doms[0].name, "suspend", 1)
        )
    doms[0].dom.suspend()
    log = run_until_a_group(daemon, prefix)
    assert f"{doms[0].name}: resumed: group shop held it still (snapshot shop-killed" in log
    assert log.index("resumed: group shop") < log.index("group shop: created")
    assert all(state(d) == RUNNING for d in doms)
    with open_catalog(str(daemon.state)) as catalog:
        assert catalog.groups.held() == []
        groups = catalog.groups.all("shop")
    assert groups
    for group in groups:
        assert {m.domain_name for m in group.members} == {d.name for d in doms}
        for dom in doms:
            assert group.name in [n for _, n, _ in snapshots(dom)]


def test_the_daemon_s_metrics_and_status_show_each_group_s_pause_window(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """Scraped from the running daemon: the pause window histogram counts one
    observation per group run, its sum is the runs' windows (as status and the run
    log show them), and each member's snapshot counts as created."""
    doms = members(domain_factory, 2, "gm")
    prefix = doms[0].name[:-1]
    port = free_port()
    config = daemon.root / "snapshotd.yaml"
    config.write_text(target.connect_line() + f'metrics_address: "127.0.0.1:{port}"\n')
    config.chmod(0o644)
    body = group_policy(prefix, daemon.root / "snaps").replace("every: 1h", "every: 3s")
    write_policy(daemon, "shop", body)
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(
        lambda: (metric(metrics_text(port), "snapshotd_group_pause_seconds_count", policy="shop")
                 or 0) >= 2,
        60,
        "two group runs in the metrics",
    )  # fmt: skip
    for _ in range(50):  # a quiet moment: no run between the reads
        text = metrics_text(port)
        with open_catalog(str(daemon.state)) as catalog:
            groups = catalog.groups.all("shop")
        shown = status(daemon)[1]
        if metrics_text(port) == text:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the metrics never held still")
    runs = metric(text, "snapshotd_group_pause_seconds_count", policy="shop")
    total = metric(text, "snapshotd_group_pause_seconds_sum", policy="shop")
    created = metric(text, "snapshotd_snapshots_created_total", policy="shop")
    assert runs is not None
    assert total is not None
    assert 0 < total < runs * 10  # each window under max_pause
    assert len(groups) == runs
    assert created == 2 * runs  # every member of every group
    windows = [g.pause_ms for g in groups]
    assert all(w is not None for w in windows)
    assert total == pytest.approx(sum(w for w in windows if w is not None) / 1000, abs=0.01 * runs)
    (shop,) = shown["groups"]
    assert shop["pause_seconds"] == pytest.approx((groups[-1].pause_ms or 0) / 1000, abs=0.002)
    in_one_bucket = metric(text, "snapshotd_group_pause_seconds_bucket", policy="shop", le="10.0")
    assert in_one_bucket == runs
    assert daemon.stop() == 0


def test_a_group_a_killed_process_left_half_made_is_rolled_back_not_adopted(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """What kill -9 after one member's create leaves: both members held in the
    catalog, both runs in progress, one member with the group's snapshot.  The next
    daemon resumes both, deletes that snapshot (the group was never recorded, so it is
    not kept alone) and takes the group again whole."""
    from snapshotd.catalog.api import Run  # noqa: PLC0415 - only this test writes runs

    doms = members(domain_factory, 2, "gl")
    prefix = doms[0].name[:-1]
    name = "shop-killed"
    overlay = daemon.root / "snaps" / doms[0].name / f"{doms[0].name}.vda.{name}.qcow2"
    overlay.parent.mkdir(parents=True)
    with open_catalog(str(daemon.state)) as catalog:
        for dom in doms:
            catalog.groups.hold(HoldRow("shop", name, target.URI, dom.uuid, dom.name, "suspend", 1))
            catalog.runs.start(Run("shop", dom.uuid, target.URI, dom.name), name, 1, 1)
    for dom in doms:
        dom.dom.suspend()
    doms[0].dom.snapshotCreateXML(
        f"<domainsnapshot><name>{name}</name><memory snapshot='no'/><disks>"
        f"<disk name='vda' snapshot='external'><source file='{overlay}'/></disk>"
        "</disks></domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
    )
    log = run_until_a_group(daemon, prefix)
    assert f"{doms[0].name}: group shop was interrupted" in log
    assert "its snapshot was deleted again" in log
    assert all(state(d) == RUNNING for d in doms)
    for dom in doms:
        assert name not in [n for _, n, _ in snapshots(dom)], dom.name
    assert not overlay.exists()
    with open_catalog(str(daemon.state)) as catalog:
        assert catalog.groups.held() == []
        assert all(g.name != name for g in catalog.groups.all("shop"))


def test_kill_9_while_the_group_holds_its_members_and_the_restart_resumes_every_one(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """One member's QEMU is stopped (SIGSTOP), so its suspend hangs while the others are
    suspended: the group holds them.  kill -9 of the daemon then, QEMU let go: the next
    daemon finds the holds and resumes every member before anything else."""
    doms = members(domain_factory, 3, "gf")
    prefix = doms[0].name[:-1]
    body = group_policy(prefix, daemon.root / "snaps").replace("max_pause: 10s", "max_pause: 30s")
    write_policy(daemon, "shop", body.replace("every: 1h", "every: 5s"))
    stuck = target.qemu_pid(doms[-1].name)
    os.kill(stuck, signal.SIGSTOP)  # its monitor stops answering: libvirt's suspend hangs
    try:
        daemon.start()
        daemon.wait_ready()
        daemon.wait_for(
            lambda: all(state(d) == PAUSED for d in doms[:-1]), 60, "the others suspended"
        )
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        with open_catalog(str(daemon.state)) as catalog:
            held = {h.domain_name for h in catalog.groups.held()}
        assert held == {d.name for d in doms}  # each written before its member was touched
    finally:
        os.kill(stuck, signal.SIGCONT)
    # libvirtd finishes the suspend it had started: that member may be paused too.
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: all(state(d) == RUNNING for d in doms), 60, "every member resumed")
    log = daemon.log.read_text()
    for dom in doms[:-1]:
        assert f"{dom.name}: resumed: group shop held it still" in log
    daemon.wait_for(lambda: _no_holds(daemon), 30, "the holds released")
    assert daemon.stop() == 0


@contextlib.contextmanager
def qemu_stopped(dom: ScratchDomain) -> Iterator[int]:
    """The domain's QEMU stopped (SIGSTOP): its monitor does not answer, so libvirt's
    suspend of it hangs; continued on the way out, whatever happened (if it still runs)."""
    pid = target.qemu_pid(dom.name)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took (fails after ``timeout``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_max_pause_releases_the_others_while_one_member_s_suspend_hangs(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """One member's QEMU does not answer: the others are resumed once max_pause has
    passed, while it still hangs; once it answers it is resumed too, no snapshot is
    left, and the catalog holds nothing."""
    doms = members(domain_factory, 3, "gh")
    prefix = doms[0].name[:-1]
    make_settings(tmp_path)
    snaps = tmp_path / "snaps"
    body = group_policy(prefix, snaps).replace("max_pause: 10s", "max_pause: 3s")
    write_shop(tmp_path, body)
    with qemu_stopped(doms[-1]):
        proc = start("take", "--policy", "shop", "--json", *settings_args(tmp_path))
        try:
            wait_until(lambda: all(state(d) == PAUSED for d in doms[:-1]), 30, "held")
            held_for = wait_until(
                lambda: all(state(d) == RUNNING for d in doms[:-1]), 10, "the others resumed"
            )
            assert held_for < 3 + 1.5  # max_pause, and the resumes' own time
            assert proc.poll() is None  # still waiting for the member that hangs
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=60)
    shown = json.loads(out)

    assert proc.returncode == 1, (out, err)
    assert shown["outcome"] == "failed"
    assert "had not returned when group.max_pause (3s) passed" in str(shown["error"])
    wait_until(lambda: state(doms[-1]) == RUNNING, 30, "the hanging member resumed")
    for dom in doms:
        assert state(dom) == RUNNING, dom.name
        assert snapshots(dom) == []
        assert not any((snaps / dom.name).glob("*.qcow2"))
    with open_catalog(str(tmp_path / "state")) as catalog:
        assert catalog.groups.held() == []
    assert group_rows(tmp_path / "state") == []


def test_a_member_whose_qemu_dies_mid_run_fails_the_group_and_the_others_run_on(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """The member vanishes while the group holds the others (its QEMU is killed while
    its suspend hangs): the group fails naming it, the others are resumed at once, and
    nothing of the group is left anywhere."""
    doms = members(domain_factory, 3, "gi")
    prefix = doms[0].name[:-1]
    make_settings(tmp_path)
    snaps = tmp_path / "snaps"
    write_shop(tmp_path, group_policy(prefix, snaps))
    before = {d.name: files_under(d.directory) for d in doms}
    with qemu_stopped(doms[-1]) as pid:
        proc = start("take", "--policy", "shop", "--json", *settings_args(tmp_path))
        try:
            wait_until(lambda: all(state(d) == PAUSED for d in doms[:-1]), 30, "held")
            os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        except BaseException:
            proc.kill()
            raise
    shown = json.loads(out)

    assert proc.returncode == 1, (out, err)
    assert shown["outcome"] == "failed"
    assert doms[-1].name in str(shown["error"])
    assert state(doms[-1]) == libvirt.VIR_DOMAIN_SHUTOFF
    for dom in doms:
        assert snapshots(dom) == []
        assert files_under(dom.directory) == before[dom.name]
        assert not any((snaps / dom.name).glob("*.qcow2"))
    for dom in doms[:-1]:
        assert state(dom) == RUNNING, dom.name
    with open_catalog(str(tmp_path / "state")) as catalog:
        assert catalog.groups.held() == []
    assert group_rows(tmp_path / "state") == []


def test_sigterm_while_the_group_holds_its_members_releases_every_one_then_exits(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """SIGTERM arrives while one member's suspend hangs and the others are paused: the
    daemon starts nothing new, the others are resumed within max_pause, and once the
    member answers it is resumed too and the daemon exits cleanly with the run
    recorded as failed."""
    doms = members(domain_factory, 3, "gj")
    prefix = doms[0].name[:-1]
    body = group_policy(prefix, daemon.root / "snaps").replace("max_pause: 10s", "max_pause: 3s")
    write_policy(daemon, "shop", body.replace("every: 1h", "every: 5s"))
    with qemu_stopped(doms[-1]):
        daemon.start()
        daemon.wait_ready()
        wait_until(lambda: all(state(d) == PAUSED for d in doms[:-1]), 60, "held")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: all(state(d) == RUNNING for d in doms[:-1]), 10, "resumed")
        assert daemon.proc.poll() is None  # it waits for the run in flight
    assert daemon.stop(timeout=60) == 0
    wait_until(lambda: state(doms[-1]) == RUNNING, 30, "the hanging member resumed")
    assert all(state(d) == RUNNING for d in doms)
    log = daemon.log.read_text()
    assert "group shop: snapshot failed" in log
    assert "had not returned when group.max_pause (3s) passed" in log
    with open_catalog(str(daemon.state)) as catalog:
        assert catalog.groups.held() == []
        assert catalog.groups.all("shop") == []
        assert catalog.runs.unfinished() == []
    for dom in doms:
        assert snapshots(dom) == []


def _no_holds(daemon: Daemon) -> bool:
    with open_catalog(str(daemon.state)) as catalog:
        return catalog.groups.held() == []


@contextlib.contextmanager
def full_directory(path: Path) -> Iterator[None]:
    """``path`` as a filesystem with no room at all (where the tested libvirtd sees it
    too: a libvirtd in another root gets a bind mount, as fault 4 does)."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(path)], check=True)
    seen = target.LIBVIRT_ROOT / str(path).lstrip("/")
    elsewhere = seen.resolve() != path.resolve()
    try:
        with contextlib.suppress(OSError):
            (path / "filler").write_bytes(b"\0" * 65536)  # as much as fits
        if elsewhere:
            subprocess.run(["mount", "--bind", str(path), str(seen)], check=True)
        yield
    finally:
        if elsewhere:
            subprocess.run(["umount", str(seen)], check=False)
        subprocess.run(["umount", str(path)], check=False)


def _sources(xml: str) -> list[str]:
    return [part.split("'")[0] for part in xml.split("<source file='")[1:]]
