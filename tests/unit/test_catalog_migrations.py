"""The SQLite catalog's schema migrations (catalog/migrations.py), on real database files:
an old catalog is brought up to date with its rows kept, a newer one is refused and left
alone, a migration that fails leaves the catalog as it was."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
import threading
from pathlib import Path

import pytest

from snapshotd.catalog import migrations, sqlite
from snapshotd.catalog.api import GroupMember, GroupRow, SnapshotRow
from snapshotd.catalog.migrations import LATEST, Migration, SchemaTooNew
from snapshotd.catalog.sqlite import DB_NAME, SQLiteCatalog
from snapshotd.cli.app import main

UUID = "0c1d5a1e-7a7b-4a53-9e8a-2f8c7b0d6f11"


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if each open were the process's first (the catalog caches files it migrated)."""
    monkeypatch.setattr(sqlite, "_READY", set())


def version_of(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(value)


def tables_of(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(r[0]) for r in rows}


def old_catalog(state: Path, upto: int, version: int) -> Path:
    """A catalog file as a snapshotd that knew migrations 1..``upto`` made it, recording
    ``version`` (catalogs of the groups' first days recorded 1 with group tables)."""
    state.mkdir(mode=0o700)
    path = state / DB_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        for m in migrations.SQLITE[:upto]:
            for statement in m.statements:
                db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
        db.execute(
            "INSERT INTO snapshots (uri, domain_uuid, domain_name, name, created_at, policy,"
            " xml, libvirt_metadata) VALUES ('qemu:///system', ?, 'db', 'nightly-1', 100,"
            " 'nightly', '<domainsnapshot/>', 1)",
            (UUID,),
        )
        db.commit()
    path.chmod(0o600)
    return path


def row(name: str = "nightly-1", created: int = 100) -> SnapshotRow:
    return SnapshotRow(
        uri="qemu:///system",
        domain_uuid=UUID,
        domain_name="db",
        name=name,
        created_at=created,
        policy="nightly",
        parent=None,
        xml="<domainsnapshot/>",
        files=(),
        libvirt_metadata=True,
    )


def test_the_migrations_are_numbered_one_by_one() -> None:
    migrations.check_order(migrations.SQLITE)
    assert migrations.SQLITE[-1].version == LATEST
    with pytest.raises(ValueError, match=r"not \[1, 3\]"):
        migrations.check_order((Migration(1, "a", ()), Migration(3, "b", ())))


def test_a_new_catalog_has_the_latest_schema(tmp_path: Path) -> None:
    with SQLiteCatalog(str(tmp_path / "state")) as catalog:
        assert catalog.schema_version == LATEST
    path = tmp_path / "state" / DB_NAME
    assert version_of(path) == LATEST
    assert {"snapshots", "runs", "group_members", "group_holds", "group_copies"} <= tables_of(path)


@pytest.mark.parametrize(("upto", "recorded"), [(1, 1), (3, 1), (2, 2)])
def test_an_old_catalog_is_brought_up_to_date_with_its_rows_kept(
    tmp_path: Path, upto: int, recorded: int
) -> None:
    path = old_catalog(tmp_path / "state", upto, recorded)

    with SQLiteCatalog(str(tmp_path / "state")) as catalog:
        assert catalog.schema_version == LATEST
        found = catalog.find(UUID, "nightly-1")
        assert found is not None
        assert found.created_at == 100
        # What the new versions added works on it.
        catalog.record_snapshot(row("shop-1", 200))
        member = GroupMember("qemu:///system", UUID, "db", 200)
        catalog.groups.record(GroupRow("shop", "shop-1", 200, (member,)))
        assert [g.name for g in catalog.groups.all("shop")] == ["shop-1"]
    assert version_of(path) == LATEST


def test_a_catalog_a_newer_snapshotd_wrote_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = old_catalog(tmp_path / "state", LATEST, LATEST + 1)
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    with pytest.raises(SchemaTooNew) as refused:
        SQLiteCatalog(str(tmp_path / "state"))

    message = str(refused.value)
    assert str(path) in message
    assert f"version {LATEST + 1}, newer than this snapshotd knows (up to {LATEST})" in message
    assert version_of(path) == LATEST + 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_verb_on_a_newer_catalog_says_why_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_catalog(tmp_path / "state", LATEST, LATEST + 1)
    out = io.StringIO()

    code = main(["status", "--config", str(tmp_path / "none.yaml"),
                 "--state-dir", str(tmp_path / "state")], out)  # fmt: skip

    assert code == 1, out.getvalue()
    assert f"newer than this snapshotd knows (up to {LATEST})" in capsys.readouterr().err


def test_a_migration_that_fails_leaves_the_catalog_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = old_catalog(tmp_path / "state", 1, 1)
    broken = Migration(
        LATEST + 1,
        "a table, then a statement that fails",
        ("CREATE TABLE extra (x INTEGER)", "ALTER TABLE no_such_table ADD COLUMN y"),
    )
    monkeypatch.setattr(migrations, "SQLITE", (*migrations.SQLITE, broken))

    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        SQLiteCatalog(str(tmp_path / "state"))

    # Not even the migrations before the broken one stay: one transaction.
    assert version_of(path) == 1
    assert "extra" not in tables_of(path)
    assert "group_members" not in tables_of(path)


def test_two_opening_an_old_catalog_at_once_migrate_it_once(tmp_path: Path) -> None:
    old_catalog(tmp_path / "state", 1, 1)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        try:
            start.wait()
            with SQLiteCatalog(str(tmp_path / "state")) as catalog:
                assert catalog.schema_version == LATEST
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with SQLiteCatalog(str(tmp_path / "state")) as catalog:
        assert catalog.find(UUID, "nightly-1") is not None


def test_version_5_names_the_holder_of_what_libvirt_held(tmp_path: Path) -> None:
    """A version 4 catalog of a fleet host: its rows that libvirt held are held by the
    host that recorded them; a catalog-only one is held by none."""
    path = old_catalog(tmp_path / "state", 4, 4)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE snapshots SET host_id = 'kvm-a'")
        db.execute(
            "INSERT INTO snapshots (uri, domain_uuid, domain_name, name, created_at, policy,"
            " xml, libvirt_metadata, host_id) VALUES ('qemu:///system', ?, 'db', 'only-here',"
            " 200, 'nightly', '<domainsnapshot/>', 0, 'kvm-a')",
            (UUID,),
        )
        db.commit()
    with SQLiteCatalog(str(tmp_path / "state"), host="kvm-a") as catalog:
        held = {r.name: r.held_by for r in catalog.snapshots(domain_uuid=UUID)}
    assert held == {"nightly-1": "kvm-a", "only-here": None}
