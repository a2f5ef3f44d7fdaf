"""The import contracts of pyproject.toml fail when broken: each case adds one forbidden
import to a copy of the package, and lint-imports must refuse it, naming the contract and
the import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def importlinter_section(pyproject: str) -> str:
    """pyproject.toml's [tool.importlinter] tables as they are written, comments and all."""
    kept: list[str] = []
    inside = False
    for line in pyproject.splitlines():
        if line.startswith("["):
            inside = line.lstrip("[").startswith("tool.importlinter")
        if inside:
            kept.append(line)
    return "\n".join(kept) + "\n"


SECTION = importlinter_section((REPO / "pyproject.toml").read_text())
CONTRACTS: list[str] = [
    contract["name"] for contract in tomllib.loads(SECTION)["tool"]["importlinter"]["contracts"]
]


def contract(prefix: str) -> str:
    """The full name of the one contract whose name starts with ``prefix``."""
    (name,) = [name for name in CONTRACTS if name.startswith(prefix)]
    return name


CORE = "core is pure"
CONFIG = "config is pure"
LIBVIRT = "only the libvirt adapter"
DATABASE = "only the catalog implementation"
CLI = "the CLI is imported by nothing"
LAYERS = "layers:"
DOCGEN = "docgen reads only"


@dataclass(frozen=True)
class Breach:
    """One forbidden import written into a layer, and the contracts it must break."""

    layer: str  # a child of snapshotd, a package ("core") or a module ("errors")
    source: str
    imported: str  # the module the report must show it importing
    contracts: tuple[str, ...]  # name prefixes

    def write(self, package: Path) -> str:
        """Write the import into the copy; the name of the module that now imports."""
        if (package / self.layer).is_dir():  # a new module, so no file of another's matters
            target, importer = package / self.layer / "_breach.py", f"{self.layer}._breach"
            target.write_text(f'"""A forbidden import."""\n\n{self.source}\n')
        else:
            target, importer = package / f"{self.layer}.py", self.layer
            target.write_text(f"{target.read_text()}\n{self.source}\n")
        return f"snapshotd.{importer}"


BREACHES = {
    "core imports libvirt": Breach("core", "import libvirt", "libvirt", (CORE, LIBVIRT)),
    "core imports an adapter": Breach(
        "core", "from snapshotd.adapters import files", "snapshotd.adapters", (CORE, LAYERS)
    ),
    "core imports time": Breach("core", "import time", "time", (CORE,)),
    "config runs a process": Breach("config", "import subprocess", "subprocess", (CONFIG,)),
    "actions import sqlite3": Breach("actions", "import sqlite3", "sqlite3", (DATABASE,)),
    "a type-checking import of libvirt": Breach(
        "actions",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import libvirt",
        "libvirt",
        (LIBVIRT,),
    ),
    "the daemon imports the CLI": Breach(
        "daemon", "from snapshotd import cli", "snapshotd.cli", (CLI, LAYERS)
    ),
    "the CLI imports docgen": Breach(
        "cli", "from snapshotd import docgen", "snapshotd.docgen", (LAYERS,)
    ),
    "docgen imports an adapter": Breach(
        "docgen", "from snapshotd.adapters import files", "snapshotd.adapters", (DOCGEN,)
    ),
    "errors imports core": Breach(
        "errors", "from snapshotd.core import model", "snapshotd.core", (LAYERS,)
    ),
}


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of snapshotd in tmp_path/pkg and the contracts in tmp_path/importlinter.toml."""
    shutil.copytree(
        REPO / "snapshotd",
        tmp_path / "pkg" / "snapshotd",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tmp_path / "importlinter.toml").write_text(SECTION)
    return tmp_path


def run(where: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command in ``where`` that finds the copy of snapshotd first on its path."""
    env = {**os.environ, "PYTHONPATH": str(where / "pkg"), "NO_COLOR": "1"}
    return subprocess.run(
        argv, cwd=where, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def lint(where: Path) -> tuple[int, str]:
    """lint-imports' exit status and its report, with its line wrapping undone."""
    done = run(where, str(LINT_IMPORTS), "importlinter.toml", "--no-cache", "--no-logo")
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def broken(report: str) -> set[str]:
    """The contracts the report's summary calls broken."""
    return {name for name in CONTRACTS if f"{' '.join(name.split())} BROKEN" in report}


def test_the_section_is_the_whole_configuration() -> None:
    repo = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert tomllib.loads(SECTION)["tool"]["importlinter"] == repo
    assert len(CONTRACTS) == 7


def test_the_untouched_copy_keeps_every_contract(package: Path) -> None:
    where = run(package, sys.executable, "-c", "import snapshotd; print(snapshotd.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(package / "pkg")
    status, report = lint(package)
    assert broken(report) == set(), report
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in report
    assert status == 0


@pytest.mark.parametrize("breach", BREACHES.values(), ids=BREACHES.keys())
def test_a_forbidden_import_breaks_its_contract(package: Path, breach: Breach) -> None:
    importer = breach.write(package / "pkg" / "snapshotd")
    status, report = lint(package)
    assert status != 0
    # The importer is in the copy only: the report proves which tree was read.
    assert f"{importer} -> {breach.imported}" in report, report
    assert {contract(prefix) for prefix in breach.contracts} <= broken(report), report


def test_a_top_level_module_without_a_layer_is_refused(package: Path) -> None:
    (package / "pkg" / "snapshotd" / "stray.py").write_text('"""In no layer."""\n')
    status, report = lint(package)
    assert status != 0
    assert contract(LAYERS) in broken(report)
    assert "not listed as layers: - snapshotd.stray" in report, report
