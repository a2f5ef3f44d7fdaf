"""Policy hooks as real processes: environment, exit status, timeouts, process groups."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from snapshotd.adapters import hooks

CONTEXT = hooks.Context(
    policy="nightly",
    domain="web",
    domain_uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    snapshot="nightly-20261125T030000Z",
    state="running",
    result="failed",
    error="libvirt said no",
)


def test_a_hook_sees_every_variable_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "env"
    outcome = hooks.run("after", ("/bin/sh", "-c", f"env > {out}"), CONTEXT, 10)
    assert outcome.ok
    assert outcome.returncode == 0
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert {k: v for k, v in env.items() if k.startswith("SNAPSHOTD_")} == {
        "SNAPSHOTD_POLICY": "nightly",
        "SNAPSHOTD_DOMAIN": "web",
        "SNAPSHOTD_DOMAIN_UUID": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "SNAPSHOTD_SNAPSHOT": "nightly-20261125T030000Z",
        "SNAPSHOTD_STATE": "running",
        "SNAPSHOTD_RESULT": "failed",
        "SNAPSHOTD_ERROR": "libvirt said no",
    }
    # The daemon's own environment (NOTIFY_SOCKET, credentials...) is not passed on.
    assert "HOME" not in env
    assert "NOTIFY_SOCKET" not in env


def test_arguments_reach_the_program_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "args"
    script = tmp_path / "args.sh"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {out}\n')
    script.chmod(0o755)
    assert hooks.run("before", (str(script), "a b", "$HOME", "; rm -rf /"), CONTEXT, 10).ok
    assert out.read_text().splitlines() == ["a b", "$HOME", "; rm -rf /"]


def test_a_failing_hook_is_reported_with_its_status(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="snapshotd")
    outcome = hooks.run("before", ("/bin/sh", "-c", "echo broken >&2; exit 3"), CONTEXT, 10)
    assert not outcome.ok
    assert outcome.returncode == 3
    assert outcome.problem == "before hook /bin/sh exited with status 3"
    assert "before hook /bin/sh: broken" in caplog.text  # its output goes to the log


def test_a_hook_that_cannot_start_is_a_failure() -> None:
    outcome = hooks.run("before", ("/nonexistent/hook",), CONTEXT, 10)
    assert not outcome.ok
    assert outcome.returncode is None
    assert "could not start" in (outcome.problem or "")


def test_a_hanging_hook_is_killed_with_its_process_group() -> None:
    marker = f"{time.monotonic_ns() % 10**6}.5"
    started = time.monotonic()
    outcome = hooks.run(
        "before", ("/bin/sh", "-c", f"sleep {marker} & sleep {marker}; wait"), CONTEXT, 1
    )
    elapsed = time.monotonic() - started
    assert outcome.timed_out
    assert outcome.problem == "before hook /bin/sh ran past its timeout of 1 s and was killed"
    assert elapsed < 8
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, check=False)
    assert left.stdout == b"", "the background child survived"


def test_every_hook_of_a_stage_runs_in_order(tmp_path: Path) -> None:
    log = tmp_path / "order"
    commands = (
        ("/bin/sh", "-c", f"echo one >> {log}; exit 1"),
        ("/bin/sh", "-c", f"echo two >> {log}"),
    )
    outcomes = hooks.run_all("before", commands, CONTEXT, 10)
    assert [o.ok for o in outcomes] == [False, True]
    assert log.read_text().split() == ["one", "two"]
