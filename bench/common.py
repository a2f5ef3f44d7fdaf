"""What the libvirt benchmarks share: scratch domains, statistics, tables, JSON.

Scratch domains are made with the integration tests' DomainFactory under a prefix of
their own (``snapshotd-bench-<8 hex>-``) and swept at the end, pass or fail: on an
exception, Ctrl-C or SIGTERM every domain with that prefix is destroyed and undefined
with its snapshot metadata, and its directory (images, overlays) is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

URI = "qemu:///system"
# Where libvirtd may read and write guest images (the integration tests use it too).
ROOT = Path(os.environ.get("SNAPSHOTD_TEST_ROOT", "/var/lib/snapshotd-tests"))


@dataclass(frozen=True, slots=True)
class Spread:
    """A sample's median and spread."""

    n: int
    median: float
    q1: float
    q3: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "min": self.low,
            "max": self.high,
        }


def spread(values: Sequence[float]) -> Spread:
    """Median, quartiles (inclusive method) and range of a non-empty sample."""
    if not values:
        raise ValueError("no values to summarise")
    if len(values) == 1:
        only = float(values[0])
        return Spread(1, only, only, only, only, only)
    q1, _q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(
        len(values), statistics.median(values), q1, q3, float(min(values)), float(max(values))
    )


def ratio(snapshotd: float, baseline: float) -> float:
    """snapshotd's time over the baseline's (above 1: snapshotd is slower)."""
    if baseline <= 0:
        raise ValueError(f"the baseline's time must be positive, got {baseline}")
    return snapshotd / baseline


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_ticks() -> tuple[int, int, int]:
    """(busy, all, stolen) clock ticks of every CPU since boot, every process
    (/proc/stat).  Stolen: the time a virtual machine's CPUs waited for the host's."""
    with Path("/proc/stat").open(encoding="ascii") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in stat.readline().split()[1:9]
        )  # guest time is already counted in user
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal, steal


def busy_seconds(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """CPU seconds spent by every process between two cpu_ticks()."""
    return (after[0] - before[0]) / os.sysconf("SC_CLK_TCK")


def busy_fraction(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over ``seconds``."""
    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def stolen_fraction(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """The share of all CPUs' time the host running this machine took for others."""
    return (after[2] - before[2]) / max(after[1] - before[1], 1)


def settle(limit: float = 0.15, timeout: float = 120.0) -> float:
    """Wait until the machine is idle (the new guests' firmware has finished looking
    for something to boot, which keeps their CPUs busy for about half a minute);
    return the busy share last seen."""
    deadline = time.monotonic() + timeout
    busy = busy_fraction()
    while busy > limit and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    model = ""
    with Path("/proc/cpuinfo").open(encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, right-aligned, as docs/performance.md shows them."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the sweep below, like Ctrl-C


@contextmanager
def scratch(tag: str) -> Iterator[Any]:
    """A DomainFactory for the benchmark's domains; everything it made goes at the end."""
    import libvirt  # noqa: PLC0415 - only the libvirt benchmarks need it

    from tests.integration.domains import DomainFactory  # noqa: PLC0415 - same

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(URI)
    virt_type = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    prefix = f"snapshotd-bench-{secrets.token_hex(4)}-"
    factory = DomainFactory(conn, prefix, ROOT / f"{prefix.rstrip('-')}-{tag}", virt_type)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield factory
    finally:
        try:
            try:
                swept = factory.sweep()
            except libvirt.libvirtError:
                # The connection died (libvirtd restarted under the benchmark): a new one.
                factory.conn = libvirt.open(URI)
                swept = factory.sweep()
            print(f"removed {len(swept)} domains with prefix {prefix}", file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, previous)
            with contextlib.suppress(libvirt.libvirtError):
                factory.conn.close()
                conn.close()
