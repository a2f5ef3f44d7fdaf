"""The PostgreSQL catalog's own behaviour, on the test bed's real server
(scripts/postgres.sh): its schema and migrations, who may read it, how it connects
(password file, TLS, errors that never show the password) and its fleet-wide domain
locks.  The catalog contract itself runs on it in test_catalog.py."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from snapshotd.catalog import open_catalog
from snapshotd.catalog.api import CatalogUnavailable, SnapshotRow
from snapshotd.catalog.migrations import LATEST, POSTGRES, SQLITE, SchemaTooNew
from snapshotd.catalog.postgres import DatabaseError, PostgresCatalog
from snapshotd.config.settings import DatabaseSettings
from snapshotd.errors import SnapshotdError
from tests.pgserver import admin_connection, fresh_database, private_server, server

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def database() -> Iterator[DatabaseSettings]:
    with fresh_database(host_id="kvm-a") as settings:
        yield settings


def direct(settings: DatabaseSettings) -> psycopg.Connection[tuple[object, ...]]:
    """The snapshotd role's own connection to the database, beside the catalog."""
    return psycopg.connect(settings.url, password=server().password, autocommit=True)


def test_the_two_backends_number_their_migrations_alike() -> None:
    assert [m.version for m in POSTGRES] == [m.version for m in SQLITE]
    assert [m.what for m in POSTGRES] == [m.what for m in SQLITE]
    assert POSTGRES[-1].version == LATEST


def test_a_new_database_gets_the_latest_schema_once_even_from_hosts_starting_together(
    database: DatabaseSettings,
) -> None:
    opened: list[PostgresCatalog] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(PostgresCatalog(database))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert {c.schema_version for c in opened} == {LATEST}
    for c in opened:
        c.close()
    with direct(database) as db:
        rows = db.execute("SELECT key, value FROM meta").fetchall()
    assert rows == [("schema_version", str(LATEST))]


def test_a_schema_newer_than_this_snapshotd_is_refused_and_left_alone(
    database: DatabaseSettings,
) -> None:
    with open_catalog("", database=database):
        pass
    with direct(database) as db:
        db.execute("UPDATE meta SET value = %s", (str(LATEST + 1),))
        db.execute("CREATE TABLE from_the_future (x INTEGER)")
    with pytest.raises(SchemaTooNew) as refused:
        open_catalog("", database=database)
    message = str(refused.value)
    assert f"version {LATEST + 1}, newer than this snapshotd knows (up to {LATEST})" in message
    assert database.url.partition("?")[0] in message
    with direct(database) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [(str(LATEST + 1),)]
        assert db.execute("SELECT to_regclass('from_the_future') IS NOT NULL").fetchone() == (True,)


def test_another_role_cannot_read_the_snapshots_xml(database: DatabaseSettings) -> None:
    with open_catalog("", database=database) as catalog:
        catalog.record_snapshot(
            SnapshotRow("qemu:///system", UUID, "web", "s1", 1, "p", None, "<secret/>", (), True)
        )
    srv = server()
    role = f"snapshotd_t_reader_{secrets.token_hex(4)}"
    with admin_connection(srv) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{srv.password}'")  # hex name
    try:
        reader_url = database.url.replace("snapshotd@", f"{role}@", 1)
        with psycopg.connect(reader_url, password=srv.password, autocommit=True) as reader:
            for table in ("snapshots", "runs", "operations", "group_members", "meta"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    reader.execute(f"SELECT * FROM {table}")  # noqa: S608 - our table names
    finally:
        with admin_connection(srv) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_wrong_password_is_a_clear_error_without_the_password(
    database: DatabaseSettings, tmp_path: Path
) -> None:
    wrong = tmp_path / "db.password"
    wrong.write_text("not-the-password-4711\n")
    wrong.chmod(0o600)
    settings = DatabaseSettings(database.url, str(wrong))
    with pytest.raises(DatabaseError) as refused:
        open_catalog("", database=settings)
    message = str(refused.value)
    assert "password authentication failed" in message
    assert database.url in message  # the URL, which holds no password
    assert "not-the-password-4711" not in message
    assert server().password not in message


def test_an_unreachable_database_is_a_clear_error_quickly(tmp_path: Path) -> None:
    password = tmp_path / "db.password"
    password.write_text("x\n")
    password.chmod(0o600)
    settings = DatabaseSettings("postgresql://snapshotd@127.0.0.1:9/snapshotd", str(password))
    started = time.monotonic()
    with pytest.raises(DatabaseError) as refused:
        open_catalog("", database=settings)
    assert time.monotonic() - started < 5
    message = str(refused.value)
    assert message.startswith("the catalog database postgresql://snapshotd@127.0.0.1:9/snapshotd")
    assert "refused" in message


def test_a_password_file_others_can_read_is_refused(
    database: DatabaseSettings, tmp_path: Path
) -> None:
    readable = tmp_path / "db.password"
    readable.write_text(server().password + "\n")
    readable.chmod(0o644)
    with pytest.raises(DatabaseError) as refused:
        open_catalog("", database=DatabaseSettings(database.url, str(readable)))
    assert f"{readable}: others can read it (mode 0644); fix: chmod 0600 {readable}" in str(
        refused.value
    )
    missing = tmp_path / "absent"
    with pytest.raises(DatabaseError, match="cannot be read"):
        open_catalog("", database=DatabaseSettings(database.url, str(missing)))


def test_tls_is_chosen_by_the_url_parameters(database: DatabaseSettings) -> None:
    ca = Path(server().password_file).parent / "ca.crt"
    tls = DatabaseSettings(
        f"{database.url}?sslmode=verify-full&sslrootcert={ca}", database.password_file, "kvm-a"
    )
    with open_catalog("", database=tls) as catalog, direct(database) as db:
        assert catalog.location == tls.url  # no password in it to remove
        used = db.execute(
            """SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a
               ON a.pid = s.pid WHERE a.application_name LIKE 'snapshotd on kvm-a, pid %'"""
        ).fetchall()
    assert used
    assert all(ssl for ssl, _ in used), used
    # verify-full checks the certificate: a CA that did not sign it is refused.
    other_ca = Path(server().password_file).parent / "not-the-ca.crt"
    other_ca.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
    try:
        with pytest.raises(DatabaseError, match="certificate verify failed"):
            open_catalog(
                "",
                database=DatabaseSettings(
                    f"{database.url}?sslmode=verify-full&sslrootcert={other_ca}",
                    database.password_file,
                ),
            )
    finally:
        other_ca.unlink()


def test_a_domain_lock_excludes_other_hosts_and_names_the_holder(
    database: DatabaseSettings,
) -> None:
    other_host = DatabaseSettings(database.url, database.password_file, "kvm-b")
    with open_catalog("", database=database) as a, open_catalog("", database=other_host) as b:
        with a.domain_lock(UUID, "web"):
            started = time.monotonic()
            with pytest.raises(SnapshotdError) as busy, b.domain_lock(UUID, "web", wait=0.5):
                pass
            assert time.monotonic() - started >= 0.5
            assert str(busy.value).startswith(
                f"domain 'web' is busy: another snapshotd on kvm-a, pid {os.getpid()} has"
            )
            with b.domain_lock("11111111-2222-3333-4444-555555555555", "db", wait=0):
                pass  # another domain is free
        with b.domain_lock(UUID, "web", wait=0):
            pass  # released


def test_a_host_that_loses_its_connection_loses_its_locks(database: DatabaseSettings) -> None:
    other_host = DatabaseSettings(database.url, database.password_file, "kvm-b")
    a = PostgresCatalog(database)
    with open_catalog("", database=other_host) as b:
        lock = a.domain_lock(UUID, "web")
        lock.__enter__()
        with pytest.raises(SnapshotdError), b.domain_lock(UUID, "web", wait=0):
            pass
        a.close()  # as when a host dies: its session ends, and its advisory locks go
        with b.domain_lock(UUID, "web", wait=5):
            pass


def test_the_database_stopped_under_a_catalog_is_a_clear_error_then_reconnected() -> None:
    with (
        private_server() as srv,
        fresh_database(srv) as database,
        open_catalog("", database=database) as catalog,
    ):
        catalog.record_snapshot(
            SnapshotRow("qemu:///system", UUID, "web", "s1", 1, "p", None, "<x/>", (), True)
        )
        srv.stop()
        try:
            with pytest.raises(CatalogUnavailable) as lost:
                catalog.snapshots()
        finally:
            srv.start()
        # The server is back: the next call connects anew, nothing was lost.
        assert [r.name for r in catalog.snapshots()] == ["s1"]
    assert str(lost.value).startswith(f"the catalog database {database.url}: ")
