#!/usr/bin/env python3
"""Benchmark 2 of issue 7: a fleet of domains due at the same instant.

50 running domains (64 MiB, KVM, one 16 MiB qcow2 disk each) and one policy that
selects them all and takes external disk-only snapshots (memory "no", disks external,
disk_only) on an interval, without jitter, so every domain is due at the same slot.
For each worker limit N (1, 2, 4, 8):

  snapshotd  the real daemon: ``python -m snapshotd run`` in its own process with
             ``workers: N`` in its config and a fresh state directory.  Timed from the
             slot (the instant all 50 become due; the daemon's sleep ends then) until
             the catalog holds all 50 snapshots of that slot (polled every 2 ms from
             this process; a row is written right after libvirt returns);
  baseline   concurrent.futures.ThreadPoolExecutor(max_workers=N) on one plain libvirt
             connection, each task one dom.snapshotCreateXML(xml, flags), with the XML
             and flags snapshotd's planner makes for that domain (built, and domains
             looked up, before the clock starts).  Timed from the first submit until the
             last call returned.

Each round is one slot for the daemon, then the baseline right after it; the policy's
interval leaves room for both.  The domains are made once for the whole benchmark;
each snapshot adds one overlay to a domain's chain, on both sides alike.

    .venv/bin/python bench/fleet.py                    # 50 domains, 3 rounds per limit, ~11 min
    .venv/bin/python bench/fleet.py --quick            # 6 domains, limits 1 and 2, 1 round
    .venv/bin/python bench/fleet.py --json out.json

Target (issue 7): at least 0.95 of the baseline's throughput at every limit.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    REPO,
    URI,
    load_average,
    machine,
    ratio,
    scratch,
    spread,
    table,
    write_json,
)
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.config.load import parse_policy
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.snapxml import render_spec

POLICY = """name: bench-fleet
domains:
  include: ["{prefix}*"]
  states: [running]
schedule:
  every: {every}s
snapshot:
  memory: "no"
  disks: external
  disk_only: true
"""


class DaemonProcess:
    """``snapshotd run`` with its own config, policy directory and state directory."""

    def __init__(self, root: Path, prefix: str, workers: int, every: int) -> None:
        self.root = root
        self.state = root / "state"
        policies = root / "policies"
        policies.mkdir(parents=True)
        policy = policies / "fleet.yaml"
        policy.write_text(POLICY.format(prefix=prefix, every=every), encoding="utf-8")
        policy.chmod(0o644)
        config = root / "snapshotd.yaml"
        config.write_text(f"connect: [{URI}]\nworkers: {workers}\n", encoding="utf-8")
        config.chmod(0o644)
        self.log = root / "daemon.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("NOTIFY_SOCKET", None)
        env.pop("JOURNAL_STREAM", None)
        command = [sys.executable, "-m", "snapshotd", "run", "--config", str(config)]
        command += ["--policy-dir", str(policies), "--state-dir", str(self.state)]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log
            )

    def status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return data

    def first_slot(self, domains: int, timeout: float = 60) -> int:
        """Wait until all domains are scheduled; return their (common) next due time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            status = self.status()
            if status is not None:
                due = {s["next_due"] for s in status["scheduled"] if s["policy"] == "bench-fleet"}
                count = sum(1 for s in status["scheduled"] if s["policy"] == "bench-fleet")
                if count == domains and len(due) == 1:
                    return int(due.pop())
            time.sleep(0.05)
        raise RuntimeError(f"the daemon did not schedule {domains} domains; see {self.log}")

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({self.proc.returncode}); see {self.log}")

    def stop(self) -> None:
        if os.environ.get("BENCH_LOG_DIR"):  # keep the daemon's log past the sweep
            shutil.copy(self.log, Path(os.environ["BENCH_LOG_DIR"]) / f"{self.root.name}.log")
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_rows(db: sqlite3.Connection, count: int, deadline: float) -> float:
    """Poll the catalog until it holds ``count`` snapshots; return that wall-clock instant."""
    while time.time() < deadline:
        try:
            (have,) = db.execute("SELECT count(*) FROM snapshots").fetchone()
        except sqlite3.OperationalError:
            have = 0  # not made yet, or briefly locked
        if have >= count:
            return time.time()
        time.sleep(0.002)
    raise RuntimeError(f"the catalog did not reach {count} snapshots in time")


def _baseline(conn: Any, hv: Hypervisor, names: list[str], workers: int, tag: str) -> float:
    """The same snapshots made by a plain thread pool; returns its wall time."""
    policy = parse_policy(POLICY.format(prefix="x", every=60), "fleet.yaml")
    if isinstance(policy, list):
        raise RuntimeError(f"the benchmark's policy is invalid: {policy}")
    # A time of its own, so the planned overlay names never meet the daemon's.
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    jobs = []
    for name in names:
        info = hv.domain(name)
        spec = plan_snapshot(info, policy.request(info, now, quiesce=False)).spec
        xml = render_spec(spec).replace(spec.name, f"{tag}-{spec.name}")
        jobs.append((conn.lookupByName(name), xml, int(spec.flags)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        futures = [pool.submit(dom.snapshotCreateXML, xml, flags) for dom, xml, flags in jobs]
        for future in futures:
            future.result()
        return time.perf_counter() - start


def run(domains: int, limits: list[int], rounds: int, every: int) -> dict[str, Any]:
    import libvirt  # noqa: PLC0415 - the baseline's own plain connection

    results: dict[str, Any] = {"limits": {}, "load": [load_average()]}
    with scratch("fleet") as factory:
        made = time.monotonic()
        names = [factory(suffix=f"f{i:03d}").name for i in range(domains)]
        results["create_domains_s"] = round(time.monotonic() - made, 1)
        conn = libvirt.open(URI)
        hv = Hypervisor.open(URI)
        try:
            for limit in limits:
                daemon_s, baseline_s = [], []
                daemon = DaemonProcess(
                    factory.root / f"workers-{limit}", factory.prefix, limit, every
                )
                try:
                    slot = daemon.first_slot(domains)
                    db = sqlite3.connect(str(daemon.state / "catalog.sqlite"), timeout=5)
                    for r in range(rounds):
                        at = slot + r * every
                        end = _wait_rows(db, domains * (r + 1), at + every - 1)
                        daemon_s.append(end - at)
                        baseline_s.append(_baseline(conn, hv, names, limit, f"bare{r}"))
                        if time.time() > at + every - 0.5 and r + 1 < rounds:
                            raise RuntimeError(f"round {r} ran into the next slot: raise --every")
                        daemon.check()
                    db.close()
                finally:
                    daemon.stop()
                results["load"].append(load_average())
                mine, base = spread(daemon_s), spread(baseline_s)
                results["limits"][str(limit)] = {
                    "snapshotd_s": mine.as_dict(),
                    "baseline_s": base.as_dict(),
                    "throughput_ratio": ratio(base.median, mine.median),
                    "rounds": rounds,
                }
                print(
                    f"workers {limit}: snapshotd {daemon_s} baseline {baseline_s}", file=sys.stderr
                )
        finally:
            hv.close()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="slots per worker limit (3)")
    parser.add_argument("--domains", type=int, default=50, help="running domains (50)")
    parser.add_argument("--every", type=int, default=40, help="the policy's interval, s (40)")
    parser.add_argument(
        "--limits", default="1,2,4,8", help="worker limits, comma-separated (1,2,4,8)"
    )
    parser.add_argument("--quick", action="store_true", help="6 domains, limits 1 and 2, 1 round")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    limits = [1, 2] if args.quick else [int(n) for n in args.limits.split(",")]
    domains = 6 if args.quick else args.domains
    rounds = 1 if args.quick else args.rounds
    every = 10 if args.quick else args.every
    started = time.monotonic()
    data = run(domains, limits, rounds, every)
    data.update(machine=machine(), domains=domains, every_s=every)
    data["seconds"] = round(time.monotonic() - started, 1)
    rows = []
    for limit, r in data["limits"].items():
        mine, base = r["snapshotd_s"], r["baseline_s"]
        rows.append(
            [
                limit,
                f"{base['median']:.3f} ({base['min']:.3f}..{base['max']:.3f})",
                f"{mine['median']:.3f} ({mine['min']:.3f}..{mine['max']:.3f})",
                f"{domains / base['median']:.1f}",
                f"{domains / mine['median']:.1f}",
                f"{r['throughput_ratio']:.3f}",
                r["rounds"],
            ]
        )
    headers = [
        "workers",
        "baseline s (min..max)",
        "snapshotd s (min..max)",
        "baseline/s",
        "snapshotd/s",
        "throughput ratio",
        "rounds",
    ]
    print(f"{domains} domains, external disk-only snapshots")
    print(table(headers, rows))
    print(f"load average (1 5 15 min) per phase: {' | '.join(data['load'])}")
    print(f"took {data['seconds']} s (making the domains: {data['create_domains_s']} s)")
    write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
