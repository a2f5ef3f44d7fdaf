#!/usr/bin/env python3
"""Benchmark 3 of issue 7: the pure core at scale.

For N domains with 200 snapshots each, the work a scheduling pass does in the pure
core: one plan (state table, disks, files, flags, XML) per domain and one retention
verdict per domain.  No libvirt: domains and snapshot histories are made in memory,
the way a fake hypervisor would hand them over.  Each size runs in a fresh process,
so its peak RSS is its own.

    .venv/bin/python bench/core_scale.py              # 1k, 10k, 50k domains
    .venv/bin/python bench/core_scale.py 2000 --json  # one size, machine-readable

Targets (issue 7): 10,000 domains x 200 snapshots under 2 s of CPU and 500 MB peak
memory, growing linearly.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapshotd.core.model import DiskInfo, DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.retention import Candidate, Retention, evaluate
from snapshotd.core.snapxml import render_spec

SNAPSHOTS = 200
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
RETENTION = Retention(keep_last=24, hourly=48, daily=14, weekly=8, monthly=6)


def measure(domains: int) -> dict[str, float]:
    """Build the inputs, then time the core's work on them (CPU seconds)."""
    infos = [
        DomainInfo(
            name=f"vm{i:06d}",
            uuid=f"00000000-0000-4000-8000-{i:012d}",
            state=DomainState.RUNNING if i % 3 else DomainState.SHUTOFF,
            disks=(
                DiskInfo("vda", format="qcow2", path=f"/var/lib/libvirt/images/vm{i:06d}.qcow2"),
            ),
        )
        for i in range(domains)
    ]
    history = [
        [
            Candidate(f"hourly-{h:04d}", NOW - dt.timedelta(hours=h, minutes=i % 60), True)
            for h in range(SNAPSHOTS)
        ]
        for i in range(domains)
    ]
    request = SnapshotRequest(name="hourly-20261125T120000Z", memory=Request.NO)
    start = time.process_time()
    for info in infos:
        render_spec(plan_snapshot(info, request).spec)
    planned = time.process_time()
    deleted = 0
    for candidates in history:
        deleted += sum(1 for v in evaluate(RETENTION, candidates, NOW, "UTC") if not v.keep)
    done = time.process_time()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "domains": domains,
        "snapshots": domains * SNAPSHOTS,
        "plan_cpu_s": round(planned - start, 3),
        "retention_cpu_s": round(done - planned, 3),
        "total_cpu_s": round(done - start, 3),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "to_delete": deleted,
    }


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--json"]
    if args:
        result = measure(int(args[0]))
        print(json.dumps(result) if "--json" in sys.argv else result)
        return 0
    rows = []
    for size in (1_000, 10_000, 50_000):
        out = subprocess.run(
            [sys.executable, __file__, str(size), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows.append(json.loads(out))
    print(
        f"{'domains':>8} {'snapshots':>11} {'plan s':>8} {'retention s':>12} "
        f"{'total CPU s':>12} {'per domain ms':>14} {'peak RSS MB':>12}"
    )
    for r in rows:
        per = r["total_cpu_s"] / r["domains"] * 1000
        print(
            f"{r['domains']:>8} {r['snapshots']:>11} {r['plan_cpu_s']:>8} "
            f"{r['retention_cpu_s']:>12} {r['total_cpu_s']:>12} {per:>14.3f} "
            f"{r['peak_rss_mb']:>12}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
