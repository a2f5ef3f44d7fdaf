"""`snapshotd run` as a subprocess with its own NOTIFY_SOCKET, against real libvirt."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from snapshotd.adapters.logs import sanitize_uri
from snapshotd.daemon.loop import STOP_GRACE
from tests.integration.cli import REPO, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.target import URI, connect_line, qemu_pid

NAME = "{policy}-{time:%Y%m%dT%H%M%S%fZ}"


class Daemon:
    """A running `snapshotd run` and the messages it sent to its notify socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = root / "policies"
        self.state = root / "state"
        self.messages: list[str] = []
        self.sock_path = root / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.1)
        self.proc: subprocess.Popen[str] | None = None
        self.log = root / "daemon.log"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(self.sock_path))
        env.pop("JOURNAL_STREAM", None)
        config = self.root / "snapshotd.yaml"
        if not config.exists():
            config.write_text(connect_line())
            config.chmod(0o644)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snapshotd",
                "run",
                "--config",
                str(config),
                "--policy-dir",
                str(self.policies),
                "--state-dir",
                str(self.state),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("a"),
            text=True,
        )

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if predicate():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log.read_text()}")

    def wait_ready(self) -> None:
        self.wait_for(lambda: any("READY=1" in m for m in self.messages), 30, "READY=1")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_GRACE + 30) -> int:
        """Signal the daemon and wait for its exit code: longer than the grace a
        SIGTERM gives the snapshots in flight (STOP_GRACE), so a daemon that waits for a
        slow one is not taken for a hung one."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.drain()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def write_policy(daemon: Daemon, name: str, body: str, *, rename: bool = False) -> None:
    target = daemon.policies / f"{name}.yaml"
    if rename:  # as vim and most editors save: a new file renamed over the old one
        temp = daemon.policies / f".{name}.yaml.tmp"
        temp.write_text(body)
        temp.chmod(0o644)
        temp.replace(target)
    else:
        with target.open("w") as f:
            f.write(body)
        target.chmod(0o644)


def policy(
    dom: ScratchDomain, *, every: str = "3s", extra: str = "", keep: int = 2, states: str = ""
) -> str:
    return f"""
domains:
  include: ["{dom.name}"]
{states}
schedule:
  every: {every}
  catch_up: true
snapshot:
  name: "{NAME}"
{extra}
retention:
  keep_last: {keep}
"""


def snapshots(dom: ScratchDomain) -> list[tuple[int, str, str]]:
    """(creation time, name, description) of the domain's snapshots, oldest first."""
    found = []
    for snap in dom.dom.listAllSnapshots(0):
        try:
            root = etree.fromstring(snap.getXMLDesc(0).encode())
        except libvirt.libvirtError:
            continue  # pruned by the daemon while we looked
        found.append(
            (
                int(root.findtext("creationTime")),
                root.findtext("name"),
                root.findtext("description"),
            )
        )
    return sorted(found)


def test_schedule_runs_on_time_prunes_and_reloads(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    dom = domain_factory(state="running")
    write_policy(daemon, "fast", policy(dom, extra='  description: "first"'))
    daemon.start()
    daemon.wait_ready()
    # Snapshots every 3 s; retention keeps the newest two.
    daemon.wait_for(lambda: len(snapshots(dom)) >= 2, 20, "two snapshots")
    first_times = [t for t, _, _ in snapshots(dom)]
    # Later snapshots came, and retention brought the count back to two.  (Between a
    # snapshot and its prune there are briefly three, so the count is awaited, not
    # sampled once.)
    daemon.wait_for(
        lambda: (
            len(now := snapshots(dom)) == 2
            and now[0][0] > first_times[-1]
            and now[-1][0] >= first_times[-1] + 5
        ),
        20,
        "pruning",
    )

    # Edit in place: the next snapshot carries the new description.
    write_policy(daemon, "fast", policy(dom, extra='  description: "second"'))
    daemon.wait_for(lambda: snapshots(dom)[-1][2] == "second", 10, "an in-place edit")
    # Write-then-rename, as editors do.
    write_policy(daemon, "fast", policy(dom, extra='  description: "third"'), rename=True)
    daemon.wait_for(lambda: snapshots(dom)[-1][2] == "third", 10, "a renamed-over edit")

    # A broken edit: the old policy stays in force and the error shows in STATUS.
    write_policy(daemon, "fast", "schedule: [not, a, mapping]\n")
    daemon.wait_for(
        lambda: any("policy errors" in m and "fast.yaml" in m for m in daemon.messages),
        10,
        "the error in the status line",
    )
    before = snapshots(dom)[-1][0]
    daemon.wait_for(lambda: snapshots(dom)[-1][0] > before, 10, "snapshots with the old policy")
    assert snapshots(dom)[-1][2] == "third"

    # SIGHUP after a good edit applies it.
    target = daemon.policies / "fast.yaml"
    target.write_text(policy(dom, extra='  description: "fourth"'))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: snapshots(dom)[-1][2] == "fourth", 10, "SIGHUP reload")
    assert any("RELOADING=1" in m for m in daemon.messages)

    assert daemon.stop() == 0
    assert any("STOPPING=1" in m for m in daemon.messages)
    # Retention held throughout; every snapshot left is one of the policy's.
    assert len(snapshots(dom)) == 2


def test_kill_9_and_restart_catches_up_once(domain_factory: DomainFactory, daemon: Daemon) -> None:
    dom = domain_factory(state="shutoff")
    write_policy(daemon, "cu", policy(dom, every="6s", keep=50))
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(dom)) >= 1, 20, "a first snapshot")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    count = len(snapshots(dom))
    time.sleep(20)  # at least three slots pass while the daemon is down
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(dom)) >= count + 1, 10, "the catch-up snapshot")
    time.sleep(2)
    # One catch-up, not a burst of three: at most the next regular slot may have
    # come on top of it in these two seconds.
    assert count + 1 <= len(snapshots(dom)) <= count + 2
    assert daemon.stop() == 0


def test_a_domain_defined_while_running_is_scheduled(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    first = domain_factory(state="shutoff")
    prefix = first.name.rsplit("-", 1)[0]
    write_policy(
        daemon,
        "new",
        policy(first, every="2s", keep=5).replace(f'["{first.name}"]', f'["{prefix}-*"]'),
    )
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(first)) >= 1, 20, "the first domain's snapshot")
    later = domain_factory(state="shutoff")  # defined now: a lifecycle event
    daemon.wait_for(lambda: len(snapshots(later)) >= 1, 20, "the new domain's snapshot")
    assert daemon.stop() == 0


def test_an_unreachable_uri_does_not_hold_up_the_others(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    dom = domain_factory(state="shutoff")
    config = daemon.root / "snapshotd.yaml"
    dead = f"qemu+unix:///system?socket={daemon.root}/no-libvirtd.sock"
    config.write_text(connect_line(dead))
    config.chmod(0o644)
    write_policy(daemon, "two", policy(dom, every="2s"))
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(dom)) >= 1, 20, "a snapshot on the reachable URI")
    assert daemon.stop() == 0
    assert "no-libvirtd.sock: not connected" in daemon.log.read_text()


def status(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    result = snapshotd(
        "status",
        "--config",
        str(daemon.root / "snapshotd.yaml"),
        "--state-dir",
        str(daemon.state),
        "--json",
    )
    return result.code, json.loads(result.out)


def test_a_hung_qemu_is_reported_and_does_not_hold_up_the_others(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    hung = domain_factory(state="running")
    other = domain_factory(state="shutoff")
    config = daemon.root / "snapshotd.yaml"
    # One worker: the other domain only gets snapshots if the overrun job frees it.
    config.write_text(connect_line() + "workers: 1\noperation_timeout: 3s\n")
    config.chmod(0o644)
    write_policy(daemon, "h", policy(hung, every="2s", keep=50))
    write_policy(daemon, "o", policy(other, every="2s", keep=3))
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(hung)) >= 1, 20, "a first snapshot of each")
    daemon.wait_for(lambda: len(snapshots(other)) >= 1, 20, "a first snapshot of each")
    pid = qemu_pid(hung.name)
    os.kill(pid, signal.SIGSTOP)  # QEMU stops answering its monitor: libvirt calls hang
    try:
        daemon.wait_for(
            lambda: "still running after" in daemon.log.read_text(), 20, "the overrun report"
        )
        assert "operation_timeout 3 s" in daemon.log.read_text()
        # The STATUS line follows the log line in the same pass of the loop.
        daemon.wait_for(
            lambda: any("last error: " + hung.name in m for m in daemon.messages),
            10,
            "the overrun in the STATUS line",
        )
        stuck = len(snapshots(hung))
        code, data = status(daemon)
        assert code == 0
        assert data["daemon"]["running"] is True
        row = next(d for d in data["domains"] if d["domain"] == hung.name)
        assert row["running"] is True
        assert row["overrun"] is True
        # The other domain goes on with the only worker while the hung call waits.  Not
        # at full speed: with one QEMU stopped, libvirtd itself was seen to take up to
        # 15 s over another domain's snapshot on a loaded machine.
        before = snapshots(other)[-1][0]
        daemon.wait_for(
            lambda: snapshots(other)[-1][0] >= before + 3, 60, "the other domain's snapshots"
        )
        assert len(snapshots(hung)) == stuck  # never a second operation on the hung domain
    finally:
        os.kill(pid, signal.SIGCONT)
    # libvirt returns; the snapshot it made is recorded, and the schedule goes on.
    daemon.wait_for(lambda: "overrun snapshot by h ended" in daemon.log.read_text(), 30, "the end")
    count = len(snapshots(hung))
    daemon.wait_for(lambda: len(snapshots(hung)) > count, 20, "the hung domain's next snapshot")
    assert daemon.stop() == 0


def test_status_reports_what_the_daemon_did(domain_factory: DomainFactory, daemon: Daemon) -> None:
    dom = domain_factory(state="shutoff")
    write_policy(daemon, "st", policy(dom, every="2s", keep=2))
    daemon.start()
    daemon.wait_ready()
    assert daemon.proc is not None
    daemon.wait_for(lambda: len(snapshots(dom)) == 2, 20, "two snapshots")
    first = snapshots(dom)[0][0]
    daemon.wait_for(lambda: snapshots(dom)[0][0] > first, 20, "retention pruning the oldest")
    code, data = status(daemon)
    names = {name for _, name, _ in snapshots(dom)}
    assert code == 0
    assert data["daemon"]["running"] is True
    assert data["daemon"]["pid"] == daemon.proc.pid
    assert data["policies"] == ["st"]
    assert data["load_errors"] == []
    assert data["connections"] == [{"uri": sanitize_uri(URI), "connected": True, "error": None}]
    (row,) = [d for d in data["domains"] if d["domain"] == dom.name]
    assert row["policy"] == "st"
    assert row["domain_uuid"] == dom.dom.UUIDString()
    # The last snapshot named is one retention kept (the list was read just after).
    assert row["last_snapshot"]["name"] in names
    assert 0 <= row["last_snapshot"]["age_seconds"] <= 5
    assert row["next_due"] is not None
    assert row["next_due"] <= time.time() + 3 or row["running"]
    assert row["last_error"] is None

    # A second daemon on the same state directory refuses, naming the first.
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "snapshotd",
            "run",
            "--config",
            str(daemon.root / "snapshotd.yaml"),
            "--policy-dir",
            str(daemon.policies),
            "--state-dir",
            str(daemon.state),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"another snapshotd daemon (pid {daemon.proc.pid}) is running" in second.stderr
    assert daemon.proc.poll() is None  # the first one carries on

    assert daemon.stop() == 0
    code, data = status(daemon)
    assert code == 3
    assert data["daemon"]["running"] is False


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_tree_and_status_agree_with_libvirt(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    dom = domain_factory(state="shutoff")
    port = free_port()
    config = daemon.root / "snapshotd.yaml"
    config.write_text(connect_line() + f'metrics_address: "127.0.0.1:{port}"\n')
    config.chmod(0o644)
    write_policy(daemon, "m", policy(dom, every="2s", keep=2))
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(
        lambda: (
            (metric(metrics_text(port), "snapshotd_snapshots_pruned_total", policy="m") or 0) >= 2
        ),
        30,
        "two prunes in the metrics",
    )
    # Read the metrics, libvirt, and the metrics again: compare only a quiet moment.
    for _ in range(50):
        before, live, after = metrics_text(port), snapshots(dom), metrics_text(port)
        if before == after:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the metrics never held still")
    created = metric(before, "snapshotd_snapshots_created_total", policy="m")
    pruned = metric(before, "snapshotd_snapshots_pruned_total", policy="m")
    assert created is not None
    assert pruned is not None
    assert created - pruned == len(live) == 2
    assert metric(before, "snapshotd_snapshots_failed_total", policy="m") in (None, 0.0)
    newest = live[-1][0]
    last = metric(before, "snapshotd_last_success_timestamp_seconds", policy="m", domain=dom.name)
    assert last == newest
    assert metric(before, "snapshotd_operation_duration_seconds_count", operation="create") == (
        created
    )
    assert metric(before, "snapshotd_policy_load_errors") == 0
    assert metric(before, "snapshotd_connection_up", uri=sanitize_uri(URI)) == 1

    # Stopped, so nothing changes between the two: list --tree draws what virsh draws,
    # less snapshotd's mark of the current snapshot.
    assert daemon.stop() == 0
    tree = snapshotd("list", "--domain", dom.name, "--tree", "--config", str(config))
    assert tree.code == 0, tree.err
    virsh = subprocess.run(
        ["virsh", "-c", URI, "snapshot-list", dom.name, "--tree"],
        capture_output=True,
        text=True,
        check=True,
    )
    ours = [line.removesuffix(" *") for line in tree.out.splitlines() if line.strip()]
    assert ours == [line for line in virsh.stdout.splitlines() if line.strip()]
    assert len(ours) == 3  # two snapshots: the root, "  |", "  +- child"


def test_hooks_skip_kill_and_see_every_variable(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    skipped = domain_factory(state="shutoff")
    hanging = domain_factory(state="shutoff")
    seen = daemon.root / "seen"
    seen.mkdir()
    record = ["/bin/sh", "-c", f'env | grep ^SNAPSHOTD_ | sort > {seen}/"$SNAPSHOTD_RESULT"']
    marker = f"{time.monotonic_ns() % 10**6}.25"
    write_policy(
        daemon,
        "skip",
        policy(skipped, every="2s")
        + f"hooks:\n  before: [['/bin/false']]\n  on_failure: [{json.dumps(record)}]\n",
    )
    write_policy(
        daemon,
        "hang",
        policy(hanging, every="2s")
        + f"hooks:\n  before: [['/bin/sleep', '{marker}']]\n  timeout: 1s\n"
        f"  before_failure: continue\n  after: [{json.dumps(record)}]\n",
    )
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(hanging)) >= 2, 30, "snapshots despite a hung hook")
    daemon.wait_for((seen / "skipped").exists, 10, "the on_failure hook")
    assert snapshots(skipped) == []  # the failed before hook skipped every one
    text = daemon.log.read_text()
    assert "before hook /bin/sleep ran past its timeout of 1 s and was killed" in text
    assert "snapshot skipped: before hook /bin/false exited with status 1" in text
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, check=False)
    assert left.stdout == b""
    daemon.wait_for((seen / "ok").exists, 10, "the after hook")
    ok = dict(line.split("=", 1) for line in (seen / "ok").read_text().splitlines())
    assert ok["SNAPSHOTD_POLICY"] == "hang"
    assert ok["SNAPSHOTD_DOMAIN"] == hanging.name
    assert ok["SNAPSHOTD_DOMAIN_UUID"] == hanging.uuid
    assert ok["SNAPSHOTD_SNAPSHOT"].startswith("hang-")
    assert f"created {ok['SNAPSHOTD_SNAPSHOT']} " in daemon.log.read_text()
    assert ok["SNAPSHOTD_STATE"] == "shutoff"
    assert ok["SNAPSHOTD_RESULT"] == "ok"
    assert ok["SNAPSHOTD_ERROR"] == ""
    bad = dict(line.split("=", 1) for line in (seen / "skipped").read_text().splitlines())
    assert bad["SNAPSHOTD_RESULT"] == "skipped"
    assert "/bin/false exited with status 1" in bad["SNAPSHOTD_ERROR"]
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_the_daemon_does_not_start_on_a_catalog_a_newer_snapshotd_wrote(daemon: Daemon) -> None:
    """A catalog whose schema version is above what this snapshotd knows: `run` exits
    with the reason before it connects or notifies READY, and the catalog is untouched."""
    from snapshotd.catalog.migrations import LATEST  # noqa: PLC0415 - only this test

    daemon.state.mkdir(mode=0o700)
    path = daemon.state / "catalog.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(LATEST + 1),))
        db.commit()
    path.chmod(0o600)
    before = path.read_bytes()

    daemon.start()
    assert daemon.proc is not None
    code = daemon.proc.wait(timeout=30)

    assert code == 1
    log = daemon.log.read_text()
    assert f"newer than this snapshotd knows (up to {LATEST})" in log
    assert not any("READY=1" in m for m in daemon.drain())
    assert path.read_bytes() == before
