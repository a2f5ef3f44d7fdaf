"""The verbs about policies and the snapshots they take: check, plan, take, prune.
Each: the parsed arguments -> actions -> what is shown and the exit code."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from typing import TextIO

from snapshotd.actions import fleet, freshness, planning, snapshot, sweep, taking
from snapshotd.actions.grouprun import GroupOutcome
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import open_catalog
from snapshotd.cli import common, output, progress, reports
from snapshotd.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from snapshotd.config import jsonschema
from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA
from snapshotd.config.settings import Settings
from snapshotd.core.policy import Policy
from snapshotd.errors import RequestError, SnapshotdError


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.read_settings(args, policies=True)
    if args.fleet and not args.freshness:
        raise RequestError("--fleet goes with --freshness (or status --fleet)")
    if args.freshness:
        return _freshness(args, settings, out)
    for error in settings.errors:
        print(str(error), file=sys.stderr)
    if settings.errors:
        count = len(settings.errors)
        print(f"snapshotd check: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_USAGE
    reports.print_check(settings, out)
    if settings.catalog is not None and not args.offline:
        # A shared catalog is a server to reach: check says now whether the daemon will.
        try:
            with open_catalog(settings.state_dir, database=settings.catalog):
                print("catalog: reachable, schema up to date", file=out)
        except SnapshotdError as exc:
            print(f"snapshotd check: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    if args.offline or not settings.policies:
        return EXIT_OK
    try:
        with Hypervisor.open(common.uri(args, settings)) as hv:
            domains = hv.list_domains()
    except SnapshotdError as exc:
        print(f"(domains not listed, so overlaps are not shown: {exc})", file=out)
        return EXIT_OK
    reports.print_selections(planning.selections(settings.policies, domains), out)
    return EXIT_OK


def _freshness(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """check --freshness: the Nagios plugin, for this host's domains or the fleet's."""
    if args.fleet:
        code, line = fleet.assess(settings, int(common.now().timestamp()))
    else:
        code, line = freshness.assess(settings, common.uri(args, settings), common.now)
    print(line, file=out)
    return int(code)


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    if args.domain is not None and args.policy is None:
        return _plan_adhoc(args, out)
    common.refuse_snapshot_options(args)
    settings = common.settings(args)
    policies = common.chosen_policies(args, settings)
    at = args.at or common.now()
    with common.connected(args, settings) as (hv, catalog):
        overview = planning.overview(hv, catalog, policies, args.domain, at)
    if args.json:
        common.dump(reports.overview_dict(overview), out)
    else:
        reports.print_overview(overview, out)
    return EXIT_OK


def _plan_adhoc(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(common.uri(args)) as hv:
        domain, proposed = planning.adhoc(hv, args.domain, common.adhoc_request(args))
    state = domain.state.value
    if args.json:
        common.dump(output.plan_dict(proposed.plan, state, proposed.xml), out)
    else:
        output.print_plan(proposed.plan, state, proposed.xml, out)
    return EXIT_OK


def cmd_take(args: argparse.Namespace, out: TextIO) -> int:
    if args.policy is None:
        if args.domain is None:
            raise RequestError("take needs --domain NAME (with snapshot options) or --policy NAME")
        return _take_adhoc(args, out)
    common.refuse_snapshot_options(args)
    settings = common.settings(args)
    policy = common.policy_named(settings, args.policy)
    now = common.now()  # the instant of every domain's run
    if policy.group is not None:
        return _take_group(args, settings, policy, now, out)
    with common.connected(args, settings) as (hv, catalog):
        done = taking.run_policy(
            hv,
            catalog,
            policy,
            planning.selected(hv, policy, args.domain),
            now,
            clock=common.now,
            retention_progress=lambda domain: progress.retention(hv.uri, domain),
        )
    if args.json:
        common.dump([reports.take_result(r) for r in done], out)
    else:
        for result in done:
            reports.print_take_result(reports.take_result(result), out)
        if not done:
            print(f"policy {policy.name} selects no domain", file=out)
    return EXIT_FAILURE if any(reports.take_failed(r) for r in done) else EXIT_OK


def _take_group(
    args: argparse.Namespace, settings: Settings, policy: Policy, now: dt.datetime, out: TextIO
) -> int:
    # A group's members may live on every host of the config (connect:), as the
    # daemon takes them; --connect names one host.
    several = not args.connect and settings.config_found and not settings.errors
    uris = list(settings.connect) if several else [common.uri(args, settings)]
    with contextlib.ExitStack() as stack:
        catalog = stack.enter_context(open_catalog(settings.state_dir, database=settings.catalog))
        members = []
        for uri in dict.fromkeys(uris):
            hv = stack.enter_context(Hypervisor.open(uri))
            members += [(hv, d) for d in planning.selected(hv, policy, args.domain)]
        result, pruned = taking.run_group(catalog, policy, members, now, clock=common.now)
    shown = reports.group_result(result, pruned)
    if args.json:
        common.dump(shown, out)
    else:
        reports.print_group_result(shown, out)
    failed = result.outcome is not GroupOutcome.CREATED or any(r.failed for r in pruned)
    return EXIT_FAILURE if failed else EXIT_OK


def _take_adhoc(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args, policies=False)
    with (
        Hypervisor.open(common.uri(args, settings)) as hv,
        open_catalog(settings.state_dir, database=settings.catalog) as catalog,
    ):
        domain = hv.domain(args.domain)
        plan = snapshot.plan_named(hv, catalog, domain, common.adhoc_request(args))
        with progress.memory(domain, plan.spec.memory_file):
            made = snapshot.create_planned(hv, catalog, domain, plan, policy=None, now=common.now())
    if args.json:
        result = output.snapshot_dict(made.info)
        result.update(
            row=made.plan.row.number, flags=made.plan.spec.flags.names(), domain=domain.name
        )
        common.dump(result, out)
    else:
        output.print_created(made.info, made.plan, domain.state.value, out)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args)
    policies = common.chosen_policies(args, settings)
    now = common.now()
    with common.connected(args, settings) as (hv, catalog):
        done = sweep.prune_selected(
            hv,
            catalog,
            policies,
            args.domain,
            now,
            dry_run=args.dry_run,
            around=progress.retention,
        )
    if args.json:
        common.dump([reports.prune_dict(r) for r in done], out)
    else:
        for r in done:
            reports.print_prune(r, out)
    return EXIT_FAILURE if any(r.failed for r in done) else EXIT_OK


def cmd_schema(args: argparse.Namespace, out: TextIO) -> int:
    """``snapshotd schema [--config] [--json]``: needs no file, no libvirt."""
    if args.json:
        made = jsonschema.config_schema() if args.config else jsonschema.policy_schema()
        print(json.dumps(made, indent=2), file=out)
        return EXIT_OK
    reports.print_options(CONFIG_SCHEMA if args.config else POLICY_SCHEMA, out)
    return EXIT_OK
