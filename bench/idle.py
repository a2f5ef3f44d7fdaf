#!/usr/bin/env python3
"""Benchmark 4 of issue 7: what an idle daemon costs, and how fast a policy edit lands.

A real ``snapshotd run`` (a subprocess, as systemd runs it) against the real libvirtd
at qemu:///system, with 20 real QEMU domains (shut off: an idle daemon never talks
to a guest, and nothing is due) and 100 policy files that each select all 20
domains (2,000 scheduled keys) with a cron schedule whose next run is weeks away.

Idle cost: once the daemon has settled (READY=1, every key scheduled, a few quiet
seconds), its CPU time is read from /proc/PID/stat (utime + stime, every thread)
before and after a window of ``--window`` seconds (60), and its memory from
/proc/PID/status (VmRSS, VmHWM).  Wake-ups are counted from the context switches
of all its threads.  Side by side, for the floor, a baseline process does what any
libvirt client that wants events must do and nothing else: ``import libvirt``, the
default event loop on a thread, one connection to qemu:///system with the same
keepalive (5 s, 3 probes), a lifecycle callback, one listing of the domains, then
sleep.

Reload latency: ``--writes`` (100) edits of the policy files, alternating an
in-place rewrite and a write-then-rename (as editors save), each giving one policy a
new cron time.  The latency is from just before the write to the moment
``status.json`` in the state directory shows that policy's keys scheduled at the new
time: the daemon writes it only after the new set is loaded and every key has been
rescheduled from it, so it proves the edit is in force, not just seen.

    .venv/bin/python bench/idle.py                  # 3 rounds of 60 s, 100 writes
    .venv/bin/python bench/idle.py --quick          # 1 round of 15 s, 30 writes (< 60 s)
    .venv/bin/python bench/idle.py --rounds 5 --json out.json

Targets (issue 7): under 0.5 % of one core and under 80 MB RSS while idle; reload
p99 under 1 s over 100 writes.  Run as root (libvirtd's qemu:///system).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import libvirt
from common import (
    REPO,
    URI,
    load_average,
    machine,
    scratch,
    spread,
    table,
    write_json,
)

from tests.integration.domains import DomainFactory

DOMAINS = 20
POLICIES = 100
FIRST_CRON = "30 23 1 1 *"  # 23:30 UTC on 1 January: weeks away from any run of this
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

BASELINE = textwrap.dedent(
    """
    import sys, threading, time
    import libvirt
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    libvirt.virEventRegisterDefaultImpl()
    def loop():
        while True:
            libvirt.virEventRunDefaultImpl()
    threading.Thread(target=loop, daemon=True).start()
    conn = libvirt.open(sys.argv[1])
    conn.setKeepAlive(5, 3)
    conn.domainEventRegisterAny(
        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda *a: None, None
    )
    conn.registerCloseCallback(lambda *a: None, None)
    conn.listAllDomains(0)
    print("ready", flush=True)
    while True:
        time.sleep(3600)
    """
)


def policy_text(prefix: str, cron: str) -> str:
    return textwrap.dedent(
        f"""\
        domains:
          include: ["{prefix}*"]
        schedule:
          cron: "{cron}"
          timezone: UTC
        retention:
          keep_last: 3
        """
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """One process's counters at one instant."""

    cpu_s: float  # utime + stime of every thread, seconds (clock ticks: 10 ms)
    cpu_ns: int  # time on a CPU of the live threads, from schedstat (nanoseconds)
    rss_mb: float
    hwm_mb: float
    switches: int  # voluntary + involuntary context switches of every thread
    threads: int


def sample(pid: int) -> Sample:
    proc = Path(f"/proc/{pid}")
    fields = (proc / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    status = {}
    for line in (proc / "status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()
    switches = cpu_ns = 0
    tasks = list((proc / "task").iterdir())
    for task in tasks:
        try:
            cpu_ns += int((task / "schedstat").read_text(encoding="ascii").split()[0])
            for line in (task / "status").read_text(encoding="ascii").splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except FileNotFoundError:
            continue  # a thread that ended while we looked
    return Sample(
        cpu,
        cpu_ns,
        int(status["VmRSS"][0]) / 1024,
        int(status["VmHWM"][0]) / 1024,
        switches,
        len(tasks),
    )


class Notify:
    """The NOTIFY_SOCKET the daemon reports READY=1 and STATUS= to, read all the time.

    As systemd does: a socket nobody reads fills up, and then the daemon's next
    notification blocks its main loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def drain(self) -> list[str]:
        return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Run:
    """The daemon under test, its policy directory and its state directory."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = root
        self.prefix = prefix
        self.policies = root / "policies"
        self.state = root / "state"
        self.status = self.state / "status.json"
        self.policies.mkdir(mode=0o755)
        for k in range(POLICIES):
            self.write(k, FIRST_CRON, rename=True)
        config = root / "snapshotd.yaml"
        config.write_text(f"connect: [{URI}]\n")
        config.chmod(0o644)
        self.notify = Notify(root / "notify.sock")
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(self.notify.path))
        env.pop("JOURNAL_STREAM", None)
        env.pop("WATCHDOG_USEC", None)
        self.log = root / "daemon.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snapshotd",
                "run",
                "--config",
                str(config),
                "--policy-dir",
                str(self.policies),
                "--state-dir",
                str(self.state),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def write(self, k: int, cron: str, *, rename: bool) -> None:
        target = self.policies / f"bench-p{k:03d}.yaml"
        body = policy_text(self.prefix, cron)
        if rename:
            temp = self.policies / f".bench-p{k:03d}.yaml.tmp"
            temp.write_text(body)
            temp.chmod(0o644)
            temp.replace(target)
        else:
            with target.open("w") as f:
                f.write(body)
            target.chmod(0o644)

    def read_status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.status.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if predicate():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}; daemon log:\n{self.log.read_text()}")

    def settled(self) -> None:
        def ready() -> bool:
            if not any("READY=1" in m for m in self.notify.drain()):
                return False
            status = self.read_status()
            return status is not None and len(status["scheduled"]) == POLICIES * DOMAINS

        self.wait(ready, 120, f"READY=1 and {POLICIES * DOMAINS} scheduled keys")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()


def sweep_again(factory: Any) -> None:
    """Remove the factory's domains (with their files) on a connection of our own."""
    conn = libvirt.open(URI)
    try:
        again = DomainFactory(conn, factory.prefix, factory.root, factory.virt_type)
        swept = again.sweep()
        print(f"removed {len(swept)} domains with prefix {factory.prefix}", file=sys.stderr)
    finally:
        conn.close()


def libvirtd() -> str:
    """libvirtd's PID and start time, to tell whether it was restarted under the run."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() == "libvirtd":
                start = (proc / "stat").read_text().rsplit(")", 1)[1].split()[19]
                return f"{proc.name}@{start}"
        except OSError:
            continue
    return "not running"


def next_time(cron_minute: int, cron_hour: int, now: dt.datetime) -> int:
    """Epoch seconds of the next 1 January, cron_hour:cron_minute UTC, after ``now``."""
    year = now.year
    while True:
        at = dt.datetime(year, 1, 1, cron_hour, cron_minute, tzinfo=dt.UTC)
        if at > now:
            return int(at.timestamp())
        year += 1


def idle_round(run: Run, baseline: subprocess.Popen[str], window: float) -> dict[str, Any]:
    """CPU, memory and wake-ups of the daemon and the baseline over one idle window."""
    before = {"snapshotd": sample(run.proc.pid), "baseline": sample(baseline.pid)}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    after = {"snapshotd": sample(run.proc.pid), "baseline": sample(baseline.pid)}
    out: dict[str, Any] = {"window_s": round(elapsed, 2)}
    for who in ("snapshotd", "baseline"):
        b, a = before[who], after[who]
        cpu = (a.cpu_ns - b.cpu_ns) / 1e9
        out[who] = {
            "cpu_s": round(cpu, 4),
            "cpu_s_from_stat": round(a.cpu_s - b.cpu_s, 2),
            "core_pct": round(100 * cpu / elapsed, 4),
            "wakeups_per_s": round((a.switches - b.switches) / elapsed, 2),
            "rss_mb": round(a.rss_mb, 1),
            "hwm_mb": round(a.hwm_mb, 1),
            "threads": a.threads,
        }
    return out


def reload_latencies(run: Run, writes: int) -> list[dict[str, Any]]:
    """Edit policy files one after another; each write's time until it is in force."""
    results = []
    for i in range(writes):
        k = (i * 37) % POLICIES  # spread over the files, none twice in a row
        minute, hour = i % 60, 1 + i // 60  # a new cron time for every write
        rename = i % 2 == 1
        expected = next_time(minute, hour, dt.datetime.now(dt.UTC))
        name = f"bench-p{k:03d}"

        def in_force(name: str = name, expected: int = expected) -> bool:
            status = run.read_status()
            if status is None:
                return False
            mine = [s for s in status["scheduled"] if s["policy"] == name]
            return len(mine) == DOMAINS and all(s["next_due"] == expected for s in mine)

        last = run.status.stat().st_mtime_ns
        started = time.monotonic()
        run.write(k, f"{minute} {hour} 1 1 *", rename=rename)
        seen = None
        while time.monotonic() - started < 10:
            try:
                mtime = run.status.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = last
            if mtime != last:
                last = mtime
                if in_force():
                    seen = time.monotonic()
                    break
            time.sleep(0.002)
        results.append(
            {
                "write": i,
                "policy": name,
                "how": "rename" if rename else "in place",
                "latency_s": None if seen is None else round(seen - started, 4),
            }
        )
        time.sleep(0.05)  # let the daemon go back to sleep before the next edit
    return results


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def show(result: dict[str, Any], rounds: int, window: float) -> None:
    """The results as docs/performance.md shows them."""
    med = result["idle_median"]
    before, after = result["load_average_before"], result["load_average_after"]
    print(
        f"idle: {rounds} x {window:g} s, {DOMAINS} shut-off domains, {POLICIES} policies "
        f"(load average before {before}, after {after})"
    )
    print(
        table(
            ["process", "CPU s / window", "% of one core", "wake-ups/s", "VmRSS MB", "VmHWM MB"],
            [
                [
                    who,
                    med[who]["cpu_s"],
                    med[who]["core_pct"],
                    med[who]["wakeups_per_s"],
                    med[who]["rss_mb"],
                    med[who]["hwm_mb"],
                ]
                for who in ("snapshotd", "baseline")
            ],
        )
    )
    rel = result["reload"]
    print(
        f"reload: {rel['writes']} writes, median {rel['median_s']} s, p95 {rel['p95_s']} s, "
        f"p99 {rel['p99_s']} s, max {rel['max_s']} s; "
        f"not in force within 10 s: {rel['not_in_force_within_10s']}"
    )
    for how in ("in place", "rename"):
        own = [w["latency_s"] for w in rel["by_write"] if w["how"] == how and w["latency_s"]]
        if own:
            print(f"  {how}: median {statistics.median(own):.4f} s, max {max(own):.4f} s")
    if errors := result["daemon_errors_logged"]:
        print(f"daemon logged {len(errors)} errors, first: {errors[0]}")
    if result["libvirtd_restarted_during_run"]:
        print("libvirtd was restarted during the run: these figures are disturbed")


def measure(
    root: Path, rounds: int, window: float, writes: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Sample, list[str]]:
    """Domains, daemon and baseline up; the idle rounds, then the reload writes."""
    root.chmod(0o755)
    baseline: subprocess.Popen[str] | None = None
    run: Run | None = None
    made: list[Any] = []  # the domain factory, should its sweep need doing again
    done = False
    try:
        with scratch("idle") as factory:
            made.append(factory)
            try:
                for _ in range(DOMAINS):
                    factory(state="shutoff")
                run = Run(root, factory.prefix)
                baseline = subprocess.Popen(
                    [sys.executable, "-c", BASELINE, URI],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert baseline.stdout is not None
                if baseline.stdout.readline().strip() != "ready":
                    raise RuntimeError("the baseline process did not connect")
                run.settled()
                time.sleep(5)  # let start-up work (catalog, first status write) finish
                idle = [idle_round(run, baseline, window) for _ in range(rounds)]
                latencies = reload_latencies(run, writes)
                final = sample(run.proc.pid)
                errors = [line for line in run.log.read_text().splitlines() if "ERROR" in line]
                done = True
            finally:
                if baseline is not None:
                    baseline.kill()
                    baseline.wait()
                if run is not None:
                    run.stop()
    except libvirt.libvirtError as exc:
        # libvirtd restarted under the run (other tests on a shared host do that): the
        # sweep's connection is gone, so sweep again on a new one.
        if not made:
            raise
        print(f"sweeping again on a new connection after: {exc}", file=sys.stderr)
        sweep_again(made[0])
        if not done:
            raise
    return idle, latencies, final, errors


def summarise(
    idle: list[dict[str, Any]],
    latencies: list[dict[str, Any]],
    final: Sample,
    errors: list[str],
) -> dict[str, Any]:
    """Medians of the idle rounds and percentiles of the reload latencies."""
    times = [r["latency_s"] for r in latencies if r["latency_s"] is not None]
    missed = len(latencies) - len(times)
    return {
        "benchmark": "idle",
        "machine": machine(),
        "load_average_after": load_average(),
        "domains": DOMAINS,
        "policies": POLICIES,
        "rounds": idle,
        "idle_median": {
            who: {
                key: statistics.median(r[who][key] for r in idle)
                for key in ("cpu_s", "core_pct", "wakeups_per_s", "rss_mb", "hwm_mb")
            }
            for who in ("snapshotd", "baseline")
        },
        "daemon_hwm_mb_at_end": round(final.hwm_mb, 1),
        "reload": {
            "writes": len(latencies),
            "not_in_force_within_10s": missed,
            "median_s": round(statistics.median(times), 4) if times else None,
            "p95_s": round(percentile(times, 95), 4) if times else None,
            "p99_s": round(percentile(times, 99), 4) if times else None,
            "max_s": round(max(times), 4) if times else None,
            "spread": spread(times).as_dict() if times else None,
            "by_write": latencies,
        },
        "daemon_errors_logged": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 15 s, 30 writes")
    parser.add_argument("--rounds", type=int, help="idle windows (default 3, quick 1)")
    parser.add_argument("--window", type=float, help="seconds per idle window (default 60)")
    parser.add_argument("--writes", type=int, help="policy edits timed (default 100)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    window = args.window or (15.0 if args.quick else 60.0)
    writes = args.writes if args.writes is not None else (30 if args.quick else 100)
    load_before = load_average()
    libvirtd_before = libvirtd()
    root = Path(tempfile.mkdtemp(prefix="snapshotd-bench-idle-"))
    try:
        idle, latencies, final, errors = measure(root, rounds, window, writes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = summarise(idle, latencies, final, errors)
    result["load_average_before"] = load_before
    result["libvirtd_restarted_during_run"] = libvirtd() != libvirtd_before
    show(result, rounds, window)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
