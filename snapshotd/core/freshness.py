"""`snapshotd check --freshness`: a Nagios-style verdict on how old snapshots are.

Pure: the caller finds, for each monitored (policy, domain), the age of the newest
snapshot the policy made of it; this module turns that into the plugin's exit
code, its one status line and its performance data.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from snapshotd.core.schedule import span


class Code(enum.IntEnum):
    """Nagios plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class Check:
    policy: str
    domain: str
    age: int | None  # seconds since the newest snapshot; None: there is none
    warn: int | None  # seconds
    crit: int | None

    @property
    def code(self) -> Code:
        if self.age is None:
            return Code.CRITICAL
        if self.crit is not None and self.age > self.crit:
            return Code.CRITICAL
        if self.warn is not None and self.age > self.warn:
            return Code.WARNING
        return Code.OK

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.policy}"

    def describe(self) -> str:
        if self.age is None:
            return f"{self.label}: no snapshot"
        limit = self.crit if self.code is Code.CRITICAL else self.warn
        return f"{self.label}: newest is {span(self.age)} old (limit {span(limit or 0)})"

    def perfdata(self) -> str:
        value = "U" if self.age is None else f"{self.age}s"
        warn = "" if self.warn is None else str(self.warn)
        crit = "" if self.crit is None else str(self.crit)
        label = self.label.replace("'", "_").replace("=", "_")
        return f"'{label}'={value};{warn};{crit};0;"


def verdict(checks: Sequence[Check]) -> tuple[Code, str]:
    """The exit code and the plugin's output line (status, then `|` and perfdata)."""
    if not checks:
        return Code.UNKNOWN, (
            "SNAPSHOTD UNKNOWN - no monitored domain: no policy with monitor: selects one"
        )
    code = max(c.code for c in checks)
    bad = [c for c in checks if c.code is not Code.OK]
    if bad:
        worst = sorted(bad, key=lambda c: (-c.code, c.label))
        text = ", ".join(c.describe() for c in worst[:5])
        if len(worst) > 5:
            text += f" (+{len(worst) - 5} more)"
    else:
        text = f"{len(checks)} snapshot streams fresh"
    perf = " ".join(c.perfdata() for c in checks)
    return code, f"SNAPSHOTD {code.name} - {text} | {perf}"


def unknown(reason: str) -> tuple[Code, str]:
    return Code.UNKNOWN, f"SNAPSHOTD UNKNOWN - {reason}"
