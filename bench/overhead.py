#!/usr/bin/env python3
"""Benchmark 1 of issue 7: snapshotd's overhead per snapshot, against bare libvirt.

Two running domains (64 MiB, one 16 MiB qcow2 disk each), one per snapshot kind:
external disk-only, and internal with memory.  Rounds alternate, on the same domain:

  bare       dom.snapshotCreateXML(xml, flags) on a plain libvirt connection, with the
             XML and flags snapshotd sent in its previous round (only the name differs);
  snapshotd  the daemon's own path: the key is put in Daemon.due as due now, the real
             Daemon._dispatch starts the real worker (daemon/jobs.py's Worker: catalog
             runs record, hooks, plan, name check, schema check, files, libvirt, catalog
             records, retention), and the loop's JobDone event is awaited.

Timed for snapshotd: from _dispatch (the daemon has decided the snapshot is due) to
snapshotCreateXML returning (Hypervisor._create_call, which is that call alone, takes
the time), and to the job's JobDone event (everything the job does after libvirt returned).
Pairs run AB, BA, AB, ... so drift and the growing chain hit both alike.  Between rounds,
outside the timed region, each snapshot is deleted (internal: for real, so the qcow2's
snapshot table stays the same size; external: metadata only, the overlay stays in the
chain, which grows by one per round for both sides).

    .venv/bin/python bench/overhead.py                 # 30 pairs per kind
    .venv/bin/python bench/overhead.py --quick         # smoke run, well under a minute
    .venv/bin/python bench/overhead.py --json out.json

Target (issue 7): median overhead under 2 ms and a ratio of at most 1.05.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import URI, load_average, machine, ratio, scratch, spread, table, write_json
from snapshotd.adapters import logs
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import open_catalog
from snapshotd.config.settings import Overrides
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Policy
from snapshotd.daemon.events import JobDone
from snapshotd.daemon.link import Link
from snapshotd.daemon.loop import Daemon
from snapshotd.daemon.runs import Due, Key

KINDS = {
    "external disk-only": 'memory: "no"\n  disks: external\n  disk_only: true',
    "internal": "memory: internal",
}


@dataclass
class Probe:
    called: float = 0.0
    returned: float = 0.0
    sent: tuple[str, int] | None = None


class TimedHypervisor(Hypervisor):
    """snapshotd's Hypervisor, unchanged but for a clock around the libvirt call itself
    (``_create_call`` is virDomainSnapshotCreateXML and nothing else)."""

    probe: Probe

    def _create_call(self, dom: Any, xml: str, flags: int) -> Any:
        self.probe.called = time.perf_counter()
        snapshot = super()._create_call(dom, xml, flags)
        self.probe.returned = time.perf_counter()
        self.probe.sent = (xml, flags)
        return snapshot


@dataclass
class Sample:
    bare: list[float] = field(default_factory=list)
    to_libvirt: list[float] = field(default_factory=list)
    before_call: list[float] = field(default_factory=list)  # decision -> the call is made
    whole_job: list[float] = field(default_factory=list)


def _write_policies(root: Path, domains: dict[str, str]) -> Overrides:
    policies = root / "policies"
    policies.mkdir(parents=True)
    for i, (kind, domain) in enumerate(domains.items()):
        text = (
            f"name: bench-{i}\n"
            f'domains:\n  include: ["{domain}"]\n  states: [running]\n'
            "schedule:\n  every: 1h\n"
            f"snapshot:\n  {KINDS[kind]}\n"
            '  name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"\n'
        )
        (policies / f"bench-{i}.yaml").write_text(text, encoding="utf-8")
        (policies / f"bench-{i}.yaml").chmod(0o644)
    config = root / "snapshotd.yaml"
    config.write_text(f"connect: [{URI}]\n", encoding="utf-8")
    config.chmod(0o644)
    return Overrides(str(config), str(policies), str(root / "state"))


class Bench:
    def __init__(self, daemon: Daemon, hv: TimedHypervisor, bare_conn: Any) -> None:
        self.daemon = daemon
        self.hv = hv
        self.bare_conn = bare_conn
        self.catalog = open_catalog(daemon.settings.state_dir if daemon.settings else "")
        self.runs = self.catalog.runs
        self.counter = 0

    def snapshotd(self, policy: Policy, domain: DomainInfo) -> tuple[float, float, float, str]:
        """One snapshot the daemon's way, in seconds from the decision: until the
        libvirt call is made, until it returned, until the job is done; and its name."""
        d = self.daemon
        key = Key(policy.name, URI, domain.uuid)
        now = time.time()
        d.due[key] = Due(now, dt.datetime.fromtimestamp(int(now), dt.UTC), "bench")
        self.hv.probe.returned = 0.0
        start = time.perf_counter()
        d._dispatch(self.runs, now)
        event = d.events.get(timeout=300)
        end = time.perf_counter()
        if not isinstance(event, JobDone) or event.outcome.kind != "ok":
            raise RuntimeError(f"the daemon's job did not succeed: {event}")
        d._finished(event.key, event.due, event.outcome)
        if self.hv.probe.returned == 0.0:
            raise RuntimeError("libvirt's return was not seen")
        row = self.runs.get(policy.name, domain.uuid)
        name = self.catalog.operations(limit=1)[0].snapshot or ""
        if row is None or row.in_progress is not None:
            raise RuntimeError("the job left its run unfinished")
        probe = self.hv.probe
        return probe.called - start, probe.returned - start, end - start, name

    def bare(self, dom: Any, xml: str, flags: int) -> tuple[float, str]:
        self.counter += 1
        name = f"bare-{self.counter:05d}"
        found = re.search(r"<name>([^<]*)</name>", xml)
        if found is None:
            raise RuntimeError(f"no <name> in the snapshot XML: {xml}")
        xml = xml.replace(found.group(1), name)  # the name, and overlay files named after it
        start = time.perf_counter()
        dom.snapshotCreateXML(xml, flags)
        return time.perf_counter() - start, name


def _drop(dom: Any, name: str, kind: str) -> None:
    """Delete a benchmark snapshot outside the timed region (see the module's docstring)."""
    import libvirt  # noqa: PLC0415 - the benchmark's own plain connection

    snapshot = dom.snapshotLookupByName(name, 0)
    flags = 0 if kind == "internal" else libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
    snapshot.delete(flags)


def run(rounds: int) -> dict[str, Any]:
    import libvirt  # noqa: PLC0415 - the benchmark's own plain connection

    loads = [load_average()]
    results: dict[str, Any] = {}
    with scratch("overhead") as factory:
        made = {kind: factory(suffix=f"k{i}") for i, kind in enumerate(KINDS)}
        paths = _write_policies(factory.root / "daemon", {k: m.name for k, m in made.items()})
        logs.setup(journal=False, stream=open("/dev/null", "w", encoding="utf-8"))  # noqa: SIM115, PTH123 - lives as long as the process
        daemon = Daemon(paths)
        if not daemon.reload(first=True) or daemon.status.load_errors:
            raise RuntimeError(f"policies not loaded: {daemon.status.load_errors}")
        hv = TimedHypervisor.open(URI)
        assert isinstance(hv, TimedHypervisor)  # open() makes its own class
        hv.probe = Probe()
        link = Link(URI, daemon.events)
        link._hv = hv  # a connected Link without its thread: the jobs only read it
        daemon.links[URI] = link
        ours = {m.uuid for m in made.values()}
        daemon.domains[URI] = [d for d in hv.list_domains() if d.uuid in ours]
        bare_conn = libvirt.open(URI)
        bench = Bench(daemon, hv, bare_conn)
        try:
            for i, (kind, scratch_domain) in enumerate(made.items()):
                policy = daemon.policies[f"bench-{i}"]
                info = next(d for d in daemon.domains[URI] if d.uuid == scratch_domain.uuid)
                dom = bare_conn.lookupByName(scratch_domain.name)
                sample = Sample()
                # Warm-up, untimed: one of each (caches, the first catalog write).
                *_, name = bench.snapshotd(policy, info)
                _drop(dom, name, kind)
                assert hv.probe.sent is not None
                _, name = bench.bare(dom, *hv.probe.sent)
                _drop(dom, name, kind)
                for pair in range(rounds):
                    for side in "ab" if pair % 2 == 0 else "ba":
                        if side == "a":
                            xml, flags = hv.probe.sent
                            seconds, name = bench.bare(dom, xml, flags)
                            sample.bare.append(seconds)
                        else:
                            before, to_libvirt, whole, name = bench.snapshotd(policy, info)
                            sample.before_call.append(before)
                            sample.to_libvirt.append(to_libvirt)
                            sample.whole_job.append(whole)
                        _drop(dom, name, kind)
                loads.append(load_average())
                results[kind] = _summary(sample)
        finally:
            bench.catalog.close()
            bare_conn.close()
            hv.close()
    return {"benchmark": "overhead", "rounds": rounds, "load": loads, "kinds": results}


def _summary(sample: Sample) -> dict[str, Any]:
    bare = spread(sample.bare)
    mine = spread(sample.to_libvirt)
    whole = spread(sample.whole_job)
    # Overhead per pair: each pair's snapshotd time less its bare time.
    overheads = [m - b for m, b in zip(sample.to_libvirt, sample.bare, strict=True)]
    return {
        "bare_s": bare.as_dict(),
        "snapshotd_to_libvirt_s": mine.as_dict(),
        "snapshotd_whole_job_s": whole.as_dict(),
        "overhead_s": spread(overheads).as_dict(),
        "before_call_s": spread(sample.before_call).as_dict(),
        "ratio": ratio(mine.median, bare.median),
        "ratio_whole_job": ratio(whole.median, bare.median),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="AB pairs per kind (30)")
    parser.add_argument("--quick", action="store_true", help="5 pairs per kind: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    started = time.monotonic()
    data = run(rounds)
    data["machine"] = machine()
    data["seconds"] = round(time.monotonic() - started, 1)
    rows = []
    for kind, r in data["kinds"].items():
        o, c = r["overhead_s"], r["before_call_s"]
        rows.append(
            [
                kind,
                _ms(r["bare_s"]["median"]),
                _ms(r["snapshotd_to_libvirt_s"]["median"]),
                f"{_ms(o['median'])} ({_ms(o['q1'])}..{_ms(o['q3'])})",
                f"{_ms(c['median'])} ({_ms(c['q1'])}..{_ms(c['q3'])})",
                f"{r['ratio']:.3f}",
                _ms(r["snapshotd_whole_job_s"]["median"]),
                f"{r['ratio_whole_job']:.3f}",
                r["bare_s"]["n"],
            ]
        )
    headers = [
        "kind",
        "bare ms",
        "snapshotd ms",
        "overhead ms (IQR)",
        "before the call ms (IQR)",
        "ratio",
        "whole job ms",
        "job ratio",
        "pairs",
    ]
    print(table(headers, rows))
    print(f"load average (1 5 15 min) per phase: {' | '.join(data['load'])}")
    print(f"took {data['seconds']} s")
    write_json(args.json, data)
    return 0


if __name__ == "__main__":
    logging.getLogger("snapshotd").setLevel(logging.INFO)
    sys.exit(main())
