"""The seed's state table as data, and the one function that reads it.

libvirt's snapshot design (Eric Blake, "snapshot: new XML for external system
checkpoint", 2012) lists every combination of domain state (offline/online),
memory request, disk request and the DISK_ONLY flag, with the result: which
memory and disk locations the snapshot gets and how QEMU does it, or why the
combination is invalid or unsupported.  The 25 rows below are that table; the
rows partition the whole input space, so exactly one row applies to any request
(a unit test walks every combination to prove it).

Column values follow the seed: a request is omit/no/int/ext, ``any`` means both
values of the DISK_ONLY flag, and "omit/no" means either.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from snapshotd.core.model import Location, Method, Request


class Outcome(enum.StrEnum):
    OK = "ok"
    INVALID = "invalid"
    UNSUPPORTED = "unsupported"


class DiskResult(enum.StrEnum):
    """A row's disk result: a location, or "default" (each disk's own default)."""

    NO = "no"
    INTERNAL = "int"
    EXTERNAL = "ext"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Row:
    number: int  # 1-based, in the seed's order
    online: bool
    memory: frozenset[Request]
    disk: frozenset[Request]
    disk_only: frozenset[bool]
    outcome: Outcome
    memory_result: Location | None = None
    disk_result: DiskResult | None = None
    method: Method | None = None
    reason: str | None = None  # for invalid rows: the seed's words

    def matches(self, online: bool, memory: Request, disk: Request, disk_only: bool) -> bool:
        return (
            self.online == online
            and memory in self.memory
            and disk in self.disk
            and disk_only in self.disk_only
        )

    @property
    def internal(self) -> bool:
        """Does the result store anything inside the disks' qcow2 images?"""
        return self.memory_result is Location.INTERNAL or self.disk_result is DiskResult.INTERNAL

    def result(self) -> tuple[Location, DiskResult, Method]:
        """The result of a valid row: memory location, disk result, method."""
        if self.memory_result is None or self.disk_result is None or self.method is None:
            raise ValueError(f"state table row {self.number} is {self.outcome}, not a result")
        return self.memory_result, self.disk_result, self.method

    @property
    def text(self) -> str:
        """The row in the seed's own notation."""

        def cell(values: frozenset[Request]) -> str:
            short = {
                Request.OMIT: "omit",
                Request.NO: "no",
                Request.INTERNAL: "int",
                Request.EXTERNAL: "ext",
            }
            if len(values) == 4:
                return "any"
            return "/".join(short[v] for v in Request if v in values)

        flag = "any" if len(self.disk_only) == 2 else ("on" if True in self.disk_only else "off")
        left = (
            f"{'online' if self.online else 'offline'} {cell(self.memory)} {cell(self.disk)} {flag}"
        )
        if self.outcome is Outcome.OK:
            memory_result, disk_result, method = self.result()
            memory = {"no": "no", "internal": "int", "external": "ext"}[memory_result]
            right = f"memory={memory} disk={disk_result.value}, via {method.value}"
        elif self.outcome is Outcome.INVALID:
            right = f"invalid combination ({self.reason})"
        else:
            right = "unsupported for now"
        return f"{left} | {right}"


_O, _N, _I, _E = Request.OMIT, Request.NO, Request.INTERNAL, Request.EXTERNAL
_ANY_REQ = frozenset(Request)
_ANY = frozenset({False, True})
_ON = frozenset({True})
_OFF = frozenset({False})


def _r(*values: Request) -> frozenset[Request]:
    return frozenset(values)


def _ok(
    n: int,
    online: bool,
    mem: frozenset[Request],
    disk: frozenset[Request],
    flag: frozenset[bool],
    mem_res: Location,
    disk_res: DiskResult,
    method: Method,
) -> Row:
    return Row(n, online, mem, disk, flag, Outcome.OK, mem_res, disk_res, method)


def _bad(
    n: int,
    online: bool,
    mem: frozenset[Request],
    disk: frozenset[Request],
    flag: frozenset[bool],
    reason: str | None = None,
) -> Row:
    outcome = Outcome.INVALID if reason else Outcome.UNSUPPORTED
    return Row(n, online, mem, disk, flag, outcome, reason=reason)


_NOTHING = "nothing to snapshot"
_NO_MEMORY = "no memory to save"
_DISK_ONLY_VS_MEMORY = "disk-only vs. memory"
_L, _D = Location, DiskResult
_M = Method
OFFLINE, ONLINE = False, True

TABLE: tuple[Row, ...] = (
    _ok(1, OFFLINE, _r(_O), _r(_O), _ANY, _L.NO, _D.INTERNAL, _M.QEMU_IMG),
    _ok(2, OFFLINE, _r(_N), _r(_O), _ANY, _L.NO, _D.INTERNAL, _M.QEMU_IMG),
    _bad(3, OFFLINE, _r(_O, _N), _r(_N), _ANY, _NOTHING),
    _ok(4, OFFLINE, _r(_O, _N), _r(_I), _ANY, _L.NO, _D.INTERNAL, _M.QEMU_IMG),
    _ok(5, OFFLINE, _r(_O, _N), _r(_E), _ANY, _L.NO, _D.EXTERNAL, _M.QEMU_IMG),
    _bad(6, OFFLINE, _r(_I, _E), _ANY_REQ, _ANY, _NO_MEMORY),
    _ok(7, ONLINE, _r(_O), _r(_O), _OFF, _L.INTERNAL, _D.INTERNAL, _M.SAVEVM),
    _ok(8, ONLINE, _r(_O), _r(_O), _ON, _L.NO, _D.DEFAULT, _M.TRANSACTION),
    _bad(9, ONLINE, _r(_O), _r(_N, _E), _OFF),
    _bad(10, ONLINE, _r(_O), _r(_N), _ON, _NOTHING),
    _ok(11, ONLINE, _r(_O), _r(_E), _ON, _L.NO, _D.EXTERNAL, _M.TRANSACTION),
    _ok(12, ONLINE, _r(_O), _r(_I), _OFF, _L.INTERNAL, _D.INTERNAL, _M.SAVEVM),
    _bad(13, ONLINE, _r(_O), _r(_I), _ON),
    _ok(14, ONLINE, _r(_N), _r(_O), _ANY, _L.NO, _D.DEFAULT, _M.TRANSACTION),
    _bad(15, ONLINE, _r(_N), _r(_N), _ANY, _NOTHING),
    _bad(16, ONLINE, _r(_N), _r(_I), _ANY),
    _ok(17, ONLINE, _r(_N), _r(_E), _ANY, _L.NO, _D.EXTERNAL, _M.TRANSACTION),
    _bad(18, ONLINE, _r(_I, _E), _ANY_REQ, _ON, _DISK_ONLY_VS_MEMORY),
    _ok(19, ONLINE, _r(_I), _r(_O), _OFF, _L.INTERNAL, _D.INTERNAL, _M.SAVEVM),
    _bad(20, ONLINE, _r(_I), _r(_N, _E), _OFF),
    _ok(21, ONLINE, _r(_I), _r(_I), _OFF, _L.INTERNAL, _D.INTERNAL, _M.SAVEVM),
    _ok(22, ONLINE, _r(_E), _r(_O), _OFF, _L.EXTERNAL, _D.DEFAULT, _M.MIGRATE_TRANSACTION),
    _ok(23, ONLINE, _r(_E), _r(_N), _OFF, _L.EXTERNAL, _D.NO, _M.MIGRATE),
    _bad(24, ONLINE, _r(_E), _r(_I), _OFF),
    _ok(25, ONLINE, _r(_E), _r(_E), _OFF, _L.EXTERNAL, _D.EXTERNAL, _M.MIGRATE_TRANSACTION),
)


@functools.cache  # a few dozen combinations, asked for once per domain of every run
def lookup(online: bool, memory: Request, disk: Request, disk_only: bool) -> Row:
    """The one row of the seed's table that covers this request."""
    for row in TABLE:
        if row.matches(online, memory, disk, disk_only):
            return row
    raise AssertionError(  # the table covers every combination; a test proves it
        f"state table has no row for {online=} {memory=} {disk=} {disk_only=}"
    )


# Why an unsupported row is unsupported, in words an administrator can act on.
# Keyed by row number; each names what to ask for instead.
UNSUPPORTED_ADVICE: dict[int, str] = {
    9: (
        "with memory left to the default, a running domain saves its memory internally, "
        "and internal memory cannot be combined with excluded or external disks; ask for "
        "memory 'no' with --disk-only for a disk snapshot, or memory 'external' for a "
        "full external checkpoint"
    ),
    13: (
        "a disk-only snapshot of a running domain must be external (QEMU has no live "
        "internal disk-only snapshot); ask for external disks, or drop --disk-only for a "
        "full internal checkpoint"
    ),
    16: (
        "QEMU cannot take an internal disk snapshot of a running domain without its "
        "memory; ask for external disks, or memory 'internal' for a full checkpoint"
    ),
    20: (
        "internal memory lives inside the disks' qcow2 images, so every disk must be "
        "internal too; ask for internal disks, or memory 'external' with external disks"
    ),
    24: (
        "external memory cannot be combined with internal disk snapshots; ask for "
        "external disks, or memory 'internal' with internal disks"
    ),
}

INVALID_ADVICE: dict[str, str] = {
    _NOTHING: "every disk is excluded and no memory is saved; include at least one disk",
    _NO_MEMORY: (
        "a shut-off domain has no memory to save; ask for memory 'no' or 'auto', or start "
        "the domain first"
    ),
    _DISK_ONLY_VS_MEMORY: (
        "--disk-only saves no memory, but memory was requested; drop --disk-only, or ask "
        "for memory 'no' or 'auto'"
    ),
}
