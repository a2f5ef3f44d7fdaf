"""Read tests/data/state_table.txt: the seed's table as test data.

Shared by the unit tests (against the planner) and the integration tests
(against real libvirt).  This parser is written independently of
snapshotd.core.table so that the tests do not check the table against itself.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data" / "state_table.txt"

_REQUESTS = {"omit": "omit", "no": "no", "int": "internal", "ext": "external"}
# The seed abbreviates one method name in row 22.
_METHOD_ALIASES = {"migrate+trans": "migrate+transaction"}


@dataclass(frozen=True)
class Expected:
    number: int
    line: str
    online: bool
    memory: tuple[str, ...]  # user-facing requests: omit, no, internal, external
    disk: tuple[str, ...]
    disk_only: tuple[bool, ...]
    outcome: str  # ok | invalid | unsupported
    memory_result: str | None = None  # no | internal | external
    disk_result: str | None = None  # no | internal | external | default
    method: str | None = None
    reason: str | None = None

    def combinations(self) -> list[tuple[str, str, bool]]:
        """Every concrete (memory, disk, disk_only) this row covers."""
        return list(itertools.product(self.memory, self.disk, self.disk_only))

    @property
    def first(self) -> tuple[str, str, bool]:
        return self.combinations()[0]


def _cell(text: str) -> tuple[str, ...]:
    if text == "any":
        return tuple(_REQUESTS.values())
    return tuple(_REQUESTS[part] for part in text.split("/"))


def _flag(text: str) -> tuple[bool, ...]:
    return {"any": (False, True), "on": (True,), "off": (False,)}[text]


def load_rows() -> list[Expected]:
    rows: list[Expected] = []
    for raw in DATA.read_text().splitlines():
        if not raw.strip() or raw.startswith("#") or raw.startswith("domain"):
            continue
        left, right = raw.split("|")
        domain, memory, disk, flag = left.split()
        right = right.lstrip("+*").strip()
        common = {
            "number": len(rows) + 1,
            "line": raw,
            "online": domain == "online",
            "memory": _cell(memory),
            "disk": _cell(disk),
            "disk_only": _flag(flag),
        }
        if right.startswith("invalid combination"):
            reason = right[right.index("(") + 1 : right.rindex(")")]
            rows.append(Expected(**common, outcome="invalid", reason=reason))  # type: ignore[arg-type]
        elif right.startswith("unsupported"):
            rows.append(Expected(**common, outcome="unsupported"))  # type: ignore[arg-type]
        else:
            modes, method = right.split(", via ")
            fields = dict(part.split("=") for part in modes.split())
            short = {"no": "no", "int": "internal", "ext": "external", "default": "default"}
            rows.append(
                Expected(
                    **common,  # type: ignore[arg-type]
                    outcome="ok",
                    memory_result=short[fields["memory"]],
                    disk_result=short[fields["disk"]],
                    method=_METHOD_ALIASES.get(method.strip(), method.strip()),
                )
            )
    return rows
