"""The command line's entry point: parse, hand the arguments to the verb, and turn
snapshotd's errors into exit codes (the one place where that happens):
0 success, 1 a failure while doing the work (libvirt refused or failed),
2 bad usage or a request refused before anything was changed
(status: 3 when the daemon is not running; check --freshness: Nagios's codes;
141 when the reader of the output went away, as a shell reports SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from snapshotd.cli import daemon, metadata, policies, snapshots
from snapshotd.cli.parser import build_parser
from snapshotd.core.table import TABLE
from snapshotd.errors import PlanError, SnapshotdError

Verb = Callable[[argparse.Namespace, TextIO], int]
EXIT_PIPE = 141  # as a shell reports a command that SIGPIPE ended

VERBS: dict[str, Verb] = {
    "run": daemon.cmd_run,
    "check": policies.cmd_check,
    "plan": policies.cmd_plan,
    "take": policies.cmd_take,
    "prune": policies.cmd_prune,
    "list": snapshots.cmd_list,
    "status": daemon.cmd_status,
    "export": metadata.cmd_export,
    "import": metadata.cmd_import,
    "replicate": metadata.cmd_replicate,
    "migrate": metadata.cmd_migrate,
    "revert": metadata.cmd_revert,
    "schema": policies.cmd_schema,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command line (``argv``, else sys.argv); its output goes to ``out``
    (else stdout), errors to stderr. Returns the exit code."""
    args = build_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        return VERBS[args.verb](args, stream)
    except BrokenPipeError:
        # The reader went away (`snapshotd list | head`): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except PlanError as exc:
        row = f"\n  state table row {exc.row}: {TABLE[exc.row - 1].text}" if exc.row else ""
        print(f"snapshotd {args.verb}: {exc}{row}", file=sys.stderr)
        return exc.exit_code
    except SnapshotdError as exc:
        print(f"snapshotd {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
