"""snapshotd.core and snapshotd.config never read the clock: the instant they reason about
is passed in.  Every module is parsed, and every use of a clock function is refused,
however it was imported (``import datetime as dt``, ``from time import time``, ...).

The import contracts forbid ``time`` in core and config, but ``datetime`` must stay (its
types are the model's), so ``datetime.now`` can only be caught by reading the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PURE = ("snapshotd/core", "snapshotd/config")

# Every function that answers "what time is it now", by its qualified name.
CLOCK = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.perf_counter_ns",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
    }
)


def imported_names(tree: ast.AST) -> dict[str, str]:
    """Each name an import binds, anywhere in the module, mapped to what it stands for."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:  # `import a.b` binds `a`
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything but names and attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, qualified name) of every clock function the source uses, called or not."""
    tree = ast.parse(source)
    names = imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name | ast.Attribute):
            continue
        parts = dotted(node)
        if parts is None or parts[0] not in names:
            continue
        qualified = ".".join([names[parts[0]], *parts[1:]])
        if qualified in CLOCK:
            found.append((node.lineno, qualified))
    return sorted(set(found))


@pytest.mark.parametrize(
    ("source", "qualified"),
    [
        ("import time\ntime.time()", "time.time"),
        ("import time\nt = time.monotonic", "time.monotonic"),
        ("import time as _t\n_t.perf_counter()", "time.perf_counter"),
        ("import time\ntime.time_ns()", "time.time_ns"),
        ("from time import time\ntime()", "time.time"),
        ("from time import monotonic as tick\nx = tick()", "time.monotonic"),
        ("import datetime\ndatetime.datetime.now()", "datetime.datetime.now"),
        ("import datetime as dt\ndt.datetime.now(dt.UTC)", "datetime.datetime.now"),
        ("import datetime as dt\ndt.datetime.utcnow()", "datetime.datetime.utcnow"),
        ("import datetime as dt\ndt.datetime.today()", "datetime.datetime.today"),
        ("from datetime import datetime\ndatetime.now()", "datetime.datetime.now"),
        ("from datetime import datetime as D\nD.now().isoformat()", "datetime.datetime.now"),
        ("from datetime import date\ndate.today()", "datetime.date.today"),
        ("import datetime as dt\ndt.date.today()", "datetime.date.today"),
        ("def f():\n    import time\n    return time.time()", "time.time"),
    ],
)
def test_the_scanner_catches(source: str, qualified: str) -> None:
    assert [name for _, name in clock_reads(source)] == [qualified]


def test_the_scanner_lets_the_clock_free_uses_pass() -> None:
    source = (
        "import datetime as dt\n"
        "from datetime import time\n"
        "def f(now: dt.datetime, today: dt.date) -> dt.datetime:\n"
        "    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=1)\n"
        "    return max(now, start, dt.datetime.fromisoformat('2024-01-02T00:00+00:00'))\n"
        "noon = time(12)\n"
    )
    assert clock_reads(source) == []


def pure_modules() -> list[Path]:
    return sorted(path for folder in PURE for path in (REPO / folder).rglob("*.py"))


def test_there_are_modules_to_read() -> None:
    folders = {path.parent.relative_to(REPO).as_posix() for path in pure_modules()}
    assert set(PURE) <= folders


def test_core_and_config_never_read_the_clock() -> None:
    reads = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in pure_modules()
        for line, name in clock_reads(path.read_text())
    ]
    assert reads == []
