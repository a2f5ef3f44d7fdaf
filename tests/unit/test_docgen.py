"""The documents made from the code are up to date, render, and work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from snapshotd.cli.parser import build_parser
from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA
from snapshotd.core.table import TABLE
from snapshotd.docgen.examples import state_table_examples
from snapshotd.docgen.manpages import man_policy, man_snapshotd

REPO = Path(__file__).resolve().parents[2]


def test_generated_files_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + "run: .venv/bin/python scripts/gen-docs.py"


@pytest.mark.parametrize("page", ["man/snapshotd.8", "man/snapshotd.policy.5"])
def test_man_pages_render_without_warnings(page: str) -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(REPO / page)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr == ""


def test_the_man_pages_cover_every_verb_and_option() -> None:
    page = man_snapshotd(build_parser())
    for verb in (
        "check",
        "plan",
        "take",
        "prune",
        "list",
        "status",
        "export",
        "import",
        "replicate",
        "revert",
        "run",
    ):
        assert f".SS snapshotd {verb}" in page
    policy = man_policy()
    for option in (*POLICY_SCHEMA, *CONFIG_SCHEMA):
        assert f".B {option.path}".replace("-", "\\-") in policy, option.path


def test_every_table_row_has_a_worked_example() -> None:
    text = state_table_examples()
    for row in TABLE:
        assert f"#### Row {row.number}: " in text
    assert text.count("refused before libvirt is called") == sum(
        1 for row in TABLE if row.outcome.value != "ok"
    )


def run_completion(*words: str) -> list[str]:
    script = (
        f"source {REPO / 'completion' / 'snapshotd.bash'}; "
        f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; _snapshotd; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_completes_verbs_and_their_options() -> None:
    assert run_completion("snapshotd", "re") == ["replicate", "revert"]
    assert run_completion("snapshotd", "list", "--t") == ["--tree"]
    assert "--freshness" in run_completion("snapshotd", "check", "--")
    assert run_completion("snapshotd", "status", "--js") == ["--json"]


def test_bash_completion_finds_the_verb_after_options_before_it() -> None:
    assert run_completion("snapshotd", "-c", "qemu:///system", "li") == ["list"]
    assert run_completion("snapshotd", "--config", "/etc/s.yaml", "list", "--t") == ["--tree"]
    assert "--state-dir" in run_completion("snapshotd", "--")
    assert run_completion("snapshotd", "-c", "") == []  # a URI: nothing to offer
