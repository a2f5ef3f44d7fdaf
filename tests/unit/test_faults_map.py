"""docs/faults.md names, for each of issue 7's nineteen fault cases, tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE = re.compile(r"`((?:unit|integration|system)/[\w/]+\.py)::(test_\w+)`")


def cases() -> dict[int, list[tuple[str, str]]]:
    text = (REPO / "docs" / "faults.md").read_text()
    found: dict[int, list[tuple[str, str]]] = {}
    for section in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        number = int(section.split(".", 1)[0])
        found[number] = NODE.findall(section)
    return found


def test_every_case_is_listed_with_at_least_one_test() -> None:
    found = cases()
    assert sorted(found) == list(range(1, 20))
    assert all(found[n] for n in found), [n for n in found if not found[n]]


def test_every_named_test_exists() -> None:
    missing = []
    for tests in cases().values():
        for path, name in tests:
            source = REPO / "tests" / path
            defined = (
                {
                    node.name
                    for node in ast.walk(ast.parse(source.read_text()))
                    if isinstance(node, ast.FunctionDef)
                }
                if source.is_file()
                else set()
            )
            if name not in defined:
                missing.append(f"{path}::{name}")
    assert not missing
