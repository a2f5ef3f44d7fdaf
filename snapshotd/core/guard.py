"""A policy's guards (``guard:``): a snapshot that would fill a disk, or make a disk's
external backing chain longer than libvirt can start, is skipped before libvirt is
called, with a reason that says what to do.  Pure: the free space and the chain
lengths are measured by actions/guard.py and handed in.

Retention never deletes anything to make room: a guard only ever skips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%|[KMGT])\s*", re.IGNORECASE)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SPACE_HELP = "a percentage of the file system such as 10%, or a size such as 512M, 20G or 1T"


@dataclass(frozen=True, slots=True)
class Space:
    """How much must stay free: a share of the file system, or a number of bytes."""

    percent: float | None = None
    size: int | None = None
    text: str = ""  # as the policy wrote it

    def needed(self, total: int) -> int:
        """The bytes that must stay free on a file system of ``total`` bytes."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        return self.size or 0


def parse_space(text: str) -> Space:
    """``"10%"``, ``"20G"``, ``"512M"`` (binary units) as a Space; ValueError otherwise."""
    match = _SPACE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not {SPACE_HELP}")
    number, unit = float(match.group(1)), match.group(2).upper()
    if unit == "%":
        if not 0 < number < 100:
            raise ValueError(f"{text!r}: a percentage above 0 and below 100")
        return Space(percent=number, text=text.strip())
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r}: more than nothing")
    return Space(size=size, text=text.strip())


def human(size: int) -> str:
    """Bytes as people read them: 1.5G, 320M, 12K, 512 bytes."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if size >= scale:
            return f"{size / scale:.1f}{unit}".replace(".0" + unit, unit)
    return f"{size} bytes"


@dataclass(frozen=True, slots=True)
class Guard:
    """``guard:`` of a policy; the defaults guard nothing."""

    min_free: Space | None = None
    max_chain: int = 0  # 0: no cap

    @property
    def active(self) -> bool:
        return self.min_free is not None or self.max_chain > 0

    def space_problem(self, where: str, free: int, total: int) -> str | None:
        """Why a snapshot whose files grow on ``where`` is skipped, or None."""
        if self.min_free is None or total <= 0:
            return None
        needed = self.min_free.needed(total)
        if free >= needed:
            return None
        share = free * 100 / total
        return (
            f"only {human(free)} ({share:.1f}%) of {human(total)} is free on {where}, "
            f"below guard.min_free ({self.min_free.text}); make room there or lower "
            "min_free (retention deletes nothing to make room)"
        )

    def chain_problem(self, domain: str, disk: str, length: int) -> str | None:
        """Why a snapshot that makes disk ``disk``'s backing chain ``length`` images long
        is skipped, or None."""
        if not self.max_chain or length <= self.max_chain:
            return None
        return (
            f"disk {disk}'s backing chain would be {length} images long, more than "
            f"guard.max_chain ({self.max_chain}); merge it (virsh blockcommit {domain} "
            f"{disk} --active --pivot) or prune older external snapshots, and the next "
            "slot takes it"
        )
