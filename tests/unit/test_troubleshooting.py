"""Every message the daemon logs at warning or above is explained in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Every module of the package: a message moved to a new module is still checked.
MODULES = sorted(str(p.relative_to(REPO / "snapshotd")) for p in (REPO / "snapshotd").rglob("*.py"))
LOGGED = re.compile(
    r"log\.(?:warning|error|exception)\(\s*\n?\s*f?\"([^\"]+)\""
    r"|log_event\(\s*log,\s*logging\.(?:WARNING|ERROR),\s*f\"([^\"]+)\""
    r"|raise AlreadyRunning\(\s*f\"([^\"]+)\""
)


def fragments() -> list[tuple[str, str]]:
    found = []
    for name in MODULES:
        text = (REPO / "snapshotd" / name).read_text()
        for match in LOGGED.finditer(text):
            literal = next(g for g in match.groups() if g)
            # The constant words of the message: drop %s/{...} parts, keep the longest run.
            pieces = re.split(r"%[sd]|\{[^}]*\}", literal)
            longest = max((p.strip(" :;()") for p in pieces), key=len)
            if len(longest) >= 8:
                found.append((name, longest))
    return found


def test_the_scan_finds_the_messages() -> None:
    assert len(fragments()) >= 15


@pytest.mark.parametrize(("module", "fragment"), fragments(), ids=lambda x: str(x)[:40])
def test_each_message_is_in_the_troubleshooting_table(module: str, fragment: str) -> None:
    section = (REPO / "docs" / "operations.md").read_text().split("## Troubleshooting")[1]
    section = section.split("\n## ")[0]
    assert fragment in section, f"{module}: {fragment!r} is not explained in docs/operations.md"
