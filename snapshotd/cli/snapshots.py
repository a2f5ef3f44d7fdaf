"""The verb that shows a domain's snapshots: list (a table, --tree, --json), or a group
policy's snapshots with their members (--group).
The parsed arguments -> actions/listing.py -> what is shown."""

from __future__ import annotations

import argparse
from typing import TextIO

from snapshotd.actions import listing
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.cli import common, output
from snapshotd.cli.common import EXIT_OK
from snapshotd.errors import RequestError


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args, policies=False)
    if args.group is not None:
        if args.tree:
            raise RequestError("--tree shows one domain's hierarchy: use it with --domain")
        found_groups = listing.groups(settings.state_dir, args.group, database=settings.catalog)
        if args.json:
            common.dump([output.group_dict(g) for g in found_groups], out)
        else:
            output.print_groups(args.group, found_groups, out)
        return EXIT_OK
    with Hypervisor.open(common.uri(args, settings)) as hv:
        found = listing.snapshots(hv, args.domain, settings.state_dir, database=settings.catalog)
    items = [output.listed_dict(item) for item in found.snapshots]
    if args.tree:
        if args.json:
            common.dump(output.snapshot_forest(items), out)
        else:
            for line in output.tree_lines(items):
                print(line, file=out)
    elif args.json:
        common.dump(items, out)
    else:
        output.print_listing(found, out)
    return EXIT_OK
