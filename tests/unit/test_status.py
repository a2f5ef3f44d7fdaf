"""The daemon lock, the status file, and the report `snapshotd status` builds from them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from snapshotd.actions import report
from snapshotd.adapters import statefile
from snapshotd.catalog.sqlite import Catalog, Run, RunLog, SnapshotRow
from snapshotd.cli.main import main
from snapshotd.core.schedule import span
from snapshotd.errors import SnapshotdError

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
OTHER = "11111111-2222-3333-4444-555555555555"
NOW = 1_800_000_000


def test_a_second_lock_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    first = statefile.DaemonLock(str(tmp_path))
    first.acquire()
    try:
        assert statefile.daemon_pid(str(tmp_path)) == os.getpid()
        with pytest.raises(statefile.AlreadyRunning) as caught:
            statefile.DaemonLock(str(tmp_path)).acquire()
        message = str(caught.value)
        assert f"(pid {os.getpid()})" in message
        assert str(tmp_path) in message
        assert "--state-dir" in message
    finally:
        first.release()
    # Released: the file stays, but nobody runs.
    assert (tmp_path / statefile.LOCK_NAME).exists()
    assert statefile.daemon_pid(str(tmp_path)) is None
    again = statefile.DaemonLock(str(tmp_path))
    again.acquire()
    again.release()


def test_the_lock_is_seen_from_another_process(tmp_path: Path) -> None:
    lock = statefile.DaemonLock(str(tmp_path))
    lock.acquire()
    try:
        code = (
            "import sys; from snapshotd.adapters import statefile; "
            f"print(statefile.daemon_pid({str(tmp_path)!r}))"
        )
        seen = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert seen.stdout.strip() == str(os.getpid())
    finally:
        lock.release()


def test_no_lock_file_means_not_running(tmp_path: Path) -> None:
    assert statefile.daemon_pid(str(tmp_path)) is None
    assert statefile.daemon_pid(str(tmp_path / "missing")) is None


def test_status_file_is_written_only_when_it_changes(tmp_path: Path) -> None:
    writer = statefile.StatusWriter(str(tmp_path))
    assert writer.write({"policies": ["a"]}) is True
    path = tmp_path / statefile.STATUS_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.stat().st_mtime_ns
    assert writer.write({"policies": ["a"]}) is False
    assert path.stat().st_mtime_ns == first
    assert writer.write({"policies": ["a", "b"]}) is True
    assert statefile.read_status(str(tmp_path)) == {"policies": ["a", "b"]}
    assert not list(tmp_path.glob(".status.json.*"))  # no temporary file left


def test_a_broken_status_file_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / statefile.STATUS_NAME).write_text("{half")
    assert statefile.read_status(str(tmp_path)) is None
    (tmp_path / statefile.STATUS_NAME).write_text("[1]")
    assert statefile.read_status(str(tmp_path)) is None


def _snapshot(name: str, created: int, uuid: str = UUID, policy: str = "hourly") -> SnapshotRow:
    return SnapshotRow(
        uri="qemu:///system",
        domain_uuid=uuid,
        domain_name="web" if uuid == UUID else "db",
        name=name,
        created_at=created,
        policy=policy,
        parent=None,
        xml="<domainsnapshot/>",
        files=(),
        libvirt_metadata=True,
    )


def _state(tmp_path: Path) -> str:
    state = str(tmp_path / "state")
    with Catalog(state) as catalog:
        catalog.record_snapshot(_snapshot("hourly-1", NOW - 7200))
        catalog.record_snapshot(_snapshot("hourly-2", NOW - 3600))
        runs = RunLog(catalog)
        runs.start(Run("hourly", UUID, "qemu:///system", "web"), "hourly-2", NOW - 3600, NOW)
        runs.finish("hourly", UUID, slot=NOW - 3600, error=None, now=NOW - 3590)
        runs.start(Run("hourly", OTHER, "qemu:///system", "db"), "hourly-x", NOW - 60, NOW - 60)
        runs.finish("hourly", OTHER, slot=None, error="libvirt: disk full\nmore", now=NOW - 50)
    statefile.StatusWriter(state).write(
        {
            "pid": 4242,
            "started_at": NOW - 86400,
            "config": "/etc/snapshotd/snapshotd.yaml",
            "policy_dir": "/etc/snapshotd/policies.d",
            "policies": ["hourly"],
            "load_errors": ["/etc/snapshotd/policies.d/bad.yaml:3:5: schedule: unknown option"],
            "connections": [{"uri": "qemu:///system", "connected": True, "error": None}],
            "scheduled": [
                {
                    "policy": "hourly",
                    "uri": "qemu:///system",
                    "domain_uuid": UUID,
                    "domain": "web",
                    "next_due": NOW + 600,
                    "reason": "",
                },
                {
                    "policy": "hourly",
                    "uri": "qemu:///system",
                    "domain_uuid": "new-uuid",
                    "domain": "fresh",
                    "next_due": NOW + 60,
                    "reason": "",
                },
            ],
            "running": [
                {
                    "policy": "hourly",
                    "uri": "qemu:///system",
                    "domain_uuid": OTHER,
                    "domain": "db",
                    "since": NOW - 700,
                    "overrun": True,
                }
            ],
            "last_error": "db: still running",
            "stopping": False,
        }
    )
    return state


def test_report_while_the_daemon_runs(tmp_path: Path) -> None:
    state = _state(tmp_path)
    lock = statefile.DaemonLock(state)
    lock.acquire()
    try:
        data = report.collect(state, now=NOW)
    finally:
        lock.release()
    assert data["daemon"] == {
        "running": True,
        "pid": os.getpid(),
        "started_at": NOW - 86400,
        "stopping": False,
    }
    assert data["policies"] == ["hourly"]
    assert data["load_errors"] == [
        "/etc/snapshotd/policies.d/bad.yaml:3:5: schedule: unknown option"
    ]
    by_domain = {d["domain"]: d for d in data["domains"]}
    assert list(by_domain) == ["db", "fresh", "web"]
    web = by_domain["web"]
    assert web["last_snapshot"] == {
        "name": "hourly-2",
        "created_at": NOW - 3600,
        "age_seconds": 3600,
    }
    assert web["next_due"] == NOW + 600
    assert web["last_error"] is None
    assert web["last_success"] == NOW - 3590
    db = by_domain["db"]
    assert db["last_snapshot"] is None
    assert db["running"] is True
    assert db["overrun"] is True
    assert db["last_error"] == {"message": "libvirt: disk full\nmore", "at": NOW - 50}
    fresh = by_domain["fresh"]  # scheduled, never run
    assert fresh["next_due"] == NOW + 60
    assert fresh["last_snapshot"] is None


def test_report_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    state = _state(tmp_path)
    data = report.collect(state, now=NOW)
    assert data["daemon"]["running"] is False
    assert data["daemon"]["pid"] is None
    assert data["connections"] == []
    # What it last knew stays visible, but no due times: nobody will act on them.
    assert [d["domain"] for d in data["domains"]] == ["db", "web"]
    assert all(d["next_due"] is None and not d["running"] for d in data["domains"])


def test_an_error_older_than_the_last_success_is_not_shown(tmp_path: Path) -> None:
    state = str(tmp_path)
    with Catalog(state) as catalog:
        runs = RunLog(catalog)
        runs.start(Run("p", UUID, "qemu:///system", "web"), "a", NOW, NOW)
        runs.finish("p", UUID, slot=None, error="transient", now=NOW)
        runs.start(Run("p", UUID, "qemu:///system", "web"), "b", NOW + 10, NOW + 10)
        runs.finish("p", UUID, slot=NOW + 10, error=None, now=NOW + 20)
    (row,) = report.collect(state, now=NOW + 30)["domains"]
    assert row["last_error"] is None


def test_status_command_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _state(tmp_path)
    config = tmp_path / "none.yaml"
    config.write_text("")
    config.chmod(0o644)
    args = ["status", "--config", str(config), "--state-dir", state]
    assert main(args) == 3  # not running
    text = capsys.readouterr().out
    assert "daemon: not running" in text
    assert "policies when it last ran: hourly" in text
    assert "policy error: /etc/snapshotd/policies.d/bad.yaml:3:5" in text
    web = next(line for line in text.splitlines() if line.startswith("web "))
    assert "hourly-2" in web
    db = next(line for line in text.splitlines() if line.startswith("db "))
    assert db.endswith("libvirt: disk full")

    lock = statefile.DaemonLock(state)
    lock.acquire()
    try:
        assert main([*args, "--json"]) == 0
    finally:
        lock.release()
    data = json.loads(capsys.readouterr().out)
    assert data["daemon"]["running"] is True
    assert {d["domain"] for d in data["domains"]} == {"web", "db", "fresh"}


def test_status_of_a_state_dir_never_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "none.yaml"
    config.write_text("")
    config.chmod(0o644)
    code = main(["status", "--config", str(config), "--state-dir", str(tmp_path / "new")])
    assert code == 3
    assert "(no snapshots scheduled or taken yet)" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()  # status only reads


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (3599, "59m"),
        (3600, "1h"),
        (7980, "2h13m"),
        (172800, "2d"),
        (190800, "2d5h"),
    ],
)
def test_span(seconds: int, text: str) -> None:
    assert span(seconds) == text


def test_the_domain_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    state = str(tmp_path)
    done = tmp_path / "holder-done"  # written by the holder just before it lets go
    code = (
        "import pathlib, time; from snapshotd.adapters import statefile\n"
        f"with statefile.domain_lock({state!r}, {UUID!r}, 'web'):\n"
        "    print('held', flush=True); time.sleep(1)\n"
        f"    pathlib.Path({str(done)!r}).touch()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(SnapshotdError) as caught,
            statefile.domain_lock(state, UUID, "web", wait=0.3),
        ):
            pass
        assert f"domain 'web' is busy: another snapshotd process (pid {holder.pid})" in str(
            caught.value
        )
        assert not done.exists()  # the holder is still inside its lock
        with statefile.domain_lock(state, UUID, "web", wait=30):
            # Got only after the holder finished: it wrote its mark before letting go.
            assert done.exists()
    finally:
        holder.wait(timeout=30)


def test_the_domain_lock_refuses_a_strange_uuid(tmp_path: Path) -> None:
    with pytest.raises(SnapshotdError), statefile.domain_lock(str(tmp_path), "../../x", "web"):
        pass
    assert not (tmp_path / "locks").exists()  # refused before anything was made
