"""The verbs about the daemon: run (the daemon itself, in the foreground) and status
(what it is doing and has done, read from its state directory)."""

from __future__ import annotations

import argparse
from typing import TextIO

from snapshotd.actions import fleet, report
from snapshotd.cli import common, reports
from snapshotd.cli.common import EXIT_NOT_RUNNING, EXIT_OK
from snapshotd.config.settings import Overrides


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.read_settings(args, policies=False)
    if args.fleet:
        fleet_data = fleet.collect(settings, int(common.now().timestamp()))
        if args.json:
            common.dump(fleet_data, out)
        else:
            reports.print_fleet(fleet_data, out)
        return EXIT_OK
    data = report.collect(settings.state_dir, database=settings.catalog)
    if args.json:
        common.dump(data, out)
    else:
        reports.print_status(data, out)
    return EXIT_OK if data["daemon"]["running"] else EXIT_NOT_RUNNING


def cmd_run(args: argparse.Namespace, _out: TextIO) -> int:
    # Only `run` needs these: the other verbs start without loading the daemon.
    from snapshotd.adapters import logs, notify, watch  # noqa: PLC0415
    from snapshotd.daemon import loop as daemon  # noqa: PLC0415

    logs.setup()
    overrides = Overrides(
        config=args.config,
        policy_dir=args.policy_dir,
        state_dir=args.state_dir,
        connect=tuple(args.connect),
    )
    runner = daemon.Daemon(overrides, notifier=notify.Notifier.from_env(), workers=args.workers)
    return runner.run(watcher_factory=watch.PolicyWatcher)
