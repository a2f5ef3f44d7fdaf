"""Policy hooks: the commands a policy runs before and after its snapshots.

Each command is an argument list run without a shell, in a new session (its own
process group), with a minimal environment plus the SNAPSHOTD_* variables.  Its
output (stdout and stderr together) goes to the journal line by line.  A hook
past its timeout is killed with its whole process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from snapshotd.adapters.logs import log_event

log = logging.getLogger("snapshotd")

MAX_OUTPUT_LINES = 200  # per hook, to the journal; the rest is counted, not logged
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True, slots=True)
class Context:
    """What a hook is told, as SNAPSHOTD_* variables."""

    policy: str
    domain: str
    domain_uuid: str
    snapshot: str
    state: str
    result: str = "pending"  # pending | ok | failed | skipped
    error: str = ""

    def environment(self) -> dict[str, str]:
        return {
            **BASE_ENV,
            "SNAPSHOTD_POLICY": self.policy,
            "SNAPSHOTD_DOMAIN": self.domain,
            "SNAPSHOTD_DOMAIN_UUID": self.domain_uuid,
            "SNAPSHOTD_SNAPSHOT": self.snapshot,
            "SNAPSHOTD_STATE": self.state,
            "SNAPSHOTD_RESULT": self.result,
            "SNAPSHOTD_ERROR": self.error,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    argv: tuple[str, ...]
    returncode: int | None  # None: it did not finish (timed out, or could not start)
    timed_out: bool
    problem: str | None  # why it counts as failed, or None

    @property
    def ok(self) -> bool:
        return self.problem is None


def run(stage: str, argv: tuple[str, ...], context: Context, timeout: float) -> Outcome:
    """Run one hook to completion or until ``timeout`` seconds have passed."""
    fields = {"policy": context.policy, "domain": context.domain, "operation": f"hook-{stage}"}
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=context.environment(),
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        failure = f"{stage} hook {argv[0]} could not start: {exc.strerror or exc}"
        log_event(log, logging.ERROR, f"{context.domain}: {failure}", **fields)
        return Outcome(argv, None, False, failure)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        try:
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a descendant left the group and kept the pipe
            proc.kill()
            output = b""
    ms = int((time.monotonic() - started) * 1000)
    _log_output(stage, argv, output, context, fields)
    problem: str | None
    if timed_out:
        problem = f"{stage} hook {argv[0]} ran past its timeout of {timeout:g} s and was killed"
    elif proc.returncode != 0:
        problem = f"{stage} hook {argv[0]} exited with status {proc.returncode}"
    else:
        problem = None
    level = logging.INFO if problem is None else logging.ERROR
    message = problem or f"{stage} hook {argv[0]} succeeded"
    log_event(log, level, f"{context.domain}: {message}", duration_ms=ms, **fields)
    return Outcome(argv, None if timed_out else proc.returncode, timed_out, problem)


def run_all(
    stage: str, commands: tuple[tuple[str, ...], ...], context: Context, timeout: float
) -> list[Outcome]:
    """Run the stage's hooks in order; every one runs, whatever the others did."""
    return [run(stage, argv, context, timeout) for argv in commands]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _log_output(
    stage: str, argv: tuple[str, ...], output: bytes, context: Context, fields: dict[str, str]
) -> None:
    lines = output.decode("utf-8", "replace").splitlines()
    for line in lines[:MAX_OUTPUT_LINES]:
        log_event(log, logging.INFO, f"{context.domain}: {stage} hook {argv[0]}: {line}", **fields)
    if len(lines) > MAX_OUTPUT_LINES:
        more = len(lines) - MAX_OUTPUT_LINES
        log_event(log, logging.INFO, f"{context.domain}: ({more} more lines of output)", **fields)
