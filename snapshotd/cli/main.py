"""The command line: argument parsing and output only.

This is the one place where snapshotd's errors become exit codes:
0 success, 1 a failure while doing the work (libvirt refused or failed),
2 bad usage or a request refused before anything was changed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from snapshotd.actions import metadata, policyrun, prune, report, snapshot
from snapshotd.adapters import files
from snapshotd.adapters.configfiles import load_settings
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import Catalog, catalog_exists, open_catalog
from snapshotd.cli import output
from snapshotd.cli.parser import SNAPSHOT_OPTIONS, build_parser
from snapshotd.config.settings import DEFAULT_URI, Overrides, Settings
from snapshotd.core import freshness, snapxml
from snapshotd.core.model import DomainInfo, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.policy import Policy
from snapshotd.core.retention import describe
from snapshotd.core.schedule import next_due, span, utc_text
from snapshotd.core.table import TABLE
from snapshotd.errors import PlanError, RequestError, SnapshotdError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


# --- shared helpers ---------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _uri(args: argparse.Namespace, settings: Settings | None = None) -> str:
    if args.connect:
        return str(args.connect)
    return settings.uri if settings is not None else DEFAULT_URI


def _read_settings(args: argparse.Namespace, *, policies: bool) -> Settings:
    """Config, policy directory and state directory, with command-line overrides;
    errors are in the result, not raised."""
    overrides = Overrides(config=args.config, policy_dir=args.policy_dir, state_dir=args.state_dir)
    return load_settings(overrides, load_policies=policies)


def _settings(args: argparse.Namespace, *, policies: bool = True) -> Settings:
    """The same, refusing a configuration with errors."""
    settings = _read_settings(args, policies=policies)
    if settings.errors:
        raise RequestError(
            "the configuration is not valid (run `snapshotd check` for details):\n  "
            + "\n  ".join(str(e) for e in settings.errors)
        )
    return settings


def _policy(settings: Settings, name: str) -> Policy:
    for policy in settings.policies:
        if policy.name == name:
            return policy
    known = ", ".join(sorted(p.name for p in settings.policies)) or "none"
    raise RequestError(f"no policy is named {name!r} in {settings.policy_dir} (policies: {known})")


def _adhoc_request(args: argparse.Namespace) -> SnapshotRequest:
    return SnapshotRequest(
        name=args.name or "snapshotd-" + _now().strftime("%Y%m%dT%H%M%SZ"),
        memory=args.memory or Request.OMIT,
        disks=args.disks or Request.OMIT,
        disk=tuple(args.disk),
        disk_only=args.disk_only,
        quiesce=args.quiesce,
        live=args.live,
        atomic=not args.no_atomic,
        reuse_external=args.reuse_external,
        description=args.description,
        directory=args.directory,
    )


def _refuse_snapshot_options(args: argparse.Namespace) -> None:
    given = [
        "--" + name.replace("_", "-")
        for name in SNAPSHOT_OPTIONS
        if getattr(args, name) not in (None, False, [])
    ]
    if given:
        raise RequestError(
            f"{', '.join(given)} cannot be combined with --policy: the policy file says what "
            "its snapshots look like"
        )


def _selected(hv: Hypervisor, policy: Policy, domain: str | None) -> list[DomainInfo]:
    if domain is not None:
        info = hv.domain(domain)
        if not policy.selector.matches(info):
            raise RequestError(f"policy {policy.name!r} does not select domain {info.name!r}")
        return [info]
    return [d for d in hv.list_domains() if policy.selector.matches(d)]


def _dump(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


# --- verbs ------------------------------------------------------------------------------


def _freshness(args: argparse.Namespace) -> tuple[freshness.Code, str]:
    settings = _read_settings(args, policies=True)
    if settings.errors:
        return freshness.unknown(f"configuration not valid: {settings.errors[0]}")
    monitored = [p for p in settings.policies if p.monitor is not None]
    if not monitored:
        return freshness.unknown("no policy has monitor: (warn/crit)")
    if not catalog_exists(settings.state_dir):
        newest: dict[tuple[str, str], int] = {}
    else:
        with open_catalog(settings.state_dir) as catalog:
            newest = {}
            for row in catalog.snapshots():
                if row.policy is not None:
                    key = (row.policy, row.domain_uuid)
                    newest[key] = max(newest.get(key, 0), row.created_at)
    try:
        with Hypervisor.open(_uri(args, settings)) as hv:
            domains = hv.list_domains()
    except SnapshotdError as exc:
        return freshness.unknown(f"cannot list domains: {exc}")
    now = int(_now().timestamp())
    checks = []
    for policy in monitored:
        if policy.monitor is None:
            continue
        warn, crit = policy.monitor.warn, policy.monitor.crit
        for domain in domains:
            if not policy.selector.matches(domain) or policy.selector.skip_reason(domain):
                continue
            made = newest.get((policy.name, domain.uuid))
            checks.append(
                freshness.Check(
                    policy=policy.name,
                    domain=domain.name,
                    age=None if made is None else max(0, now - made),
                    warn=None if warn is None else int(warn.total_seconds()),
                    crit=None if crit is None else int(crit.total_seconds()),
                )
            )
    return freshness.verdict(checks)


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    if args.freshness:
        code, line = _freshness(args)
        print(line, file=out)
        return int(code)
    settings = _read_settings(args, policies=True)
    for error in settings.errors:
        print(str(error), file=sys.stderr)
    if settings.errors:
        count = len(settings.errors)
        print(f"snapshotd check: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_USAGE
    print(f"config: {settings.config_source}", file=out)
    print(f"policy directory: {settings.policy_dir} ({len(settings.policies)} policies)", file=out)
    for policy in settings.policies:
        schedule = policy.schedule
        when = schedule.cron or f"every {schedule.every}"
        keep = describe(policy.retention) if policy.retention else "never prune"
        print(f"  {policy.name} ({policy.source}): {when} {schedule.timezone}; {keep}", file=out)
    if args.offline or not settings.policies:
        return EXIT_OK
    try:
        with Hypervisor.open(_uri(args, settings)) as hv:
            domains = hv.list_domains()
    except SnapshotdError as exc:
        print(f"(domains not listed, so overlaps are not shown: {exc})", file=out)
        return EXIT_OK
    print("domains:", file=out)
    for domain in domains:
        chosen = [p.name for p in settings.policies if p.selector.matches(domain)]
        if not chosen:
            continue
        note = (
            "  (overlap: each policy takes and prunes its own snapshots)" if len(chosen) > 1 else ""
        )
        print(f"  {domain.name}: {', '.join(chosen)}{note}", file=out)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    if args.domain is not None and args.policy is None:
        return _plan_adhoc(args, out)
    _refuse_snapshot_options(args)
    settings = _settings(args)
    policies = [_policy(settings, args.policy)] if args.policy else list(settings.policies)
    at = args.at or _now()
    entries: list[dict[str, Any]] = []
    hosts: list[dict[str, Any]] = []
    with Hypervisor.open(_uri(args, settings)) as hv, open_catalog(settings.state_dir) as catalog:
        domains = [hv.domain(args.domain)] if args.domain else hv.list_domains()
        for domain in domains:
            chosen = [p for p in policies if p.selector.matches(domain)]
            hosts.append(
                {
                    "name": domain.name,
                    "state": domain.state.value,
                    "policies": [p.name for p in chosen],
                }
            )
            entries.extend(_plan_entry(hv, catalog, p, domain, at) for p in chosen)
    if args.json:
        _dump({"at": at.isoformat(), "domains": hosts, "plans": entries}, out)
        return EXIT_OK
    print(f"plan at {at.isoformat()}", file=out)
    for host in hosts:
        names = ", ".join(host["policies"]) or "no policy selects it"
        print(f"  {host['name']} ({host['state']}): {names}", file=out)
    print(file=out)
    for entry in entries:
        _print_plan_entry(entry, out)
    return EXIT_OK


def _plan_entry(
    hv: Hypervisor, catalog: Catalog, policy: Policy, domain: DomainInfo, at: dt.datetime
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "domain": domain.name,
        "state": domain.state.value,
        "policy": policy.name,
        "next_due": next_due(policy.schedule, at).isoformat(),
    }
    skip = policy.selector.skip_reason(domain)
    if skip is not None:
        entry["skip"] = skip
    else:
        try:
            request = policy.request(domain, at, quiesce=policy.quiesces(domain))
            plan = plan_snapshot(domain, request)
            xml = snapshot.render_checked(plan.spec)
        except SnapshotdError as exc:
            entry["refused"] = str(exc)
        else:
            entry["snapshot"] = output.plan_dict(plan, domain.state.value, xml)
    if policy.retention is not None:
        report = prune.prune(hv, catalog, policy, domain, at, dry_run=True)
        entry["retention"] = describe(policy.retention)
        entry["would_delete"] = report.to_delete
    return entry


def _print_plan_entry(entry: dict[str, Any], out: TextIO) -> None:
    print(f"== {entry['domain']} ({entry['state']}) by policy {entry['policy']}", file=out)
    print(f"next due: {entry['next_due']}", file=out)
    if "skip" in entry:
        print(f"skipped: {entry['skip']}", file=out)
    elif "refused" in entry:
        print(f"refused: {entry['refused']}", file=out)
    else:
        snap = entry["snapshot"]
        print(
            f"snapshot {snap['name']}: state table row {snap['row']['number']}: "
            f"{snap['row']['text']}",
            file=out,
        )
        print(f"flags: {'|'.join(snap['flags']) or 'none'}", file=out)
        for line in snap["xml"].rstrip("\n").split("\n"):
            print(f"  {line}", file=out)
    if "retention" in entry:
        doomed = ", ".join(entry["would_delete"]) or "nothing"
        print(f"retention ({entry['retention']}) would delete: {doomed}", file=out)
    print(file=out)


def _plan_adhoc(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(_uri(args)) as hv:
        domain = hv.domain(args.domain)
        plan = plan_snapshot(domain, _adhoc_request(args))
        xml = snapshot.render_checked(plan.spec)
        files.check_targets(plan.spec, create_dirs=False)
    if args.json:
        _dump(output.plan_dict(plan, domain.state.value, xml), out)
    else:
        output.print_plan(plan, domain.state.value, xml, out)
    return EXIT_OK


def cmd_take(args: argparse.Namespace, out: TextIO) -> int:
    if args.policy is None:
        if args.domain is None:
            raise RequestError("take needs --domain NAME (with snapshot options) or --policy NAME")
        return _take_adhoc(args, out)
    _refuse_snapshot_options(args)
    settings = _settings(args)
    policy = _policy(settings, args.policy)
    now = _now()
    results: list[dict[str, Any]] = []
    failed = False
    with Hypervisor.open(_uri(args, settings)) as hv, open_catalog(settings.state_dir) as catalog:
        for domain in _selected(hv, policy, args.domain):
            result: dict[str, Any] = {"domain": domain.name, "policy": policy.name}
            results.append(result)
            skip = policy.selector.skip_reason(domain)
            if skip is not None:
                result.update(outcome="skipped", reason=skip)
                continue
            try:
                made = policyrun.snapshot_with_hooks(hv, catalog, policy, domain, now)
            except SnapshotdError as exc:
                failed = True
                result.update(outcome="failed", error=str(exc))
                continue
            result.update(outcome="created", snapshot=output.snapshot_dict(made.info))
            if made.note:
                result["note"] = made.note
            # Retention runs only after this domain got its snapshot.
            # After the snapshot, so that it counts as the newest (not as "in the future").
            with _retention_progress(hv.uri, domain):
                report = prune.prune(hv, catalog, policy, domain, _now())
            result["pruned"] = report.deleted
            if report.failed:
                failed = True
                result["prune_failed"] = [{"snapshot": n, "error": e} for n, e in report.failed]
    if args.json:
        _dump(results, out)
    else:
        for r in results:
            _print_take_result(r, out)
        if not results:
            print(f"policy {policy.name} selects no domain", file=out)
    return EXIT_FAILURE if failed else EXIT_OK


def _print_take_result(result: dict[str, Any], out: TextIO) -> None:
    head = f"{result['domain']} (policy {result['policy']}): "
    if result["outcome"] == "skipped":
        print(head + f"skipped: {result['reason']}", file=out)
    elif result["outcome"] == "failed":
        print(head + f"failed: {result['error']}", file=out)
    else:
        snap = result["snapshot"]
        print(head + f"created {snap['name']}", file=out)
        if "note" in result:
            print(f"  note: {result['note']}", file=out)
        pruned = ", ".join(result["pruned"]) or "nothing"
        print(f"  pruned: {pruned}", file=out)
        for item in result.get("prune_failed", []):
            print(f"  could not delete {item['snapshot']}: {item['error']}", file=out)


@contextlib.contextmanager
def _retention_progress(uri: str, domain: DomainInfo) -> Iterator[None]:
    """Show the progress of the merges that retention starts, on a terminal.

    The block jobs are read on a second connection, opened at the first sample (so
    only on a terminal): on the connection that runs the deletion libvirt 9.0 holds
    the answers until the merge is over.
    """
    targets = tuple(d.target for d in domain.disks)
    watcher: list[Hypervisor | None] = []

    def poll() -> tuple[int, int] | None:
        if not watcher:
            try:
                watcher.append(Hypervisor.open(uri))
            except SnapshotdError:
                watcher.append(None)  # no progress shown, the deletion goes on
        opened = watcher[0]
        return opened.job_progress(domain.name, targets) if opened else None

    try:
        with output.progress(f"retention of {domain.name}", poll, sys.stderr):
            yield
    finally:
        for opened in watcher:
            if opened is not None:
                opened.close()


def _planned_memory_file(domain: DomainInfo, request: SnapshotRequest) -> str | None:
    """The memory file an external memory snapshot will write (None: none, or refused;
    create() reports the refusal itself)."""
    try:
        return plan_snapshot(domain, request).spec.memory_file
    except SnapshotdError:
        return None


def _take_adhoc(args: argparse.Namespace, out: TextIO) -> int:
    state_dir = _settings(args, policies=False).state_dir
    with Hypervisor.open(_uri(args)) as hv, open_catalog(state_dir) as catalog:
        domain = hv.domain(args.domain)
        request = _adhoc_request(args)
        memory_file = _planned_memory_file(domain, request)
        ram = domain.memory_kib * 1024 if domain.memory_kib else None
        label = f"memory of {domain.name}"
        with output.progress(label, output.file_progress(memory_file, ram), sys.stderr):
            made = snapshot.create(hv, catalog, domain, request, policy=None, now=_now())
    if args.json:
        result = output.snapshot_dict(made.info)
        result.update(
            row=made.plan.row.number, flags=made.plan.spec.flags.names(), domain=domain.name
        )
        _dump(result, out)
    else:
        output.print_created(made.info, made.plan, domain.state.value, out)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    policies = [_policy(settings, args.policy)] if args.policy else list(settings.policies)
    now = _now()
    reports = []
    with Hypervisor.open(_uri(args, settings)) as hv, open_catalog(settings.state_dir) as catalog:
        domains = [hv.domain(args.domain)] if args.domain else hv.list_domains()
        for policy in policies:
            if policy.retention is None:
                continue
            for domain in domains:
                if not policy.selector.matches(domain):
                    continue
                with _retention_progress(hv.uri, domain):
                    reports.append(
                        prune.prune(hv, catalog, policy, domain, now, dry_run=args.dry_run)
                    )
    failed = any(r.failed for r in reports)
    if args.json:
        _dump(
            [
                {
                    "policy": r.policy,
                    "domain": r.domain,
                    "dry_run": r.dry_run,
                    "would_delete" if r.dry_run else "deleted": r.to_delete
                    if r.dry_run
                    else r.deleted,
                    "failed": [{"snapshot": n, "error": e} for n, e in r.failed],
                    "kept_in_use": [{"snapshot": n, "reason": why} for n, why in r.kept],
                    "kept": [
                        {"snapshot": v.name, "reasons": list(v.reasons)}
                        for v in r.verdicts
                        if v.keep
                    ],
                }
                for r in reports
            ],
            out,
        )
    else:
        for r in reports:
            verb = "would delete" if r.dry_run else "deleted"
            names = r.to_delete if r.dry_run else r.deleted
            print(
                f"{r.domain} (policy {r.policy}): {verb} {', '.join(names) or 'nothing'}", file=out
            )
            for name, error in r.failed:
                print(f"  could not delete {name}: {error}", file=out)
            for name, why in r.kept:
                print(f"  kept {name}: {why}", file=out)
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args, policies=False)
    with Hypervisor.open(_uri(args, settings)) as hv:
        domain = hv.domain(args.domain)
        records = hv.list_snapshots(domain.name)
    rows = []
    for rec in records:
        info = snapxml.parse_snapshot(rec.xml, source=f"snapshot {rec.name!r}")
        item = output.snapshot_dict(info, rec.is_current)
        item["parent"] = rec.parent
        item["catalog_only"] = False
        rows.append((info, item))
    listed = {rec.name for rec in records}
    if catalog_exists(settings.state_dir):
        with open_catalog(settings.state_dir) as catalog:
            for row in catalog.snapshots(domain_uuid=domain.uuid):
                if row.libvirt_metadata or row.name in listed:
                    continue
                info = snapxml.parse_snapshot(row.xml, source=f"catalog: {row.name}")
                item = output.snapshot_dict(info, None)
                item["catalog_only"] = True
                item["policy"] = row.policy
                rows.append((info, item))
    items = [item for _info, item in rows]
    if args.tree:
        if args.json:
            _dump(output.snapshot_forest(items), out)
        else:
            for line in output.tree_lines(items):
                print(line, file=out)
        return EXIT_OK
    if args.json:
        _dump(items, out)
        return EXIT_OK
    print(
        f"{'name':<47} {'created (UTC)':<20} {'state':<14} {'memory':<9} {'disks':<28} parent",
        file=out,
    )
    for info, item in rows:
        created = (item["creation_time"] or "-")[:19].replace("T", " ")
        mark = " *" if item["current"] else ""
        mark += " (catalog-only)" if item["catalog_only"] else ""
        print(
            f"{(item['name'] or '') + mark:<47} {created:<20} {info.state or '-':<14} "
            f"{info.memory or '-':<9} {output.disk_summary(info):<28} {item['parent'] or '-'}",
            file=out,
        )
    if not rows:
        print(f"(domain {domain.name} has no snapshots)", file=out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(_uri(args)) as hv:
        domain = hv.domain(args.domain)
        target = args.out or f"{domain.name}-snapshots"
        done = metadata.export(hv, domain.name, target, secure=args.secure)
    print(f"exported {len(done.files)} snapshots of {domain.name} to {done.directory}", file=out)
    for path in done.files:
        print(f"  {path}", file=out)
    print(f"current: {done.current or 'none'} (in {done.directory}/{metadata.INDEX})", file=out)
    return EXIT_OK


def _describe(step_or_item: Any, action: str, out: TextIO) -> None:
    info = step_or_item.info
    disks = ",".join(f"{d.name}={d.snapshot or '-'}" for d in info.disks) or "-"
    created = output.iso(info.creation_time) or "-"
    print(f"{step_or_item.source}: {info.name} [{action}]", file=out)
    print(
        f"  parent {info.parent or '-'}; state {info.state or '-'}; created {created}; "
        f"memory {info.memory or '-'}; disks {disks}; domain {info.domain_uuid or '-'}",
        file=out,
    )


def _validate_documents(docs: metadata.Documents, out: TextIO) -> int:
    """import --dry-run without a domain: describe each document, checked alone.

    A document is valid when it is well-formed snapshot XML; what REDEFINE would
    still need (a state, a creation time, the domain definition) is said, not refused.
    """
    for item in docs.items:
        info = item.info
        lacking = [
            f"<{tag}>"
            for tag, value in (
                ("state", info.state),
                ("creationTime", info.creation_time),
                ("domain", info.domain_xml),
            )
            if value is None
        ]
        verdict = "valid" + (f"; to redefine it needs {', '.join(lacking)}" if lacking else "")
        _describe(item, verdict, out)
    if docs.problems:
        raise metadata.ImportRefused("\n  ".join(["invalid:", *map(str, docs.problems)]))
    return EXIT_OK


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    if not args.sources and not args.from_catalog:
        raise RequestError("name export directories or files to import, or --from-catalog")
    if args.domain is None and not (args.dry_run and not args.from_catalog):
        raise RequestError("--domain is needed, except to check files with --dry-run")
    docs = metadata.read_documents(args.sources)
    if args.domain is None:
        return _validate_documents(docs, out)
    if docs.problems:
        raise metadata._problems(docs.problems)
    settings = _settings(args, policies=False) if args.from_catalog else None
    with Hypervisor.open(_uri(args, settings)) as hv:
        domain = hv.domain(args.domain)
        items = list(docs.items)
        if settings is not None:
            with open_catalog(settings.state_dir) as catalog:
                existing = {r.name for r in hv.list_snapshots(domain.name)}
                chosen = metadata.catalog_items(catalog, domain, args.snapshot)
                items += [i for i in chosen if i.name not in existing or args.snapshot]
        plan = metadata.check_import(hv, domain, items, current=args.current or docs.current)
        for step in plan.steps:
            verb = ("would " if args.dry_run else "") + step.action
            _describe(step.item, verb, out)
        for note in plan.notes:
            print(f"note: {note}", file=out)
        if args.dry_run:
            return EXIT_OK
        if settings is not None:
            with open_catalog(settings.state_dir) as catalog:
                defined = metadata.run_import(hv, domain, plan, catalog=catalog)
        else:
            defined = metadata.run_import(hv, domain, plan)
    print(
        f"imported {len(defined)} snapshots into {domain.name}; "
        f"current: {plan.current or 'unchanged'}",
        file=out,
    )
    return EXIT_OK


def cmd_replicate(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(_uri(args)) as source, Hypervisor.open(args.to) as target:
        done = metadata.replicate(
            source, target, args.domain, remove_source_metadata=args.remove_source_metadata
        )
    print(
        f"replicated {len(done.defined)} snapshots of {args.domain} to {sanitize_uri(args.to)}; "
        f"current: {done.current or 'none'}",
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
    settings = _settings(args, policies=False)
    with Hypervisor.open(_uri(args, settings)) as hv, open_catalog(settings.state_dir) as catalog:
        redefined = metadata.revert(
            hv, catalog, args.domain, args.snapshot, running=args.running, paused=args.paused
        )
        state = hv.domain(args.domain).state.value
    if redefined:
        print(f"redefined from the catalog: {', '.join(redefined)}", file=out)
    print(f"reverted {args.domain} to {args.snapshot}; it is {state}", file=out)
    return EXIT_OK


EXIT_NOT_RUNNING = 3  # as LSB's and systemctl's status


def _utc(epoch: int | None) -> str:
    return "-" if epoch is None else utc_text(epoch)


def _status_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    table = [("domain", "policy", "last snapshot", "age", "next due", "last error")]
    for row in rows:
        last = row["last_snapshot"]
        if row["running"]:
            due = "overrun" if row["overrun"] else "running now"
        else:
            due = _utc(row["next_due"]) if row["next_due"] else "-"
        error = row["last_error"]["message"].splitlines()[0] if row["last_error"] else "-"
        age = span(last["age_seconds"]) if last else "-"
        table.append((row["domain"], row["policy"], last["name"] if last else "-", age, due, error))
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    for line in table:
        cells = [line[i].rjust(widths[i]) if i == 3 else line[i].ljust(widths[i]) for i in range(5)]
        print("  ".join([*cells, line[5]]), file=out)


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    settings = _read_settings(args, policies=False)
    data = report.collect(settings.state_dir)
    running = data["daemon"]["running"]
    if args.json:
        _dump(data, out)
        return EXIT_OK if running else EXIT_NOT_RUNNING
    daemon = data["daemon"]
    if running:
        pid = f"pid {daemon['pid']}" if daemon["pid"] else "pid unknown"
        state = f"running ({pid}, since {_utc(daemon['started_at'])})"
        if daemon["stopping"]:
            state += ", stopping"
    else:
        state = "not running"
    print(f"daemon: {state}", file=out)
    print(f"state directory: {data['state_dir']}", file=out)
    if data["config"]:
        print(f"config: {data['config']}", file=out)
    label = "policies in force" if running else "policies when it last ran"
    print(f"{label}: {', '.join(data['policies']) or 'none'}", file=out)
    for error in data["load_errors"]:
        print(f"  policy error: {error}", file=out)
    for link in data["connections"]:
        up = "connected" if link["connected"] else f"not connected: {link['error']}"
        print(f"connection {link['uri']}: {up}", file=out)
    if data["last_error"]:
        print(f"last error: {data['last_error']}", file=out)
    rows = data["domains"]
    if not rows:
        print("(no snapshots scheduled or taken yet)", file=out)
        return EXIT_OK if running else EXIT_NOT_RUNNING
    _status_table(rows, out)
    return EXIT_OK if running else EXIT_NOT_RUNNING


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


VERBS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "plan": cmd_plan,
    "take": cmd_take,
    "prune": cmd_prune,
    "list": cmd_list,
    "status": cmd_status,
    "export": cmd_export,
    "import": cmd_import,
    "replicate": cmd_replicate,
    "revert": cmd_revert,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        return VERBS[args.verb](args, stream)
    except PlanError as exc:
        row = f"\n  state table row {exc.row}: {TABLE[exc.row - 1].text}" if exc.row else ""
        print(f"snapshotd {args.verb}: {exc}{row}", file=sys.stderr)
        return exc.exit_code
    except SnapshotdError as exc:
        print(f"snapshotd {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
