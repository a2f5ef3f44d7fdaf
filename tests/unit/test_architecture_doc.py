"""docs/architecture.md's folder listing matches the tree: every module is there, and
everything it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
# A listing line: two spaces per level, then a folder ("core/") or a module ("plan.py").
ENTRY = re.compile(r"^(?P<indent>(?:  )*)(?P<name>[a-z_]+(?:/|\.py))(?:\s|$)")


def listed(text: str) -> set[str]:
    """The paths the first code block of the page names, relative to the repository."""
    block = text.split("```", 2)[1]
    stack: list[str] = []
    paths = set()
    for line in block.splitlines()[1:]:
        match = ENTRY.match(line)
        if match is None or len(match["indent"]) > 2 * len(stack):
            continue  # a description's second line, or prose
        depth = len(match["indent"]) // 2
        del stack[depth:]
        name = match["name"]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            paths.add("/".join([*stack, name]))
    return paths


def modules() -> set[str]:
    """Every module of the package except an empty __init__.py."""
    found = set()
    for path in (REPO / "snapshotd").rglob("*.py"):
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        found.add(str(path.relative_to(REPO)))
    return found


def test_the_listing_parser_reads_nested_folders() -> None:
    sample = (
        "```\nsnapshotd/\n  core/          pure\n    plan.py      plans\n"
        "                 second line of plan.py's job\n  errors.py      errors\n```\n"
    )
    assert listed(sample) == {"snapshotd/core/plan.py", "snapshotd/errors.py"}


def test_every_module_is_in_the_architecture_page() -> None:
    missing = sorted(modules() - listed(DOC.read_text()))
    assert not missing, f"docs/architecture.md does not list: {', '.join(missing)}"


def test_the_architecture_page_lists_only_what_exists() -> None:
    stale = sorted(listed(DOC.read_text()) - modules())
    assert not stale, f"docs/architecture.md lists what is not in the tree: {', '.join(stale)}"
