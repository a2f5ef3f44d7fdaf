"""A consistency group's pause window, against one member's snapshot and against the
members done one after another, all measured in the same run.

For each group size (2, 4, 8 running domains by default), each round measures:

* single: one member alone, as bare libvirt calls: suspend, the disk-only external
  create, resume; the time of the create call (the least a group's window can be);
* group: snapshotd's GroupRun over every member (actions/grouprun.py, a real SQLite
  catalog in a scratch state directory): its pause window, first suspend to last
  resume, as the run measures it;
* sequential: the members one after another as bare calls (suspend A, create A,
  resume A, then B, ...): the window from the first suspend to the last resume, which
  is what holding them "together" costs without parallel calls.

The target (issue 13): the group's window at most 1.3 times one member's snapshot time
at 8 members.  Run as root: it makes real QEMU domains at qemu:///system and removes
them at the end (bench/common.py's scratch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from common import (  # type: ignore[import-not-found]
    URI,
    load_average,
    machine,
    ratio,
    scratch,
    spread,
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


def _single(job: Any) -> float:
    dom, xml, flags = job
    dom.suspend()
    try:
        start = time.perf_counter()
        dom.snapshotCreateXML(xml, flags)
        return time.perf_counter() - start
    finally:
        dom.resume()


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
    for size in sizes:
        with scratch(f"group{size}") as factory:
            names = [factory(suffix=f"g{i:02d}").name for i in range(size)]
            conn = libvirt.open(URI)
            hv = Hypervisor.open(URI)
            policy = _policy(factory.prefix, str(factory.root / "snaps"))
            singles, groups, sequential = [], [], []
            try:
                with open_catalog(str(factory.root / "state")) as catalog:
                    for r in range(rounds):
                        singles.append(_single(_bare(conn, hv, policy, names[:1], f"one{r}")[0]))
                        members = [(hv, hv.domain(n)) for n in names]
                        result = GroupRun(policy, members, dt.datetime.now(dt.UTC)).execute(catalog)
                        if result.outcome is not GroupOutcome.CREATED or result.pause is None:
                            raise RuntimeError(f"the group run failed: {result.error}")
                        groups.append(result.pause)
                        sequential.append(_sequential(_bare(conn, hv, policy, names, f"seq{r}")))
            finally:
                hv.close()
                conn.close()
        one, group, seq = spread(singles), spread(groups), spread(sequential)
        results["sizes"][str(size)] = {
            "single_s": one.as_dict(),
            "group_window_s": group.as_dict(),
            "sequential_window_s": seq.as_dict(),
            "group_over_single": ratio(group.median, one.median),
            "sequential_over_group": ratio(seq.median, group.median),
            "rounds": rounds,
        }
        results["load"].append(load_average())
        print(
            f"{size} members: single {singles} group {groups} sequential {sequential}",
            file=sys.stderr,
        )
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
                _ms(group),
                _ms(seq),
                f"{r['group_over_single']:.2f}",
                f"{r['sequential_over_group']:.2f}",
                r["rounds"],
            ]
        )
    headers = [
        "members",
        "one member's create ms (min..max)",
        "group window ms (min..max)",
        "one after another ms (min..max)",
        "group / one",
        "one after another / group",
        "rounds",
    ]
    print(table(headers, rows))
    print(f"load average during the run: {', '.join(data['load'])}; {data['seconds']} s")
    write_json(args.json, data)
    return 0


def _ms(sample: dict[str, float]) -> str:
    return f"{sample['median'] * 1000:.1f} ({sample['min'] * 1000:.1f}..{sample['max'] * 1000:.1f})"


if __name__ == "__main__":
    sys.exit(main())
