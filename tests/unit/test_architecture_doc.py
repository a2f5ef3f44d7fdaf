"""docs/architecture.md's folder listing matches the tree: every module is there, and
everything it lists exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
# A listing line: two spaces per level, then a folder ("core/") or a module ("plan.py").
ENTRY = re.compile(r"^(?P<indent>(?:  )*)(?P<name>[a-z_]+(?:/|\.py))(?:\s|$)")


def listed(text: str) -> set[str]:
    """The paths the page's folder listing names (the code block that starts with the
    package's folder), relative to the repository."""
    blocks = text.split("```")[1::2]
    block = next(b for b in blocks if b.lstrip("\n").startswith("snapshotd/"))
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


def defines_something(path: Path) -> bool:
    """Whether a module holds more than a docstring, imports and ``__all__``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr | ast.Import | ast.ImportFrom):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else []
        if [getattr(t, "id", None) for t in targets] == ["__all__"]:
            continue
        return True
    return False


def modules() -> set[str]:
    """Every module of the package; a package's __init__.py only when it defines
    something of its own (one that re-exports is its folder's face, listed as the folder)."""
    found = set()
    for path in (REPO / "snapshotd").rglob("*.py"):
        if path.name == "__init__.py" and not defines_something(path):
            continue
        found.add(str(path.relative_to(REPO)))
    return found


def test_the_listing_parser_reads_nested_folders() -> None:
    sample = (
        "```\nnot the listing\n```\n\n"
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
