"""The command line: argument parsing and output only.

This is the one place where snapshotd's errors become exit codes:
0 success, 1 a failure while doing the work (libvirt refused or failed),
2 bad usage or a request refused before anything was changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from snapshotd import __version__
from snapshotd.core import snapxml
from snapshotd.core.model import Request, SnapshotInfo, SnapshotRequest, SnapshotSpec
from snapshotd.core.plan import Plan, plan_snapshot
from snapshotd.core.table import TABLE
from snapshotd.edge import files
from snapshotd.edge.hypervisor import Hypervisor
from snapshotd.errors import PlanError, SnapshotdError

DEFAULT_URI = "qemu:///system"
SCHEMA = Path("/usr/share/libvirt/schemas/domainsnapshot.rng")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


# --- argument parsing ------------------------------------------------------------


def _request_word(text: str) -> Request:
    try:
        return Request.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _disk_selector(text: str) -> tuple[str, Request]:
    disk, sep, mode = text.rpartition("=")
    if not sep or not disk:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected TARGET_OR_PATH=MODE, "
            "for example vdb=no or /images/a.qcow2=external"
        )
    return disk, _request_word(mode)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--connect",
        metavar="URI",
        default=DEFAULT_URI,
        help=f"libvirt connection URI, as virsh -c (default: {DEFAULT_URI})",
    )


def _snapshot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", "-d", required=True, help="domain name or UUID")
    parser.add_argument(
        "--memory",
        type=_request_word,
        default=Request.OMIT,
        metavar="auto|no|internal|external",
        help="what happens to the guest's memory (default: auto, the state table decides)",
    )
    parser.add_argument(
        "--disks",
        type=_request_word,
        default=Request.OMIT,
        metavar="auto|no|internal|external",
        help="the default for every disk (default: auto)",
    )
    parser.add_argument(
        "--disk",
        type=_disk_selector,
        action="append",
        default=[],
        metavar="TARGET_OR_PATH=MODE",
        help="one disk by target (vda) or source path, with its mode; repeatable",
    )
    parser.add_argument(
        "--disk-only", action="store_true", help="no memory: a disk snapshot (DISK_ONLY)"
    )
    parser.add_argument("--name", help="snapshot name (default: snapshotd-<UTC time>)")
    parser.add_argument("--description", help="snapshot description")
    parser.add_argument(
        "--directory",
        help="where external memory and disk files go; may use {domain} "
        "(default: disk overlays beside their image; external memory needs it)",
    )
    parser.add_argument(
        "--quiesce", action="store_true", help="freeze guest file systems via the guest agent"
    )
    parser.add_argument(
        "--live", action="store_true", help="external memory: keep the guest running while saving"
    )
    parser.add_argument(
        "--no-atomic", action="store_true", help="do not ask libvirt for an all-or-nothing snapshot"
    )
    parser.add_argument(
        "--reuse-external",
        action="store_true",
        help="use existing external files instead of refusing (REUSE_EXT)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapshotd",
        description="Take libvirt domain snapshots that are right for every domain state.",
    )
    parser.add_argument("--version", action="version", version=f"snapshotd {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    plan = sub.add_parser(
        "plan",
        help="show the snapshot a request would make (dry run)",
        description="Show the state table row that applies, the XML and the flags. "
        "Changes nothing.",
    )
    _common(plan)
    _snapshot_options(plan)

    take = sub.add_parser("take", help="take a snapshot now", description="Create a snapshot now.")
    _common(take)
    _snapshot_options(take)

    lst = sub.add_parser("list", help="list a domain's snapshots")
    _common(lst)
    lst.add_argument("--domain", "-d", required=True, help="domain name or UUID")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


# --- helpers ----------------------------------------------------------------------------


def _now_name() -> str:
    return "snapshotd-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _request(args: argparse.Namespace) -> SnapshotRequest:
    return SnapshotRequest(
        name=args.name or _now_name(),
        memory=args.memory,
        disks=args.disks,
        disk=tuple(args.disk),
        disk_only=args.disk_only,
        quiesce=args.quiesce,
        live=args.live,
        atomic=not args.no_atomic,
        reuse_external=args.reuse_external,
        description=args.description,
        directory=args.directory,
    )


def _spec_dict(plan: Plan, state: str, xml: str) -> dict[str, Any]:
    spec = plan.spec
    return {
        "domain": spec.domain,
        "state": state,
        "row": {"number": plan.row.number, "text": plan.row.text},
        "name": spec.name,
        "method": spec.method.value,
        "memory": {"snapshot": spec.memory.value, "file": spec.memory_file},
        "disks": [
            {
                "target": d.target,
                "snapshot": d.location.value,
                "source": d.source,
                "file": d.new_file,
                "reason": d.reason,
            }
            for d in spec.disks
        ],
        "flags": spec.flags.names(),
        "flags_value": int(spec.flags),
        "xml": xml,
    }


def _print_plan(plan: Plan, state: str, xml: str, out: TextIO) -> None:
    spec = plan.spec
    print(f"domain {spec.domain} ({state})", file=out)
    print(f"state table row {plan.row.number}: {plan.row.text}", file=out)
    memory = spec.memory.value + (f" -> {spec.memory_file}" if spec.memory_file else "")
    print(f"memory: {memory}", file=out)
    print("disks:", file=out)
    for d in spec.disks:
        target = f" -> {d.new_file}" if d.new_file else ""
        print(f"  {d.target:<6} {d.location.value:<9}{target}  ({d.reason})", file=out)
    flags = "|".join(spec.flags.names()) or "none"
    print(f"flags: {flags} ({int(spec.flags):#x})", file=out)
    print("xml:", file=out)
    out.write(xml)


def _snapshot_dict(info: SnapshotInfo, current: bool | None = None) -> dict[str, Any]:
    created = (
        dt.datetime.fromtimestamp(info.creation_time, dt.UTC).isoformat()
        if info.creation_time is not None
        else None
    )
    return {
        "name": info.name,
        "creation_time": created,
        "state": info.state,
        "memory": info.memory,
        "memory_file": info.memory_file,
        "disks": [
            {
                "target": d.name,
                "snapshot": d.snapshot,
                "file": d.source_file or d.source_dev,
            }
            for d in info.disks
        ],
        "parent": info.parent,
        "current": current,
        "description": info.description,
    }


def _disk_summary(info: SnapshotInfo) -> str:
    return ",".join(f"{d.name}={d.snapshot}" for d in info.disks) or "-"


def _validate_xml(xml: str) -> None:
    """Our XML must satisfy libvirt's own schema before it is sent."""
    if not SCHEMA.exists():
        return
    problems = snapxml.validate(xml, snapxml.load_schema(str(SCHEMA)))
    if problems:
        raise SnapshotdError(
            "internal error: the generated snapshot XML does not match libvirt's schema "
            f"({SCHEMA}): {'; '.join(problems)}"
        )


def _plan(hv: Hypervisor, args: argparse.Namespace) -> tuple[Plan, str, str]:
    domain = hv.domain(args.domain)
    plan = plan_snapshot(domain, _request(args))
    xml = snapxml.render_spec(plan.spec)
    _validate_xml(xml)
    return plan, domain.state.value, xml


# --- verbs -----------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(args.connect) as hv:
        plan, state, xml = _plan(hv, args)
        files.check_targets(plan.spec, create_dirs=False)
    if args.json:
        json.dump(_spec_dict(plan, state, xml), out, indent=2)
        out.write("\n")
    else:
        _print_plan(plan, state, xml, out)
    return EXIT_OK


def cmd_take(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(args.connect) as hv:
        plan, state, xml = _plan(hv, args)
        spec: SnapshotSpec = plan.spec
        created = files.check_targets(spec, create_dirs=True)
        try:
            returned = hv.create_snapshot(spec.domain, xml, spec.flags)
        except SnapshotdError:
            files.remove_dirs(created)
            raise
    info = snapxml.parse_snapshot(returned, source=f"snapshot {spec.name!r} from libvirt")
    if args.json:
        result = _snapshot_dict(info)
        result["row"] = plan.row.number
        result["flags"] = spec.flags.names()
        result["domain"] = spec.domain
        json.dump(result, out, indent=2)
        out.write("\n")
        return EXIT_OK
    print(f"created snapshot {info.name} of domain {spec.domain} ({state})", file=out)
    print(f"  state table row {plan.row.number}: {plan.row.text}", file=out)
    print(f"  snapshot state: {info.state}", file=out)
    memory = f"{info.memory}" + (f" -> {info.memory_file}" if info.memory_file else "")
    print(f"  memory: {memory}", file=out)
    for d in info.disks:
        where = d.source_file or d.source_dev
        print(f"  disk {d.name}: {d.snapshot}" + (f" -> {where}" if where else ""), file=out)
    print(f"  flags: {'|'.join(spec.flags.names()) or 'none'}", file=out)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    with Hypervisor.open(args.connect) as hv:
        domain = hv.domain(args.domain)
        records = hv.list_snapshots(domain.name)
    rows = []
    for rec in records:
        info = snapxml.parse_snapshot(rec.xml, source=f"snapshot {rec.name!r}")
        item = _snapshot_dict(info, rec.is_current)
        item["parent"] = rec.parent
        rows.append((info, item))
    if args.json:
        json.dump([item for _info, item in rows], out, indent=2)
        out.write("\n")
        return EXIT_OK
    header = f"{'name':<32} {'created (UTC)':<20} {'state':<14} {'memory':<9} {'disks':<28} parent"
    print(header, file=out)
    for info, item in rows:
        created = (item["creation_time"] or "-")[:19].replace("T", " ")
        mark = " *" if item["current"] else ""
        print(
            f"{(item['name'] or '') + mark:<32} {created:<20} {info.state or '-':<14} "
            f"{info.memory or '-':<9} {_disk_summary(info):<28} {item['parent'] or '-'}",
            file=out,
        )
    if not rows:
        print(f"(domain {domain.name} has no snapshots)", file=out)
    return EXIT_OK


VERBS = {"plan": cmd_plan, "take": cmd_take, "list": cmd_list}


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
