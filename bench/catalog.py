#!/usr/bin/env python3
"""Benchmark 6 (issue 14): the shared catalog on PostgreSQL against SQLite.

1. Per snapshot.  One running domain (64 MiB, one 16 MiB qcow2 disk), external
   disk-only snapshots.  Rounds rotate through three sides on that domain:

     bare      dom.snapshotCreateXML(xml, flags) on a plain libvirt connection, with the
               XML and flags the daemon sent in its last round (only the name differs);
     sqlite    the daemon's job (bench/overhead.py's way: the key put due, the real
               _dispatch and worker, the JobDone awaited) with the SQLite catalog in its
               state directory;
     postgres  the same job of a second daemon whose snapshotd.yaml has ``catalog:`` on
               the test bed's PostgreSQL server (scripts/postgres.sh), over TCP on
               loopback with a password, in a database made for the run.

   Timed from the dispatch to the job's JobDone, which holds every catalog call a
   snapshot makes (the claim and run marker, the snapshot's record, the operations log,
   the run's end, retention's ownership reads, the domain lock); snapshotd's own time is
   that less the virDomainSnapshotCreateXML call itself (bench/overhead.py's probe), so
   libvirt's own spread drops out.  The catalog's cost per snapshot on PostgreSQL beyond
   SQLite's is the median, over the rounds, of postgres' own time less sqlite's (the rest
   of the job is the same code on the same domain).
   Each snapshot is removed again outside the timed region (metadata only).
   The floor beside it: after each bare call, one ``SELECT 1`` and one durable one-row
   INSERT on a connection of their own (the time of a round trip to the server right
   after a libvirt call, as the job's catalog calls come, with the CPUs gone idle).

2. 10,000 domains read from the catalog.  Both catalogs are filled with the same rows
   (10,000 domains, 24 snapshots each, loaded in bulk: COPY, one SQLite transaction; one
   run per domain through the catalog); then, timed: every live
   snapshot row and every run read through the Catalog interface, grouped per domain,
   and the core's plan and retention verdict for each domain (bench/core_scale.py's
   work) on what was read.

    .venv/bin/python bench/catalog.py             # 30 rounds, 10,000 domains
    .venv/bin/python bench/catalog.py --quick     # 5 rounds, 1,000 domains
    .venv/bin/python bench/catalog.py --json out.json

Target (issue 14): PostgreSQL at most 1 ms more per snapshot than SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import URI, load_average, machine, scratch, spread, table, write_json
from bench.overhead import Probe, TimedHypervisor, _drop
from snapshotd.adapters import logs
from snapshotd.catalog import Catalog, open_catalog
from snapshotd.catalog.api import Run, SnapshotRow
from snapshotd.catalog.postgres import connect
from snapshotd.config.settings import DatabaseSettings, Overrides
from snapshotd.core.model import DiskInfo, DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.retention import Candidate, Retention, evaluate
from snapshotd.core.snapxml import render_spec
from snapshotd.daemon.events import JobDone
from snapshotd.daemon.link import Link
from snapshotd.daemon.loop import Daemon
from snapshotd.daemon.runs import Due, Key
from tests.pgserver import fresh_database

KIND = 'memory: "no"\n  disks: external\n  disk_only: true'
PER_DOMAIN = 24
RETENTION = Retention(keep_last=24, hourly=48, daily=14, weekly=8, monthly=6)
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _daemon(root: Path, domain: str, database: DatabaseSettings | None) -> Daemon:
    policies = root / "policies"
    policies.mkdir(parents=True)
    (policies / "bench.yaml").write_text(
        "name: bench\n"
        f'domains:\n  include: ["{domain}"]\n  states: [running]\n'
        "schedule:\n  every: 1h\n"
        f"snapshot:\n  {KIND}\n"
        '  name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"\n',
        encoding="utf-8",
    )
    (policies / "bench.yaml").chmod(0o644)
    config = root / "snapshotd.yaml"
    text = f"connect: [{URI}]\n"
    if database is not None:
        text += (
            f'catalog:\n  url: "{database.url}"\n  password_file: {database.password_file}\n'
            "  host_id: bench\n"
        )
    config.write_text(text, encoding="utf-8")
    config.chmod(0o644)
    daemon = Daemon(Overrides(str(config), str(policies), str(root / "state")))
    if not daemon.reload(first=True) or daemon.status.load_errors:
        raise RuntimeError(f"policies not loaded: {daemon.status.load_errors}")
    return daemon


class Side:
    """One daemon of the comparison, wired to the benchmark's TimedHypervisor."""

    def __init__(self, daemon: Daemon, hv: TimedHypervisor, info: DomainInfo) -> None:
        self.daemon = daemon
        self.hv = hv
        link = Link(URI, daemon.events)
        link._hv = hv  # a connected Link without its thread: the jobs only read it
        daemon.links[URI] = link
        daemon.domains[URI] = [info]
        settings = daemon.settings
        assert settings is not None
        self.catalog = open_catalog(settings.state_dir, database=settings.catalog)
        self.policy = daemon.policies["bench"]
        self.info = info

    def job(self) -> tuple[float, float, str]:
        """One snapshot the daemon's way: seconds from the dispatch to JobDone, of them
        the seconds outside virDomainSnapshotCreateXML (snapshotd's own), and its name."""
        d = self.daemon
        key = Key(self.policy.name, URI, self.info.uuid)
        now = time.time()
        d.due[key] = Due(now, dt.datetime.fromtimestamp(int(now), dt.UTC), "bench")
        start = time.perf_counter()
        d._dispatch(self.catalog.runs, now)
        event = d.events.get(timeout=300)
        seconds = time.perf_counter() - start
        if not isinstance(event, JobDone) or event.outcome.kind != "ok":
            raise RuntimeError(f"the daemon's job did not succeed: {event}")
        d._finished(event.key, event.due, event.outcome)
        in_libvirt = self.hv.probe.returned - self.hv.probe.called
        return seconds, seconds - in_libvirt, self.catalog.operations(limit=1)[0].snapshot or ""


def per_snapshot(rounds: int, database: DatabaseSettings) -> dict[str, Any]:
    import libvirt  # noqa: PLC0415 - the benchmark's own plain connection

    with scratch("catalog") as factory:
        made = factory(suffix="c")
        hv = TimedHypervisor.open(URI)
        assert isinstance(hv, TimedHypervisor)
        hv.probe = Probe()
        info = next(d for d in hv.list_domains() if d.uuid == made.uuid)
        sides = {
            "sqlite": Side(_daemon(factory.root / "sqlite", made.name, None), hv, info),
            "postgres": Side(_daemon(factory.root / "pg", made.name, database), hv, info),
        }
        conn = libvirt.open(URI)
        dom = conn.lookupByName(made.name)
        probe = connect(database)
        probe.execute("CREATE TABLE bench_probe (n integer)")
        trips: dict[str, list[float]] = {"select": [], "durable": []}
        times: dict[str, list[float]] = {"bare": [], "sqlite": [], "postgres": []}
        own: dict[str, list[float]] = {"sqlite": [], "postgres": []}
        counter = 0
        try:
            for side in sides.values():  # warm-up, untimed
                _drop(dom, side.job()[2], "external")
            order = ["bare", "sqlite", "postgres"]
            for r in range(rounds):
                for name in order[r % 3 :] + order[: r % 3]:
                    if name == "bare":
                        assert hv.probe.sent is not None
                        xml, flags = hv.probe.sent
                        counter += 1
                        snap = f"bare-{counter:05d}"
                        xml = xml.replace(_name_in(xml), snap)
                        start = time.perf_counter()
                        dom.snapshotCreateXML(xml, flags)
                        times["bare"].append(time.perf_counter() - start)
                        # The floor: one round trip to the server right after a libvirt
                        # call (as the job's catalog calls come), and one durable commit.
                        for kind, statement in (
                            ("select", "SELECT 1"),
                            ("durable", "INSERT INTO bench_probe VALUES (1)"),
                        ):
                            start = time.perf_counter()
                            probe.execute(statement)
                            trips[kind].append(time.perf_counter() - start)
                    else:
                        seconds, outside, snap = sides[name].job()
                        times[name].append(seconds)
                        own[name].append(outside)
                    _drop(dom, snap, "external")
        finally:
            for side in sides.values():
                side.catalog.close()
            probe.close()
            conn.close()
            hv.close()
    extra = [p - s for p, s in zip(own["postgres"], own["sqlite"], strict=True)]
    return {
        "bare_s": spread(times["bare"]).as_dict(),
        "sqlite_job_s": spread(times["sqlite"]).as_dict(),
        "postgres_job_s": spread(times["postgres"]).as_dict(),
        "sqlite_own_s": spread(own["sqlite"]).as_dict(),
        "postgres_own_s": spread(own["postgres"]).as_dict(),
        "postgres_minus_sqlite_s": spread(extra).as_dict(),
        "round_trip_s": spread(trips["select"]).as_dict(),
        "durable_commit_s": spread(trips["durable"]).as_dict(),
    }


def _name_in(xml: str) -> str:
    start = xml.index("<name>") + len("<name>")
    return xml[start : xml.index("</name>", start)]


def _rows(domains: int) -> Iterator[tuple[object, ...]]:
    """The snapshot rows at scale, in the catalog's column order (see _fill)."""
    for i in range(domains):
        uuid = f"00000000-0000-4000-8000-{i:012d}"
        for h in range(PER_DOMAIN):
            created = int((NOW - dt.timedelta(hours=h, minutes=i % 60)).timestamp())
            name = f"hourly-{h:04d}"
            yield (
                URI, uuid, f"vm{i:06d}", name, created, "hourly", None,
                f"<domainsnapshot><name>{name}</name></domainsnapshot>",
                json.dumps([f"/var/lib/libvirt/images/vm{i:06d}.{name}.qcow2"]), 1, "bench",
            )  # fmt: skip


def _fill(catalog: Catalog, domains: int, load: Callable[[int], None]) -> None:
    """The rows at scale, loaded in bulk by the database's own means (``load``: COPY or
    one transaction; filling is not what is timed), and one run per domain through the
    catalog (a few thousand writes)."""
    load(domains)
    for i in range(domains):
        uuid = f"00000000-0000-4000-8000-{i:012d}"
        catalog.runs.start(Run("hourly", uuid, URI, f"vm{i:06d}"), "x", 1, 1)
        catalog.runs.finish("hourly", uuid, slot=1, error=None, now=2)


def _sqlite_loader(path: Path) -> Callable[[int], None]:
    def load(domains: int) -> None:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.executemany(
                """INSERT INTO snapshots (uri, domain_uuid, domain_name, name, created_at,
                       policy, parent, xml, files, libvirt_metadata, host_id)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                _rows(domains),
            )

    return load


def _postgres_loader(database: DatabaseSettings) -> Callable[[int], None]:
    def load(domains: int) -> None:
        password = Path(database.password_file or "").read_text().strip()
        with (
            psycopg.connect(database.url, password=password) as db,
            db.cursor() as cur,
            cur.copy(
                """COPY snapshots (uri, domain_uuid, domain_name, name, created_at, policy,
                       parent, xml, files, libvirt_metadata, host_id) FROM STDIN"""
            ) as copy,
        ):
            for row in _rows(domains):
                copy.write_row(row)

    return load


def at_scale(catalog: Catalog, domains: int) -> dict[str, float]:
    """Read everything a pass needs from ``catalog``, then the core's work on it."""
    start = time.perf_counter()
    rows = catalog.snapshots()
    runs = catalog.runs.all()
    read = time.perf_counter()
    by_domain: dict[str, list[SnapshotRow]] = {}
    for row in rows:
        by_domain.setdefault(row.domain_uuid, []).append(row)
    request = SnapshotRequest(name="hourly-20261203T120000Z", memory=Request.NO)
    deleted = 0
    for run in runs:
        info = DomainInfo(
            name=run.domain_name,
            uuid=run.domain_uuid,
            state=DomainState.RUNNING,
            disks=(DiskInfo("vda", format="qcow2", path=f"/images/{run.domain_name}.qcow2"),),
        )
        render_spec(plan_snapshot(info, request).spec)
        candidates = [
            Candidate(r.name, dt.datetime.fromtimestamp(r.created_at, dt.UTC), True)
            for r in by_domain.get(run.domain_uuid, [])
        ]
        deleted += sum(1 for v in evaluate(RETENTION, candidates, NOW, "UTC") if not v.keep)
    done = time.perf_counter()
    if len(runs) != domains or len(rows) != domains * PER_DOMAIN:
        raise RuntimeError(f"read {len(runs)} runs and {len(rows)} rows")
    return {
        "read_s": round(read - start, 3),
        "plan_and_retention_s": round(done - read, 3),
        "total_s": round(done - start, 3),
        "to_delete": deleted,
    }


def scale(domains: int, database: DatabaseSettings, directory: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with open_catalog(str(directory)) as lite, open_catalog("", database=database) as pg:
        loaders = {
            "sqlite": (lite, _sqlite_loader(directory / "catalog.sqlite")),
            "postgres": (pg, _postgres_loader(database)),
        }
        for name, (catalog, load) in loaders.items():
            started = time.perf_counter()
            _fill(catalog, domains, load)
            filled = round(time.perf_counter() - started, 1)
            found[name] = {**at_scale(catalog, domains), "filled_in_s": filled}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the three sides")
    parser.add_argument("--domains", type=int, default=10_000, help="domains at scale")
    parser.add_argument("--quick", action="store_true", help="5 rounds, 1,000 domains")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    rounds, domains = (5, 1000) if args.quick else (args.rounds, args.domains)
    logs.setup(journal=False, stream=open("/dev/null", "w", encoding="utf-8"))  # noqa: SIM115, PTH123 - lives as long as the process
    started = time.monotonic()
    loads = [load_average()]
    with fresh_database(host_id="bench") as one, fresh_database(host_id="bench") as two:
        snap = per_snapshot(rounds, one)
        loads.append(load_average())
        with scratch("catalog-scale") as factory:
            at = scale(domains, two, factory.root / "sqlite")
        loads.append(load_average())
    data = {
        "benchmark": "catalog",
        "rounds": rounds,
        "domains": domains,
        "per_domain": PER_DOMAIN,
        "per_snapshot": snap,
        "at_scale": at,
        "load": loads,
        "machine": machine(),
        "seconds": round(time.monotonic() - started, 1),
    }

    def ms(s: dict[str, float], key: str = "median") -> str:
        return f"{s[key] * 1000:.2f}"

    extra = snap["postgres_minus_sqlite_s"]
    headers = [
        "bare libvirt (ms)",
        "job, SQLite (ms)",
        "job, PostgreSQL (ms)",
        "own, SQLite (ms)",
        "own, PostgreSQL (ms)",
        "PostgreSQL - SQLite (ms, q1..q3)",
        "one round trip (ms)",
        "one durable commit (ms)",
    ]
    cells = [
        ms(snap["bare_s"]),
        ms(snap["sqlite_job_s"]),
        ms(snap["postgres_job_s"]),
        ms(snap["sqlite_own_s"]),
        ms(snap["postgres_own_s"]),
        f"{ms(extra)} ({ms(extra, 'q1')}..{ms(extra, 'q3')})",
        ms(snap["round_trip_s"]),
        ms(snap["durable_commit_s"]),
    ]
    print(table(headers, [cells]))
    print()
    scale_rows = [
        [name, domains, domains * PER_DOMAIN, r["read_s"], r["plan_and_retention_s"], r["total_s"]]
        for name, r in at.items()
    ]
    headers = ["catalog", "domains", "rows", "read (s)", "plan + retention (s)", "total (s)"]
    print(table(headers, scale_rows))
    print(f"\nload: {' -> '.join(loads)}; {data['seconds']} s")
    write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
