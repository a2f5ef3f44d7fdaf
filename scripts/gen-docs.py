#!/usr/bin/env python3
"""Write the documents made from the code (snapshotd/docgen/), handing it the CLI's parser.

.venv/bin/python scripts/gen-docs.py          # write them
.venv/bin/python scripts/gen-docs.py --check  # exit 1 if any is out of date
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# After the path is set, so that the checkout's snapshotd is the one imported.
from snapshotd.cli.parser import build_parser  # noqa: E402
from snapshotd.docgen.completion import bash_completion  # noqa: E402
from snapshotd.docgen.examples import state_table_examples  # noqa: E402
from snapshotd.docgen.manpages import man_policy, man_snapshotd  # noqa: E402
from snapshotd.docgen.policies import schema_markdown  # noqa: E402

BEGIN = "<!-- BEGIN state_table_examples() -->"
END = "<!-- END state_table_examples() -->"


def _between(current: str, begin: str, end: str, body: str) -> str:
    head, rest = current.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{body}{end}{tail}"


def _policy_reference(current: str) -> str:
    body = schema_markdown()
    return _between(
        current, "<!-- BEGIN schema_markdown() -->", "<!-- END schema_markdown() -->", body
    )


def _state_table(current: str) -> str:
    return _between(current, BEGIN, END, state_table_examples())


FILES: dict[str, Callable[[str], str]] = {
    "docs/policies.md": _policy_reference,
    "man/snapshotd.8": lambda _old: man_snapshotd(build_parser()),
    "man/snapshotd.policy.5": lambda _old: man_policy(),
    "completion/snapshotd.bash": lambda _old: bash_completion(build_parser()),
    "docs/state-table.md": _state_table,
}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, make in FILES.items():
        path = REPO / name
        old = path.read_text() if path.exists() else ""
        new = make(old)
        if new == old:
            continue
        stale.append(name)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new)
    for name in stale:
        print(f"{'out of date' if check else 'written'}: {name}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
