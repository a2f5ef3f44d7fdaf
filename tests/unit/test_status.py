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
from snapshotd.adapters import statefile, statusfile
from snapshotd.adapters.statusfile import Connection, DaemonStatus, Running, Scheduled
from snapshotd.catalog import Run, SnapshotRow, open_catalog
from snapshotd.catalog.api import GroupMember, GroupRow
from snapshotd.cli import main
from snapshotd.core.schedule import span

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
    writer = statusfile.StatusWriter(str(tmp_path))
    assert writer.write(DaemonStatus(policies=("a",))) is True
    path = tmp_path / statusfile.STATUS_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.stat().st_mtime_ns
    assert writer.write(DaemonStatus(policies=("a",))) is False
    assert path.stat().st_mtime_ns == first
    assert writer.write(DaemonStatus(policies=("a", "b"))) is True
    assert statusfile.read_status(str(tmp_path)) == DaemonStatus(policies=("a", "b"))
    assert not list(tmp_path.glob(".status.json.*"))  # no temporary file left


def test_a_broken_status_file_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / statusfile.STATUS_NAME).write_text("{half")
    assert statusfile.read_status(str(tmp_path)) is None
    (tmp_path / statusfile.STATUS_NAME).write_text("[1]")
    assert statusfile.read_status(str(tmp_path)) is None


def test_a_status_file_of_another_shape_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / statusfile.STATUS_NAME
    for other in (
        {"policies": 5},
        {"policies": [1]},
        {"pid": True},
        {"stopping": "no"},
        {"scheduled": [{"policy": "p"}]},
        {"running": [{"policy": "p", "uri": "u", "domain_uuid": "x", "domain": "d"}]},
        {"connections": [{"uri": "qemu:///system", "connected": 1}]},
        {"connections": [{"uri": "qemu:///system", "connected": False, "error": 5}]},
        {
            "scheduled": [
                {
                    "policy": "p",
                    "uri": "u",
                    "domain_uuid": "x",
                    "domain": "d",
                    "next_due": 1.5,
                    "reason": "",
                }
            ]
        },
    ):
        path.write_text(json.dumps(other))
        assert statusfile.read_status(str(tmp_path)) is None, other


def test_keys_a_status_file_lacks_read_as_their_defaults(tmp_path: Path) -> None:
    (tmp_path / statusfile.STATUS_NAME).write_text('{"pid": 7, "operation_timeout": 600}')
    assert statusfile.read_status(str(tmp_path)) == DaemonStatus(pid=7, operation_timeout=600.0)
    assert statusfile.read_status(str(tmp_path / "never")) is None


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
    with open_catalog(state) as catalog:
        catalog.record_snapshot(_snapshot("hourly-1", NOW - 7200))
        catalog.record_snapshot(_snapshot("hourly-2", NOW - 3600))
        runs = catalog.runs
        runs.start(Run("hourly", UUID, "qemu:///system", "web"), "hourly-2", NOW - 3600, NOW)
        runs.finish("hourly", UUID, slot=NOW - 3600, error=None, now=NOW - 3590)
        runs.start(Run("hourly", OTHER, "qemu:///system", "db"), "hourly-x", NOW - 60, NOW - 60)
        runs.finish("hourly", OTHER, slot=None, error="libvirt: disk full\nmore", now=NOW - 50)
    statusfile.StatusWriter(state).write(
        DaemonStatus(
            pid=4242,
            started_at=NOW - 86400,
            config="/etc/snapshotd/snapshotd.yaml",
            policy_dir="/etc/snapshotd/policies.d",
            policies=("hourly",),
            load_errors=("/etc/snapshotd/policies.d/bad.yaml:3:5: schedule: unknown option",),
            connections=(Connection("qemu:///system", True, None),),
            scheduled=(
                Scheduled("hourly", "qemu:///system", UUID, "web", NOW + 600, ""),
                Scheduled("hourly", "qemu:///system", "new-uuid", "fresh", NOW + 60, ""),
            ),
            running=(Running("hourly", "qemu:///system", OTHER, "db", NOW - 700, True),),
            last_error="db: still running",
            stopping=False,
        )
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
    with open_catalog(state) as catalog:
        runs = catalog.runs
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


def test_status_shows_a_group_taken_by_hand_before_any_daemon_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`take --policy` of a group writes no runs: status still shows the group."""
    state = str(tmp_path / "state")
    with open_catalog(state) as catalog:
        for uuid, name in ((UUID, "web"), (OTHER, "db")):
            catalog.record_snapshot(
                SnapshotRow(
                    "qemu:///system", uuid, name, "shop-1", NOW, "shop", None, "<x/>", (), True
                )
            )
        members = (
            GroupMember("qemu:///system", UUID, "web", NOW),
            GroupMember("qemu:///system", OTHER, "db", NOW),
        )
        catalog.groups.record(GroupRow("shop", "shop-1", NOW, members, pause_ms=167))
    config = tmp_path / "none.yaml"
    config.write_text("")
    config.chmod(0o644)
    assert main(["status", "--config", str(config), "--state-dir", state]) == 3
    text = capsys.readouterr().out
    assert "group shop: last shop-1 of db, web, held still 167 ms" in text
    assert "no snapshots scheduled or taken yet" not in text
