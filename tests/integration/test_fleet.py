"""Fleet mode: the daemon with its catalog on the test bed's PostgreSQL server
(scripts/postgres.sh, a database made for each test), against real libvirt."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from snapshotd.catalog.migrations import LATEST
from snapshotd.config.settings import DatabaseSettings
from tests.integration import target
from tests.integration.cli import snapshotd
from tests.integration.domains import DomainFactory
from tests.integration.target import connect_line, yaml_list
from tests.integration.test_daemon import (
    Daemon,
    free_port,
    metric,
    metrics_text,
    policy,
    snapshots,
    write_policy,
)
from tests.integration.test_two_hosts import twin
from tests.pgserver import fresh_database, private_server, server


@pytest.fixture
def database() -> Iterator[DatabaseSettings]:
    with fresh_database(host_id="kvm-a") as settings:
        yield settings


def configure(
    daemon: Daemon, database: DatabaseSettings, password_file: str | None = None, extra: str = ""
) -> Path:
    config = daemon.root / "snapshotd.yaml"
    config.write_text(
        connect_line()
        + extra
        + "catalog:\n"
        + f'  url: "{database.url}"\n'
        + f"  password_file: {password_file or database.password_file}\n"
        + f"  host_id: {database.host_id}\n"
    )
    config.chmod(0o644)
    return config


def rows(database: DatabaseSettings, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(database.url, password=server().password, autocommit=True) as db:
        return db.execute(sql, args).fetchall()


def test_the_daemon_keeps_its_catalog_in_postgresql(
    domain_factory: DomainFactory, daemon: Daemon, database: DatabaseSettings
) -> None:
    dom = domain_factory(state="running")
    port = free_port()
    config = configure(daemon, database, extra=f'metrics_address: "127.0.0.1:{port}"\n')
    monitored = "monitor:\n  warn: 1h\n  crit: 2h\n"
    write_policy(daemon, "often", policy(dom, every="2s", keep=2, extra=monitored))
    daemon.start()
    daemon.wait_ready()

    def pruned_twice() -> bool:
        deleted = rows(
            database,
            "SELECT count(*) FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NOT NULL",
            dom.uuid,
        )
        return int(str(deleted[0][0])) >= 2

    daemon.wait_for(pruned_twice, 60, "two snapshots made and pruned, in PostgreSQL")
    args = ("--config", str(config), "--state-dir", str(daemon.state))
    status = snapshotd("status", "--json", *args)
    scraped = metrics_text(port)
    fleet = snapshotd("status", "--fleet", "--json", *args)
    fresh = snapshotd(
        "check", "--freshness", "--fleet", *args, "--policy-dir", str(daemon.policies)
    )
    assert daemon.stop() == 0
    # Every sample says which host of the fleet it is from.
    samples = [s for family in text_string_to_metric_families(scraped) for s in family.samples]
    assert samples
    assert {s.labels.get("host") for s in samples} == {"kvm-a"}
    assert metric(scraped, "snapshotd_snapshots_created_total", policy="often", host="kvm-a")
    # The fleet: this host, alive, and the domain's newest snapshot, taken here.
    assert fleet.code == 0, fleet.err
    shown = json.loads(fleet.out)
    (host,) = shown["hosts"]
    assert (host["host_id"], host["silent"], host["connections"]) == ("kvm-a", False, [target.URI])
    (newest,) = [d for d in shown["domains"] if d["domain_uuid"] == dom.uuid]
    assert (newest["host_id"], newest["policy"]) == ("kvm-a", "often")
    assert fresh.code == 0, fresh
    assert fresh.out.startswith("SNAPSHOTD OK"), fresh.out
    live = {
        str(r[0])
        for r in rows(
            database,
            "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
            dom.uuid,
        )
    }
    assert live == {name for _, name, _ in snapshots(dom)}  # the database agrees with libvirt
    assert len(live) == 2
    made = rows(
        database,
        "SELECT count(*) FROM operations WHERE domain_uuid = %s AND operation = 'create' "
        "AND outcome = 'ok'",
        dom.uuid,
    )
    assert int(str(made[0][0])) >= 4
    assert not (daemon.state / "catalog.sqlite").exists()  # nothing kept beside it
    assert status.code == 0, status.err
    report = json.loads(status.out)
    assert report["catalog"] == (f"{database.url} (PostgreSQL, shared; this host is 'kvm-a')")
    (row,) = [d for d in report["domains"] if d["domain_uuid"] == dom.uuid]
    assert row["policy"] == "often"


def test_the_daemon_does_not_start_with_a_wrong_password(
    daemon: Daemon, database: DatabaseSettings
) -> None:
    wrong = daemon.root / "db.password"
    wrong.write_text("not-the-password-4711\n")
    wrong.chmod(0o600)
    configure(daemon, database, password_file=str(wrong))
    started = time.monotonic()
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 1
    assert time.monotonic() - started < 20
    log = daemon.log.read_text()
    assert f"the catalog database {database.url}: " in log
    assert "password authentication failed" in log
    assert "not-the-password-4711" not in log
    assert server().password not in log
    assert "Traceback" not in log
    assert not any("READY=1" in m for m in daemon.drain())


def test_the_daemon_does_not_start_on_a_shared_catalog_a_newer_snapshotd_wrote(
    daemon: Daemon, database: DatabaseSettings
) -> None:
    configure(daemon, database)
    checked = snapshotd("check", "--config", str(daemon.root / "snapshotd.yaml"), "--policy-dir",
                        str(daemon.policies))  # fmt: skip
    assert checked.code == 0, checked.err
    assert "catalog: reachable, schema up to date" in checked.out
    rows(database, "UPDATE meta SET value = %s RETURNING value", str(LATEST + 1))
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 1
    log = daemon.log.read_text()
    assert f"newer than this snapshotd knows (up to {LATEST})" in log
    assert database.url in log
    assert rows(database, "SELECT value FROM meta") == [(str(LATEST + 1),)]


def host_config(daemon: Daemon, uri: str, database: DatabaseSettings, host_id: str) -> None:
    """A daemon of the fleet: its one connection, the shared catalog, its host id."""
    (daemon.root / "snapshotd.yaml").write_text(
        f"connect: {yaml_list(uri)}\n"
        + "catalog:\n"
        + f'  url: "{database.url}"\n'
        + f"  password_file: {database.password_file}\n"
        + f"  host_id: {host_id}\n"
    )
    (daemon.root / "snapshotd.yaml").chmod(0o644)


@pytest.mark.two_hosts
def test_two_hosts_sharing_a_shut_off_domain_take_each_slot_once(
    domain_factory: DomainFactory,
    peer_conn: Any,
    session_prefix: str,
    database: DatabaseSettings,
    tmp_path: Path,
) -> None:
    """A shut-off domain defined on two hosts on shared storage, both daemons scheduling
    it every 2 s at the same instants (no jitter): each slot is taken by one host, never
    by both; when the host that won the slots stops, the other takes the next ones; the
    catalog has every snapshot, and both libvirts together exactly those."""
    dom = domain_factory(state="shutoff")
    daemons = []
    with twin(peer_conn, dom, session_prefix) as there:
        try:
            for host, uri in (("kvm-a", target.URI), ("kvm-b", str(target.PEER_URI))):
                root = tmp_path / host
                (root / "policies").mkdir(parents=True, mode=0o755)
                d = Daemon(root)
                daemons.append(d)
                host_config(d, uri, database, host)
                write_policy(d, "shared", policy(dom, every="2s", keep=1000))
            for d in daemons:
                d.start()
            for d in daemons:
                d.wait_ready()
            started = time.time()
            time.sleep(12)
            # Whichever host won the slots so far goes down: the other takes over.
            winner = 0 if snapshots(dom) else 1
            codes = {winner: daemons[winner].stop()}
            time.sleep(12)
            codes[1 - winner] = daemons[1 - winner].stop()
            stopped = time.time()
        finally:
            for d in daemons:
                d.close()
        assert codes == {0: 0, 1: 0}
        here = {name: made for made, name, _ in snapshots(dom)}
        peer = _created(there)
    taken = sorted([*here.values(), *peer.values()])
    slots = int((stopped - started) // 2) + 1
    # One snapshot per slot: two hosts taking every slot would make about twice as many.
    assert len(taken) <= slots + 1, (len(taken), slots)
    assert len(taken) >= slots // 2, (len(taken), slots)
    logs = "".join(d.log.read_text() for d in daemons)
    assert here, "kvm-a took none:\n" + logs
    assert peer, "kvm-b took none:\n" + logs
    assert not set(here) & set(peer)
    live = {
        str(r[0])
        for r in rows(
            database,
            "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
            dom.uuid,
        )
    }
    assert live == set(here) | set(peer)
    # Both hosts in one place, and the domain's newest snapshot from whichever took it.
    config = tmp_path / "kvm-a" / "snapshotd.yaml"
    fleet = snapshotd("status", "--fleet", "--json", "--config", str(config))
    assert fleet.code == 0, fleet.err
    shown = json.loads(fleet.out)
    assert [h["host_id"] for h in shown["hosts"]] == ["kvm-a", "kvm-b"]
    (newest,) = [d for d in shown["domains"] if d["domain_uuid"] == dom.uuid]
    last = max([*here.items(), *peer.items()], key=lambda item: item[1])[0]
    assert newest["snapshot"] == last
    assert newest["host_id"] == ("kvm-a" if last in here else "kvm-b")
    assert "claimed it first (policy 'shared'" in logs or "served it already" in logs


def _created(dom: Any) -> dict[str, int]:
    """The snapshots of ``dom`` (a libvirt domain) by name: their creationTime."""
    from lxml import etree  # noqa: PLC0415 - only here

    made = {}
    for snap in dom.listAllSnapshots(0):
        root = etree.fromstring(snap.getXMLDesc(0).encode())
        made[snap.getName()] = int(root.findtext("creationTime") or 0)
    return made


def test_postgresql_stopped_and_started_under_the_daemon(
    domain_factory: DomainFactory, daemon: Daemon
) -> None:
    """The shared catalog's server stops while the daemon runs: the running domain is still
    taken every slot, recorded in the host's journal; the shut-off one (another host
    might take it) is skipped and reported; when the server is back, the journal is
    merged: the catalog has every snapshot libvirt has, once, and the journal is gone."""
    running = domain_factory(state="running")
    shutoff = domain_factory(state="shutoff")
    with private_server() as srv, fresh_database(srv, host_id="kvm-a") as database:
        configure(daemon, database)
        write_policy(daemon, "run", policy(running, every="2s", keep=100))
        write_policy(daemon, "off", policy(shutoff, every="2s", keep=100))
        daemon.start()
        daemon.wait_ready()

        def catalog_names(dom: Any) -> set[str]:
            return {
                str(r[0])
                for r in rows_on(srv, database, "SELECT name FROM snapshots WHERE "
                                 "domain_uuid = %s AND deleted_at IS NULL", dom.uuid)
            }  # fmt: skip

        daemon.wait_for(lambda: len(catalog_names(running)) >= 2, 30, "two snapshots, shared")
        srv.stop()
        try:
            before_off = len(snapshots(shutoff))
            before_run = len(snapshots(running))
            daemon.wait_for(
                lambda: len(snapshots(running)) >= before_run + 3, 40, "three snapshots offline"
            )
            assert (daemon.state / "offline" / "catalog.sqlite").exists()
            assert len(snapshots(shutoff)) == before_off  # skipped while the catalog is away
        finally:
            srv.start()
        merged = "the shared catalog has what this host recorded without it"
        daemon.wait_for(lambda: merged in daemon.log.read_text(), 40, "the journal merged")
        assert daemon.stop() == 0
        log = daemon.log.read_text()
        assert "the catalog cannot be reached: domains that run here are recorded" in log
        assert "recorded in this host's journal until it answers" in log
        assert "shutoff and the shared catalog cannot be reached: skipped" in log
        assert "the catalog answers again" in log
        assert "Traceback" not in log
        listed = [name for _, name, _ in snapshots(running)]
        assert len(listed) == len(set(listed))
        assert catalog_names(running) == set(listed)  # every one, once
        assert catalog_names(shutoff) == {name for _, name, _ in snapshots(shutoff)}
        assert not (daemon.state / "offline").exists()
        (run,) = rows_on(srv, database, "SELECT host_id FROM runs WHERE domain_uuid = %s",
                         running.uuid)  # fmt: skip
        assert run == ("kvm-a",)


def rows_on(srv: Any, database: DatabaseSettings, sql: str, *args: object) -> list[Any]:
    with psycopg.connect(database.url, password=srv.password, autocommit=True) as db:
        return db.execute(sql, args).fetchall()
