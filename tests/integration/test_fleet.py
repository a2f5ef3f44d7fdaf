"""Fleet mode: the daemon with its catalog on the test bed's PostgreSQL server
(scripts/postgres.sh, a database made for each test), against real libvirt."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from snapshotd.catalog.migrations import LATEST
from snapshotd.config.settings import DatabaseSettings
from tests.integration import target
from tests.integration.cli import REPO, snapshotd
from tests.integration.domains import DomainFactory, remove_domain
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
from tests.integration.test_two_hosts import link, twin
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


def host_config(
    daemon: Daemon, uris: str | tuple[str, ...], database: DatabaseSettings, host_id: str
) -> None:
    """A daemon of the fleet: its connections, the shared catalog, its host id."""
    listed = (uris,) if isinstance(uris, str) else uris
    (daemon.root / "snapshotd.yaml").write_text(
        f"connect: {yaml_list(*listed)}\n"
        + "catalog:\n"
        + f'  url: "{database.url}"\n'
        + f"  password_file: {database.password_file}\n"
        + f"  host_id: {host_id}\n"
    )
    (daemon.root / "snapshotd.yaml").chmod(0o644)


def fleet_daemons(
    tmp_path: Path,
    database: DatabaseSettings,
    hosts: dict[str, str | tuple[str, ...]],
    name: str,
    body: Callable[[str], str],
) -> dict[str, Daemon]:
    """A daemon per host (host id -> its connections), not started, each with the shared
    catalog and the policy ``name`` (``body(host)``)."""
    daemons: dict[str, Daemon] = {}
    for host, uris in hosts.items():
        root = tmp_path / host
        (root / "policies").mkdir(parents=True, mode=0o755)
        daemons[host] = Daemon(root)
        host_config(daemons[host], uris, database, host)
        write_policy(daemons[host], name, body(host))
    return daemons


def start_fleet(
    tmp_path: Path,
    database: DatabaseSettings,
    hosts: dict[str, str | tuple[str, ...]],
    name: str,
    body: Callable[[str], str],
) -> dict[str, Daemon]:
    """fleet_daemons, started and ready; the caller closes them (all are closed here when
    one fails to start)."""
    daemons = fleet_daemons(tmp_path, database, hosts, name, body)
    try:
        for d in daemons.values():
            d.start()
        for d in daemons.values():
            d.wait_ready()
    except BaseException:
        for d in daemons.values():
            d.close()  # by its pid
        raise
    return daemons


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
    daemons: list[Daemon] = []
    with twin(peer_conn, dom, session_prefix) as there:
        try:
            hosts = {"kvm-a": target.URI, "kvm-b": str(target.PEER_URI)}
            body = policy(dom, every="2s", keep=1000)
            daemons = list(
                start_fleet(tmp_path, database, hosts, "shared", lambda _: body).values()
            )
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


@pytest.mark.two_hosts
def test_retention_of_a_shared_domain_counts_every_host_s_snapshots(
    domain_factory: DomainFactory,
    peer_conn: Any,
    session_prefix: str,
    database: DatabaseSettings,
    tmp_path: Path,
) -> None:
    """A shut-off domain both hosts define, keep_last 3, a slot every 2 s: kvm-a alone
    keeps three; then kvm-b alone keeps three of its own and leaves kvm-a's (its libvirt
    holds them) to kvm-a; kvm-a back, it deletes its three by the domain's whole history
    though kvm-b takes the slots.  Per host, each would have kept three of its own."""
    dom = domain_factory(state="shutoff")
    with twin(peer_conn, dom, session_prefix) as there:
        hosts: dict[str, str | tuple[str, ...]] = {
            "kvm-a": target.URI,
            "kvm-b": str(target.PEER_URI),
        }
        body = policy(dom, every="2s", keep=3)
        daemons = fleet_daemons(tmp_path, database, hosts, "shared", lambda _: body)
        try:
            a, b = daemons["kvm-a"], daemons["kvm-b"]

            def pruned() -> int:
                (found,) = rows(
                    database,
                    "SELECT count(*) FROM snapshots WHERE domain_uuid = %s"
                    " AND deleted_at IS NOT NULL",
                    dom.uuid,
                )
                return int(str(found[0]))

            a.start()
            a.wait_ready()
            a.wait_for(lambda: pruned() >= 1 and len(snapshots(dom)) == 3, 40, "kvm-a: 3 kept")
            assert a.stop() == 0
            first = {name for _, name, _ in snapshots(dom)}
            b.start()
            b.wait_ready()
            b.wait_for(lambda: pruned() >= 2 and len(_created(there)) == 3, 40, "kvm-b: 3 kept")
            assert {name for _, name, _ in snapshots(dom)} == first  # kvm-a's, for kvm-a
            left = [f"left {name} to kvm-a: its libvirt holds it" for name in sorted(first)]
            assert all(line in b.log.read_text() for line in left), b.log.read_text()
            a.start()
            a.wait_ready()
            a.wait_for(lambda: not first & set(_created(dom.dom)), 30, "kvm-a: its 3 pruned")
            codes = [a.stop(), b.stop()]
        finally:
            for d in daemons.values():
                d.close()
        assert codes == [0, 0]
        here, peer = _created(dom.dom), _created(there)
    assert not set(here) & set(peer)
    # The fleet keeps three, and one more at most: the loser of the last slot prunes by
    # the history before the winner's snapshot.
    assert 3 <= len(here) + len(peer) <= 4, (here, peer)
    live = rows(
        database,
        "SELECT name, held_by FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
        dom.uuid,
    )
    assert dict(live) == {
        **dict.fromkeys(here, "kvm-a"),
        **dict.fromkeys(peer, "kvm-b"),
    }
    assert first <= {
        str(r[0])
        for r in rows(
            database,
            "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NOT NULL",
            dom.uuid,
        )
    }


@pytest.mark.two_hosts
def test_two_hosts_with_one_group_policy_take_each_group_slot_once(
    domain_factory: DomainFactory,
    peer_factory: DomainFactory,
    database: DatabaseSettings,
    tmp_path: Path,
) -> None:
    """A group of two shut-off domains, one on each host; both hosts' daemons have the
    group policy and reach both libvirts, every 2 s at the same instants: each slot's
    group is made once, by one host, with both members; the other host leaves it."""
    here, there = domain_factory(state="shutoff"), peer_factory(state="shutoff")
    uris = (target.URI, str(target.PEER_URI))
    body = (
        "name: pair\n"
        f'domains: {{include: ["{here.name}", "{there.name}"], states: [shutoff]}}\n'
        "group: {max_pause: 10s}\n"
        "schedule: {every: 2s}\n"
        'snapshot: {name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"}\n'
    )
    hosts: dict[str, str | tuple[str, ...]] = {"kvm-a": uris, "kvm-b": uris}
    daemons = start_fleet(tmp_path, database, hosts, "pair", lambda _: body)
    try:
        started = time.time()
        time.sleep(12)
        codes = [d.stop() for d in daemons.values()]
        stopped = time.time()
    finally:
        for d in daemons.values():
            d.close()
    assert codes == [0, 0]
    logs = "".join(d.log.read_text() for d in daemons.values())
    assert "crashed" not in logs, logs
    groups: dict[str, set[str]] = {}
    for name, member in rows(
        database, "SELECT name, domain_name FROM group_members WHERE policy = 'pair'"
    ):
        groups.setdefault(str(name), set()).add(str(member))
    assert groups, logs
    assert all(members == {here.name, there.name} for members in groups.values()), groups
    # One group per slot: two hosts running every slot would make about twice as many.
    slots = int((stopped - started) // 2) + 1
    assert len(groups) <= slots + 1, (len(groups), slots)
    assert re.search(r"group pair: host 'kvm-.' claimed it first \(slot \d+\)", logs), logs
    for dom in (here, there):
        names = {s.getName() for s in dom.dom.listAllSnapshots(0)}
        assert names == set(groups), (dom.name, names, groups)


def _created(dom: Any) -> dict[str, int]:
    """The snapshots of ``dom`` (a libvirt domain) by name: their creationTime. One the
    daemon's retention deletes between the listing and the reading is left out."""
    import libvirt  # noqa: PLC0415 - only here
    from lxml import etree  # noqa: PLC0415 - only here

    made = {}
    for snap in dom.listAllSnapshots(0):
        try:
            xml = snap.getXMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                continue
            raise
        root = etree.fromstring(xml.encode())
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


def _older_machine(dom: Any) -> None:
    """Define the domain with a machine type both hosts' QEMUs offer (QEMU 7.2's)."""
    import libvirt  # noqa: PLC0415 - only here

    xml = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    dom.dom.connect().defineXML(re.sub(r"machine='[^']*'", "machine='pc-i440fx-7.2'", xml))


def _tree(dom: Any) -> tuple[dict[str, str | None], str | None]:
    """A libvirt domain's snapshots: name -> parent name, and the current one."""
    tree = {}
    current = None
    for snap in dom.listAllSnapshots(0):
        try:
            parent = snap.getParent(0).getName()
        except Exception:  # noqa: BLE001 - a root has no parent
            parent = None
        tree[snap.getName()] = parent
        if snap.isCurrent(0):
            current = snap.getName()
    return tree, current


def _shut_off_with_snapshots(
    domain_factory: DomainFactory, daemon: Daemon, database: DatabaseSettings, *names: str
) -> tuple[Any, tuple[str, ...]]:
    """A shut-off domain both hosts' QEMUs can run, with the snapshots ``names`` (each the
    child of the one before) taken by `snapshotd take` into the shared catalog; and the
    CLI's arguments for that catalog."""
    dom = domain_factory(state="shutoff")
    _older_machine(dom)
    config = configure(daemon, database)
    args = ("--config", str(config), "--state-dir", str(daemon.state))
    for name in names:
        assert snapshotd("take", "--domain", dom.name, "--name", name, *args).code == 0
    return dom, args


@pytest.mark.two_hosts
def test_migrate_takes_the_snapshot_hierarchy_to_the_other_host(
    domain_factory: DomainFactory,
    peer_conn: Any,
    session_prefix: str,
    database: DatabaseSettings,
    daemon: Daemon,
) -> None:
    """A shut-off domain with three snapshots, migrated offline to the other host: the
    hierarchy (parents, current) is there afterwards, gone from the source, the catalog
    keeps every snapshot, and each step is in the operations log."""
    dom, args = _shut_off_with_snapshots(domain_factory, daemon, database, "s1", "s2", "s3")
    before = _tree(dom.dom)
    assert before == ({"s1": None, "s2": "s1", "s3": "s2"}, "s3")
    try:
        moved = snapshotd(
            "migrate", "--domain", dom.name, "--to", str(target.PEER_URI), "--persistent",
            "--undefine-source", *args,
        )  # fmt: skip
        assert moved.code == 0, moved
        assert f"migrated {dom.name} to {target.PEER_URI} with 3 snapshots; current: s3" in (
            moved.out
        )
        there = peer_conn.lookupByUUIDString(dom.uuid)
        assert _tree(there) == before
        assert dom.name not in [d.name() for d in dom.dom.connect().listAllDomains(0)]
        live = rows(
            database,
            "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
            dom.uuid,
        )
        assert sorted(str(r[0]) for r in live) == ["s1", "s2", "s3"]
        steps = rows(
            database,
            "SELECT message FROM operations WHERE operation = 'migrate' AND domain_uuid = %s "
            "ORDER BY id",
            dom.uuid,
        )
        assert [str(s[0]).split(" ")[0] for s in steps] == [
            "kept",
            "removed",
            "migrated",
            "redefined",
        ]
        assert rows(database, "SELECT count(*) FROM moves") == [(0,)]
    finally:
        remove_domain(peer_conn, dom.name, session_prefix)


@pytest.mark.two_hosts
def test_a_migration_libvirt_refuses_is_rolled_back(
    domain_factory: DomainFactory,
    peer_conn: Any,
    session_prefix: str,
    database: DatabaseSettings,
    daemon: Daemon,
) -> None:
    """The destination has another domain of the same name: libvirt refuses the migration
    after the metadata left the source; it is redefined there, hierarchy and current as
    they were, and the command says so (exit 1)."""
    dom, args = _shut_off_with_snapshots(domain_factory, daemon, database, "s1", "s2")
    before = _tree(dom.dom)
    import libvirt  # noqa: PLC0415 - only here

    xml = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = re.sub(r"<uuid>[^<]*</uuid>", "", xml)  # another domain, the same name
    xml = re.sub(r" machine='[^']*'", "", xml)
    peer_conn.defineXML(xml)
    try:
        refused = snapshotd("migrate", "--domain", dom.name, "--to", str(target.PEER_URI), *args)
        assert refused.code == 1, refused
        assert "libvirt did not migrate it" in refused.err
        assert f"its snapshot metadata is back on {target.URI}" in refused.err
        assert _tree(dom.dom) == before
        assert rows(database, "SELECT count(*) FROM moves") == [(0,)]
    finally:
        remove_domain(peer_conn, dom.name, session_prefix)


@pytest.mark.two_hosts
def test_a_domain_live_migrated_under_two_daemons_keeps_one_history(
    peer_factory: DomainFactory,
    peer_conn: Any,
    database: DatabaseSettings,
    tmp_path: Path,
) -> None:
    """Two daemons on one shared catalog, one per host, a policy every 3 s with keep 3: a
    running domain live-migrated with `snapshotd migrate` from one host to the other.
    Before, the first host takes it; after, the second, from the next slot on, with the
    first host's snapshots redefined there and pruned by its retention; no slot is taken
    twice; the metadata is on the destination only."""
    dom = peer_factory(state="running")  # on this machine's libvirt (the peer)
    hosts = {"kvm-a": str(target.PEER_URI), "kvm-b": target.URI}
    daemons: dict[str, Daemon] = {}
    try:
        body = policy(dom, every="3s", keep=3)
        daemons = start_fleet(tmp_path, database, hosts, "often", lambda _: body)

        def made_by(host: str) -> int:
            found = rows(
                database,
                "SELECT count(*) FROM snapshots WHERE domain_uuid = %s AND host_id = %s",
                dom.uuid,
                host,
            )
            return int(str(found[0][0]))

        daemons["kvm-a"].wait_for(lambda: made_by("kvm-a") >= 4, 40, "four snapshots on kvm-a")
        config = tmp_path / "kvm-a" / "snapshotd.yaml"
        moved = snapshotd(
            "migrate", "--domain", dom.name, "--connect", hosts["kvm-a"], "--to",
            hosts["kvm-b"], "--live", "--persistent", "--undefine-source", "--migrate-uri",
            "tcp://10.213.7.2", "--unsafe", "--config", str(config),
        )  # fmt: skip
        assert moved.code == 0, moved
        daemons["kvm-b"].wait_for(lambda: made_by("kvm-b") >= 3, 40, "three snapshots on kvm-b")
        stopped = time.time()
        codes = {h: d.stop() for h, d in daemons.items()}
    finally:
        for d in daemons.values():
            d.close()
    assert codes == {"kvm-a": 0, "kvm-b": 0}
    there = peer_conn  # the source: the domain left it
    assert dom.uuid not in [d.UUIDString() for d in there.listAllDomains(0)]
    import libvirt  # noqa: PLC0415 - only here

    dest = libvirt.open(target.URI)
    try:
        arrived = dest.lookupByUUIDString(dom.uuid)
        on_dest = set(_created(arrived))
    finally:
        dest.close()
    every = rows(
        database,
        "SELECT name, host_id, deleted_at IS NULL, created_at FROM snapshots "
        "WHERE domain_uuid = %s ORDER BY created_at",
        dom.uuid,
    )
    live = {str(r[0]) for r in every if r[2]}
    assert live == on_dest  # the destination has the live history, all of it
    assert len(live) == 3  # keep 3, across the move
    pruned_of_a = [r for r in every if r[1] == "kvm-a" and not r[2]]
    assert pruned_of_a  # kvm-b's retention pruned what kvm-a made
    assert len({r[0] for r in every}) == len(every)
    created = [int(str(r[3])) for r in every]
    first = min(created)
    slots = int((stopped - first) // 3) + 2
    assert len(every) <= slots, (len(every), slots)
    logs = {h: d.log.read_text() for h, d in daemons.items()}
    assert "Traceback" not in logs["kvm-a"] + logs["kvm-b"]
    for step in ("kept the metadata of", "removed their metadata from", "migrated to",
                 "redefined"):  # fmt: skip
        assert step in moved.out


@pytest.mark.two_hosts
def test_a_domain_that_arrives_by_virsh_migrate_is_adopted(
    peer_factory: DomainFactory,
    peer_conn: Any,
    database: DatabaseSettings,
    tmp_path: Path,
) -> None:
    """A running domain moved by libvirt alone (its metadata removed by hand first, as
    libvirt demands): the daemon on the destination sees it, redefines the catalog's
    snapshots of it there, and goes on with its schedule and retention."""
    import libvirt  # noqa: PLC0415 - only here

    dom = peer_factory(state="running")
    hosts: dict[str, str | tuple[str, ...]] = {"kvm-a": str(target.PEER_URI), "kvm-b": target.URI}
    body = policy(dom, every="3s", keep=3)
    made = fleet_daemons(tmp_path, database, hosts, "often", lambda _: body)
    first, second = made["kvm-a"], made["kvm-b"]
    try:
        first.start()
        first.wait_ready()
        first.wait_for(lambda: len(snapshots(dom)) >= 2, 30, "two snapshots on kvm-a")
        assert first.stop() == 0
        made_here = {name for _, name, _ in snapshots(dom)}
        for snap in dom.dom.listAllSnapshots(0):  # as an administrator does before virsh migrate
            snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        second.start()
        second.wait_ready()
        dest = libvirt.open(target.URI)
        try:
            flags = (
                libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
                | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_UNSAFE
            )  # fmt: skip
            params = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.213.7.2"}
            dom.dom.migrate3(dest, params, flags)
            arrived = dest.lookupByUUIDString(dom.uuid)

            def adopted_and_going_on() -> bool:
                names = set(_created(arrived))
                return bool(made_here & names) and len(names - made_here) >= 2

            second.wait_for(adopted_and_going_on, 40, "kvm-a's snapshots redefined, two new")
            assert second.stop() == 0
            names = set(_created(arrived))
        finally:
            dest.close()
    finally:
        first.close()
        second.close()
    log = second.log.read_text()
    assert "arrived from another host; redefined" in log
    live = rows(
        database,
        "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
        dom.uuid,
    )
    assert {str(r[0]) for r in live} == names
    assert len(names) == 3  # retention on kvm-b counts kvm-a's snapshots too


@pytest.mark.two_hosts
@pytest.mark.parametrize("settled_by", ["migrate", "daemon"])
def test_a_migrate_killed_half_way_is_settled_by_the_next(
    peer_factory: DomainFactory,
    peer_conn: Any,
    database: DatabaseSettings,
    daemon: Daemon,
    settled_by: str,
) -> None:
    """kill -9 of `snapshotd migrate` while libvirt migrates (its source QEMU stopped, so
    the migration cannot end first): the domain's metadata is on neither host, only in
    the catalog's record.  The same command run again puts it back where the domain is,
    then migrates it: every snapshot arrives, none is lost, the record is gone.  Or the
    host's daemon, starting, puts it back where the domain is (here: the source)."""
    dom = peer_factory(state="running")  # on this machine's libvirt (the peer)
    config = daemon.root / "snapshotd.yaml"
    config.write_text(
        f"connect: {yaml_list(str(target.PEER_URI))}\n"
        f'catalog:\n  url: "{database.url}"\n  password_file: {database.password_file}\n'
        "  host_id: kvm-a\n"
    )
    config.chmod(0o644)
    args = ("--config", str(config), "--state-dir", str(daemon.state))
    for name in ("s1", "s2"):
        assert snapshotd("take", "--domain", dom.name, "--name", name, *args).code == 0
    before = _tree(dom.dom)
    command = [
        sys.executable, "-m", "snapshotd", "migrate", "--domain", dom.name, "--to", target.URI,
        "--live", "--persistent", "--undefine-source", "--unsafe", "--migrate-uri",
        "tcp://10.213.7.2", *args,
    ]  # fmt: skip
    qemu = int(Path(f"/run/libvirt/qemu/{dom.name}.pid").read_text())
    os.kill(qemu, signal.SIGSTOP)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        started = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while rows(database, "SELECT step FROM moves") != [("migrating",)]:
                assert time.monotonic() < deadline, "migrate never got to the migration"
                time.sleep(0.1)
            time.sleep(1)  # inside libvirt's migration call
            started.kill()  # by its pid: kill -9
            started.wait(timeout=30)
        finally:
            if started.poll() is None:
                started.kill()
    finally:
        os.kill(qemu, signal.SIGCONT)
    assert [
        (str(r[0]), str(r[1])) for r in rows(database, "SELECT domain_name, step FROM moves")
    ] == [(dom.name, "migrating")]
    assert _tree(dom.dom) == ({}, None)  # removed from the source, not yet anywhere else
    shown = snapshotd("status", "--fleet", "--json", *args)
    assert shown.code == 0, shown.err
    (move,) = json.loads(shown.out)["migrations"]
    assert (move["domain"], move["step"], move["snapshots"], move["host_id"]) == (
        dom.name,
        "migrating",
        ["s1", "s2"],
        "kvm-a",
    )
    text = snapshotd("status", "--fleet", *args).out
    assert f"  {dom.name}: {target.PEER_URI} -> " in text, text
    # libvirt ends the migration job its client left (it stays here); then again.
    deadline = time.monotonic() + 60
    while dom.dom.jobInfo()[0] != 0:  # VIR_DOMAIN_JOB_NONE
        assert time.monotonic() < deadline, "libvirt kept the migration job"
        time.sleep(0.5)
    if settled_by == "daemon":
        daemon.start()
        daemon.wait_ready()
        daemon.wait_for(
            lambda: rows(database, "SELECT count(*) FROM moves") == [(0,)], 30, "settled"
        )
        assert daemon.stop() == 0
        assert f"{dom.name}: rolled back an interrupted migration: 2 snapshots redefined on" in (
            daemon.log.read_text()
        )
        assert _tree(dom.dom) == before  # on the source again, where the domain is
        return
    again = subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                           capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "rolled back an interrupted migration: 2 snapshots redefined on" in again.stdout
    assert "redefined 2 snapshots on" in again.stdout
    import libvirt  # noqa: PLC0415 - only here

    dest = libvirt.open(target.URI)
    try:
        assert _tree(dest.lookupByUUIDString(dom.uuid)) == before
    finally:
        dest.close()
    assert dom.uuid not in [d.UUIDString() for d in peer_conn.listAllDomains(0)]
    assert rows(database, "SELECT count(*) FROM moves") == [(0,)]
    live = rows(
        database, "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
        dom.uuid,
    )  # fmt: skip
    assert sorted(str(r[0]) for r in live) == ["s1", "s2"]


@pytest.mark.two_hosts
@pytest.mark.disruptive  # the cut reaches every test of the tested host
def test_the_link_to_one_host_cut_the_other_takes_the_shared_domain(
    domain_factory: DomainFactory,
    peer_conn: Any,
    session_prefix: str,
    database: DatabaseSettings,
    tmp_path: Path,
) -> None:
    """Two daemons sharing a shut-off domain; the network to the tested host is cut for
    a while: the other host takes the slots meanwhile (after the cut host's claims of
    the slots it could no longer serve), no slot twice, and both go on after."""
    dom = domain_factory(state="shutoff")
    daemons: list[Daemon] = []
    with twin(peer_conn, dom, session_prefix) as there:
        try:
            body = policy(dom, every="2s", keep=1000)
            later = body.replace("  catch_up: true\n", "  catch_up: true\n  jitter: 1s\n")
            hosts = {"kvm-a": target.URI, "kvm-b": str(target.PEER_URI)}
            # kvm-b later in each slot: the tested host claims first.
            bodies = {"kvm-a": body, "kvm-b": later}
            daemons = list(
                start_fleet(tmp_path, database, hosts, "shared", bodies.__getitem__).values()
            )
            started = time.time()
            time.sleep(8)
            before_cut = (len(snapshots(dom)), len(_created(there)))
            link("down")
            try:
                time.sleep(25)  # the cut host's keepalive gives up within 15 s
                after_cut = len(_created(there))
            finally:
                link("up")
            time.sleep(6)
            codes = [d.stop() for d in daemons]
            stopped = time.time()
        finally:
            for d in daemons:
                d.close()
        import libvirt  # noqa: PLC0415 - only here

        fresh = libvirt.open(target.URI)  # the test's own connection did not live through the cut
        try:
            here = _created(fresh.lookupByUUIDString(dom.uuid))
        finally:
            fresh.close()
        peer = _created(there)
    assert codes == [0, 0]
    assert before_cut[0] >= 2  # the tested host took the slots before the cut
    assert after_cut >= before_cut[1] + 4  # the other host took them during the cut
    taken = len(here) + len(peer)
    slots = int((stopped - started) // 2) + 1
    assert taken <= slots + 1, (taken, slots)
    assert not set(here) & set(peer)
    live = rows(
        database, "SELECT name FROM snapshots WHERE domain_uuid = %s AND deleted_at IS NULL",
        dom.uuid,
    )  # fmt: skip
    assert {str(r[0]) for r in live} == set(here) | set(peer)
