"""The verbs about snapshot metadata outside libvirt: export, import, replicate, revert.
Each: the parsed arguments -> actions/metadata.py (and importing.py) -> what is shown."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TextIO

from snapshotd.actions import grouprevert, importing, metadata
from snapshotd.actions import migrate as migrating
from snapshotd.actions import revert as reverting
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import Catalog, catalog_exists, open_catalog
from snapshotd.cli import common, output
from snapshotd.cli.common import EXIT_OK
from snapshotd.config.settings import Settings
from snapshotd.core.hierarchy import Item
from snapshotd.errors import RequestError


@contextlib.contextmanager
def _catalog_if_any(settings: Settings) -> Iterator[Catalog | None]:
    """The settings' catalog, or None when there is none: export and replicate carry the
    groups it has, and make no catalog where there is none."""
    if not catalog_exists(settings.state_dir, settings.catalog):
        yield None
        return
    with open_catalog(settings.state_dir, database=settings.catalog) as catalog:
        yield catalog


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args, policies=False)
    with (
        Hypervisor.open(common.uri(args, settings)) as hv,
        _catalog_if_any(settings) as catalog,
    ):
        domain = hv.domain(args.domain)
        target = args.out or f"{domain.name}-snapshots"
        done = metadata.export(hv, domain.name, target, secure=args.secure, catalog=catalog)
    print(f"exported {len(done.files)} snapshots of {domain.name} to {done.directory}", file=out)
    for path in done.files:
        print(f"  {path}", file=out)
    print(f"current: {done.current or 'none'} (in {done.directory}/{metadata.INDEX})", file=out)
    return EXIT_OK


def _describe(item: Item, action: str, out: TextIO) -> None:
    info = item.info
    disks = ",".join(f"{d.name}={d.snapshot or '-'}" for d in info.disks) or "-"
    created = output.iso(info.creation_time) or "-"
    print(f"{item.source}: {info.name} [{action}]", file=out)
    print(
        f"  parent {info.parent or '-'}; state {info.state or '-'}; created {created}; "
        f"memory {info.memory or '-'}; disks {disks}; domain {info.domain_uuid or '-'}",
        file=out,
    )


def _validate_documents(docs: metadata.Documents, out: TextIO) -> int:
    """import --dry-run without a domain: describe each document, checked alone."""
    for item in docs.items:
        lacking = importing.redefine_lacks(item.info)
        verdict = "valid" + (f"; to redefine it needs {', '.join(lacking)}" if lacking else "")
        _describe(item, verdict, out)
    importing.refuse_invalid(docs)
    return EXIT_OK


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    if not args.sources and not args.from_catalog:
        raise RequestError("name export directories or files to import, or --from-catalog")
    if args.domain is None and not (args.dry_run and not args.from_catalog):
        raise RequestError("--domain is needed, except to check files with --dry-run")
    docs = metadata.read_documents(args.sources)
    if args.domain is None:
        return _validate_documents(docs, out)
    importing.refuse_problems(docs)
    # The catalog is read for --from-catalog, and written when an index records groups.
    needs_catalog = args.from_catalog or bool(docs.groups)
    settings = common.settings(args, policies=False) if needs_catalog else None
    state_dir = settings.state_dir if settings is not None else None
    database = settings.catalog if settings is not None else None
    with Hypervisor.open(common.uri(args, settings)) as hv:
        domain = hv.domain(args.domain)
        prepared = importing.prepare(
            hv,
            domain,
            docs,
            state_dir=state_dir,
            from_catalog=args.from_catalog,
            snapshots=args.snapshot,
            current=args.current,
            database=database,
        )
        plan = prepared.plan
        for step in plan.steps:
            _describe(step.item, ("would " if args.dry_run else "") + step.action, out)
        for note in plan.notes:
            print(f"note: {note}", file=out)
        if args.dry_run:
            for note in prepared.notes:
                print(f"note: {note}", file=out)
            return EXIT_OK
        defined, grouped = importing.define(
            hv, domain, plan, state_dir=state_dir, groups=docs.groups, database=database
        )
    print(
        f"imported {len(defined)} snapshots into {domain.name}; "
        f"current: {plan.current or 'unchanged'}",
        file=out,
    )
    for line in grouped:
        print(f"group: {line}", file=out)
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args, policies=False)
    with (
        Hypervisor.open(common.uri(args, settings)) as source,
        Hypervisor.open(args.to) as target,
        open_catalog(settings.state_dir, database=settings.catalog) as catalog,
    ):
        done = migrating.migrate(
            source,
            target,
            args.domain,
            catalog,
            live=args.live,
            persistent=args.persistent,
            undefine_source=args.undefine_source,
            migrate_uri=args.migrate_uri,
            unsafe=args.unsafe,
            now=lambda: int(common.now().timestamp()),
        )
    for step in done.steps:
        print(f"  {step}", file=out)
    print(
        f"migrated {done.domain} to {done.target} with {len(done.redefined)} snapshots; "
        f"current: {done.current or 'none'}",
        file=out,
    )
    return EXIT_OK


def cmd_replicate(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args, policies=False)
    with (
        Hypervisor.open(common.uri(args, settings)) as source,
        Hypervisor.open(args.to) as target,
        _catalog_if_any(settings) as catalog,
    ):
        done = metadata.replicate(
            source,
            target,
            args.domain,
            remove_source_metadata=args.remove_source_metadata,
            catalog=catalog,
        )
    print(
        f"replicated {len(done.defined)} snapshots of {args.domain} to {sanitize_uri(args.to)}; "
        f"current: {done.current or 'none'}",
        file=out,
    )
    also = "" if args.remove_source_metadata else " also"
    for policy, name in done.groups:
        print(
            f"group {policy}: {name} is{also} a member on {sanitize_uri(args.to)} in the catalog",
            file=out,
        )
    if done.removed_from_source:
        print(
            f"removed the source's metadata of {len(done.removed_from_source)} snapshots "
            "(their data is untouched)",
            file=out,
        )
    return EXIT_OK


def cmd_revert(args: argparse.Namespace, out: TextIO) -> int:
    settings = common.settings(args, policies=False)
    if args.group is not None:
        with common.connected(args, settings) as (hv, catalog):
            done = grouprevert.revert_group(
                hv, catalog, args.group, args.snapshot, running=args.running, paused=args.paused
            )
        for member in done:
            if member.redefined:
                again = ", ".join(member.redefined)
                print(f"{member.domain}: redefined from the catalog: {again}", file=out)
            print(f"reverted {member.domain} to {args.snapshot}; it is {member.state}", file=out)
        return EXIT_OK
    with common.connected(args, settings) as (hv, catalog):
        redefined = reverting.revert(
            hv, catalog, args.domain, args.snapshot, running=args.running, paused=args.paused
        )
        state = hv.domain(args.domain).state.value
    if redefined:
        print(f"redefined from the catalog: {', '.join(redefined)}", file=out)
    print(f"reverted {args.domain} to {args.snapshot}; it is {state}", file=out)
    return EXIT_OK
