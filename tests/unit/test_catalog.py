"""The catalog: durable, private, and exact about which snapshots are ours."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from snapshotd.catalog.sqlite import DB_NAME, Catalog, Operation, RunLog, SnapshotRow

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def row(name: str, created: int, policy: str | None = "p") -> SnapshotRow:
    return SnapshotRow(
        uri="qemu:///system",
        domain_uuid=UUID,
        domain_name="web",
        name=name,
        created_at=created,
        policy=policy,
        parent=None,
        xml=f"<domainsnapshot><name>{name}</name></domainsnapshot>",
        files=("/a/web.vda.s.qcow2",),
        libvirt_metadata=True,
    )


def test_state_dir_and_database_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Catalog(str(state)):
        pass
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / DB_NAME).stat().st_mode) == 0o600


def test_ownership_is_name_and_creation_time(tmp_path: Path) -> None:
    with Catalog(str(tmp_path)) as catalog:
        catalog.record_snapshot(row("p-1", 1000))
        owner = catalog.owner(UUID, "p-1", 1000)
        assert owner is not None
        assert owner.policy == "p"
        assert owner.files == ("/a/web.vda.s.qcow2",)
        # A snapshot made by hand later under the same name is not ours.
        assert catalog.owner(UUID, "p-1", 2000) is None
        assert catalog.owner(UUID, "p-1", None) is None
        assert catalog.owner("another-uuid", "p-1", 1000) is None


def test_deleted_snapshots_are_no_longer_owned(tmp_path: Path) -> None:
    with Catalog(str(tmp_path)) as catalog:
        catalog.record_snapshot(row("p-1", 1000))
        catalog.record_snapshot(row("p-2", 1001))
        catalog.mark_deleted(UUID, "p-1", 1000, 5000)
        assert catalog.owner(UUID, "p-1", 1000) is None
        assert [r.name for r in catalog.snapshots(domain_uuid=UUID)] == ["p-2"]
        assert [r.name for r in catalog.snapshots(policy="p")] == ["p-2"]
        assert catalog.snapshots(policy="other") == []


def test_records_survive_reopen_and_wal_mode(tmp_path: Path) -> None:
    with Catalog(str(tmp_path)) as catalog:
        catalog.record_snapshot(row("p-1", 1000))
        catalog.record_operation(
            Operation(at=1, uri="qemu:///system", operation="create", outcome="ok", snapshot="p-1")
        )
    with Catalog(str(tmp_path)) as catalog:
        assert catalog.owner(UUID, "p-1", 1000) is not None
        (op,) = catalog.operations()
        assert op.snapshot == "p-1"
        assert op.outcome == "ok"
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_committed_record_survives_kill_9(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from snapshotd.catalog.sqlite import Catalog\n"
        "from tests.unit.test_catalog import row\n"
        "c = Catalog(sys.argv[1])\n"
        "c.record_snapshot(row('p-9', 9000))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        check=False,
    )
    assert proc.returncode == -9
    with Catalog(str(tmp_path)) as catalog:
        assert catalog.owner(UUID, "p-9", 9000) is not None


def test_the_same_snapshot_cannot_be_recorded_twice(tmp_path: Path) -> None:
    with Catalog(str(tmp_path)) as catalog:
        catalog.record_snapshot(row("p-1", 1000))
        with pytest.raises(sqlite3.IntegrityError):
            catalog.record_snapshot(row("p-1", 1000))
        assert len(catalog.snapshots()) == 1


def test_opening_the_catalog_again_keeps_other_connections_locks(tmp_path: Path) -> None:
    """A second Catalog in the same process must not drop the first one's POSIX locks.

    If it did (by opening and closing the database file), another process closing
    its connection would find no locks, checkpoint, and delete the WAL under the
    first connection: the next write reports "disk I/O error" or "file is not a
    database".
    """
    first = Catalog(str(tmp_path))
    try:
        first.record_snapshot(row("p-1", 1000))
        first.record_snapshot(row("p-0", 999))
        # A read left open, as a fetchone() leaves its statement until it is reset.
        reading = first.db.execute("SELECT name FROM snapshots")
        assert reading.fetchone() is not None
        with Catalog(str(tmp_path)) as second:
            assert second.owner(UUID, "p-1", 1000) is not None
        other = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM snapshots').fetchall(); c.close()"
        )
        subprocess.run([sys.executable, "-c", other, str(tmp_path / DB_NAME)], check=True)
        assert (tmp_path / (DB_NAME + "-wal")).exists()
        reading.close()
        first.record_snapshot(row("p-2", 1001))
        assert [r.name for r in first.snapshots()] == ["p-0", "p-1", "p-2"]
    finally:
        first.close()
    with Catalog(str(tmp_path)) as reopened:
        assert [r.name for r in reopened.snapshots()] == ["p-0", "p-1", "p-2"]


def test_the_run_marker_survives_kill_9_and_later_writes_are_full_sync(tmp_path: Path) -> None:
    # RunLog.start commits without its own fsync (synchronous=NORMAL, WAL): a crash of
    # the process must still leave the marker for the next start to reconcile, and the
    # connection must be back to synchronous=FULL for the snapshot record that follows.
    script = (
        "import os, sys\n"
        "from snapshotd.catalog.sqlite import Catalog, Run, RunLog\n"
        "c = Catalog(sys.argv[1])\n"
        "RunLog(c).start(Run('p', sys.argv[2], 'qemu:///system', 'web'), 'p-1', 60, 61)\n"
        "sync = c.db.execute('PRAGMA synchronous').fetchone()[0]\n"
        "print(sync, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), UUID],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=str(repo)),
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9
    assert proc.stdout.strip() == "2"  # FULL
    with Catalog(str(tmp_path)) as catalog:
        (run,) = RunLog(catalog).unfinished()
    assert (run.policy, run.domain_uuid, run.in_progress, run.in_progress_slot) == (
        "p",
        UUID,
        "p-1",
        60,
    )


def test_a_failed_unsynced_transaction_rolls_back_and_restores_full_sync(tmp_path: Path) -> None:
    def insert_then_fail(catalog: Catalog) -> None:
        with catalog.transaction(fsync=False):
            catalog.db.execute(
                "INSERT INTO runs (policy, domain_uuid, uri, domain_name) VALUES (?, ?, ?, ?)",
                ("p", UUID, "qemu:///system", "web"),
            )
            raise RuntimeError("boom")

    with Catalog(str(tmp_path)) as catalog:
        with pytest.raises(RuntimeError, match="boom"):
            insert_then_fail(catalog)
        assert RunLog(catalog).all() == []
        assert catalog.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
