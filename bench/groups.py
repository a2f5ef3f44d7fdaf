"""A consistency group's pause window, against one member's snapshot and against the
members done one after another, all measured in the same run.

For each group size (2, 4, 8 running domains by default), each round measures:

* single: one member alone, as bare libvirt calls: suspend, the disk-only external
  create, resume; the time of the create call (the least a group's window can be),
  the time from suspend to resume (one member's pause), and the CPU time every process
  on the machine spent during the create (libvirtd's, QEMU's, the kernel's);
* group: snapshotd's GroupRun over every member (actions/grouprun.py, a real SQLite
  catalog in a scratch state directory): its pause window, first suspend to last
  resume, as the run measures it;
* sequential: the members one after another as bare calls (suspend A, create A,
  resume A, then B, ...): the window from the first suspend to the last resume, which
  is what holding them "together" costs without parallel calls.

The target (issue 13): the group's window at most 1.3 times one member's snapshot time
at 8 members.  Creates are CPU work in libvirtd and QEMU: the table's CPU floor is the
least time ``size`` creates can take on this machine's CPUs if each costs what one
alone did, and the share of the CPUs busy during the group run says how close to it
the run is.  The guests are left to settle first (their firmware looks for something
to boot for about half a minute, keeping the CPUs busy): the figures are of idle
running guests, as on a host between snapshots.  On a virtual machine, the share of
CPU time its host took for others during the run is reported too (steal).  Run as
root: it makes real QEMU domains at qemu:///system and removes them at the end
(bench/common.py's scratch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import (  # type: ignore[import-not-found]
    URI,
    busy_seconds,
    cpu_ticks,
    load_average,
    machine,
    ratio,
    scratch,
    settle,
    spread,
    stolen_fraction,
    table,
    write_json,
)

from snapshotd.actions.grouprun import GroupOutcome, GroupRun
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import open_catalog
from snapshotd.config.load import parse_policy
from snapshotd.core.group import Consistency, taken_as
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.policy import Policy
from snapshotd.core.snapxml import render_spec

CPUS = os.cpu_count() or 1

POLICY = """name: bench-group
domains: {{include: ["{prefix}*"]}}
group: {{max_pause: 60s}}
schedule: {{every: 1h}}
snapshot:
  disk_only: true
  disks: external
  directory: "{directory}/{{domain}}"
  name: "{{policy}}-{{time:%Y%m%dT%H%M%S%fZ}}"
"""


def _policy(prefix: str, directory: str) -> Policy:
    parsed = parse_policy(POLICY.format(prefix=prefix, directory=directory), "bench.yaml")
    if isinstance(parsed, list):
        raise RuntimeError(f"the benchmark's policy is invalid: {parsed}")
    return parsed


def _bare(conn: Any, hv: Hypervisor, policy: Policy, names: list[str], tag: str) -> list[Any]:
    """(virDomain, XML, flags) of each member's snapshot as a paused domain, by hand."""
    now = dt.datetime.now(dt.UTC)
    jobs = []
    for name in names:
        info = hv.domain(name)
        request = policy.request(info, now, quiesce=False)
        spec = plan_snapshot(taken_as(Consistency.CRASH, info), request).spec
        for made in spec.new_files:  # as snapshotd's own run makes them
            Path(made).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        xml = render_spec(spec).replace(spec.name, f"{tag}-{spec.name}")
        jobs.append((conn.lookupByName(name), xml, int(spec.flags)))
    return jobs


def _single(job: Any) -> tuple[float, float, float]:
    """One member alone: (its create's time, suspend to resume, the CPU seconds every
    process on the machine spent during the create)."""
    dom, xml, flags = job
    held = time.perf_counter()
    dom.suspend()
    try:
        ticks, start = cpu_ticks(), time.perf_counter()
        dom.snapshotCreateXML(xml, flags)
        create, cpu = time.perf_counter() - start, busy_seconds(ticks, cpu_ticks())
    finally:
        dom.resume()
    return create, time.perf_counter() - held, cpu


def _sequential(jobs: list[Any]) -> float:
    start = time.perf_counter()
    for dom, xml, flags in jobs:
        dom.suspend()
        try:
            dom.snapshotCreateXML(xml, flags)
        finally:
            dom.resume()
    return time.perf_counter() - start


def run(sizes: list[int], rounds: int) -> dict[str, Any]:
    import libvirt  # noqa: PLC0415 - the bare calls' own plain connection

    results: dict[str, Any] = {"sizes": {}, "load": [load_average()]}
    ticks = cpu_ticks()
    for size in sizes:
        with scratch(f"group{size}") as factory:
            names = [factory(suffix=f"g{i:02d}").name for i in range(size)]
            busy = settle()  # idle running guests, as on a host between snapshots
            conn = libvirt.open(URI)
            hv = Hypervisor.open(URI)
            policy = _policy(factory.prefix, str(factory.root / "snaps"))
            singles: list[float] = []
            single_pauses: list[float] = []
            single_cpu: list[float] = []
            groups: list[float] = []
            group_busy: list[float] = []
            group_stolen: list[float] = []
            sequential: list[float] = []
            try:
                with open_catalog(str(factory.root / "state")) as catalog:
                    for r in range(rounds):
                        one = _single(_bare(conn, hv, policy, names[:1], f"one{r}")[0])
                        singles.append(one[0])
                        single_pauses.append(one[1])
                        single_cpu.append(one[2])
                        members = [(hv, hv.domain(n)) for n in names]
                        before, start = cpu_ticks(), time.perf_counter()
                        result = GroupRun(policy, members, dt.datetime.now(dt.UTC)).execute(catalog)
                        after, wall = cpu_ticks(), time.perf_counter() - start
                        cpu = busy_seconds(before, after)
                        group_stolen.append(stolen_fraction(before, after))
                        if result.outcome is not GroupOutcome.CREATED or result.pause is None:
                            raise RuntimeError(f"the group run failed: {result.error}")
                        groups.append(result.pause)
                        group_busy.append(cpu / (wall * CPUS))
                        sequential.append(_sequential(_bare(conn, hv, policy, names, f"seq{r}")))
            finally:
                hv.close()
                conn.close()
        one, group, seq = spread(singles), spread(groups), spread(sequential)
        cpu_one = spread(single_cpu).median
        results["sizes"][str(size)] = {
            "single_s": one.as_dict(),
            "single_pause_s": spread(single_pauses).as_dict(),
            "single_cpu_s": cpu_one,
            # The least time size creates can take on this machine's CPUs, if each
            # costs what one alone did.
            "cpu_floor_s": size * cpu_one / CPUS,
            "group_busy_share": spread(group_busy).median,
            "group_stolen_share": spread(group_stolen).median,
            "group_over_single_pause": ratio(group.median, spread(single_pauses).median),
            "group_window_s": group.as_dict(),
            "sequential_window_s": seq.as_dict(),
            "group_over_single": ratio(group.median, one.median),
            "sequential_over_group": ratio(seq.median, group.median),
            "rounds": rounds,
            "busy_before": round(busy, 3),
        }
        results["load"].append(load_average())
        print(
            f"{size} members: single {singles} group {groups} sequential {sequential}",
            file=sys.stderr,
        )
    results["stolen_share"] = stolen_fraction(ticks, cpu_ticks())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per group size (10)")
    parser.add_argument("--sizes", default="2,4,8", help="group sizes, comma-separated (2,4,8)")
    parser.add_argument("--quick", action="store_true", help="sizes 2 and 4, 2 rounds")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    sizes = [2, 4] if args.quick else [int(n) for n in args.sizes.split(",")]
    rounds = 2 if args.quick else args.rounds
    started = time.monotonic()
    data = run(sizes, rounds)
    data.update(machine=machine())
    data["seconds"] = round(time.monotonic() - started, 1)
    rows = []
    for size, r in data["sizes"].items():
        one, group, seq = r["single_s"], r["group_window_s"], r["sequential_window_s"]
        rows.append(
            [
                size,
                _ms(one),
                _ms(r["single_pause_s"]),
                _ms(group),
                _ms(seq),
                f"{r['group_over_single']:.2f}",
                f"{r['group_over_single_pause']:.2f}",
                f"{r['sequential_over_group']:.2f}",
                f"{r['cpu_floor_s'] * 1000:.0f}",
                f"{r['group_busy_share'] * 100:.0f} %",
                f"{r['group_stolen_share'] * 100:.0f} %",
                r["rounds"],
            ]
        )
    headers = [
        "members",
        "one member's create ms (min..max)",
        "one member's pause ms",
        "group window ms (min..max)",
        "one after another ms (min..max)",
        "group / one create",
        "group / one pause",
        "one after another / group",
        f"CPU floor ms ({CPUS} CPUs)",
        "CPUs busy in the group run",
        "CPU time stolen in it",
        "rounds",
    ]
    print(table(headers, rows))
    print(
        f"load average during the run: {', '.join(data['load'])}; CPU time stolen by this "
        f"machine's host: {data['stolen_share'] * 100:.0f} %; {data['seconds']} s"
    )
    write_json(args.json, data)
    return 0


def _ms(sample: dict[str, float]) -> str:
    return f"{sample['median'] * 1000:.1f} ({sample['min'] * 1000:.1f}..{sample['max'] * 1000:.1f})"


if __name__ == "__main__":
    sys.exit(main())
