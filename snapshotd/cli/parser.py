"""The command line's grammar: every verb, its options and their checks.

Names and paths are checked here, as the arguments are parsed, so that a bad one is
refused (exit 2, naming the option) before any connection or file is made.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from snapshotd import __version__
from snapshotd.config.settings import DEFAULT_CONFIG, DEFAULT_URI
from snapshotd.core import naming
from snapshotd.core.model import Request
from snapshotd.errors import RequestError


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


def _when(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-25T03:00:00+01:00"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


# Names and paths are checked here, as the arguments are parsed: a bad one is refused
# (exit 2, naming the option) before any connection to libvirt or any file is made.


def _domain_arg(text: str) -> str:
    bad = [
        what for what, sign in (("'/'", "/"), ("a newline", "\n"), ("NUL", "\0")) if sign in text
    ]
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty; give a domain's name or UUID (virsh list --all)"
        )
    if bad:
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot name a libvirt domain: libvirt allows no {' or '.join(bad)} in "
            "domain names; give the domain's name or UUID (virsh list --all)"
        )
    return text


def _snapshot_name_arg(text: str) -> str:
    try:
        naming.check_snapshot_name(text)
    except RequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _directory_arg(text: str) -> str:
    try:
        naming.check_directory(text, "snapshot directory")
    except RequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _out_arg(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("is empty; name the directory to write to")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} contains a control character (newline, NUL, ...); name another directory"
        )
    return text


def _connect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--connect",
        metavar="URI",
        default=None,
        help=f"libvirt connection URI, as virsh -c (default: from the config, else {DEFAULT_URI})",
    )


def _paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"daemon settings (default: {DEFAULT_CONFIG})"
    )
    parser.add_argument("--policy-dir", metavar="DIR", help="policy directory (default: config)")
    parser.add_argument("--state-dir", metavar="DIR", help="state directory (default: config)")


def _snapshot_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("snapshot options (without --policy)")
    group.add_argument(
        "--memory",
        type=_request_word,
        default=None,
        metavar="auto|no|internal|external",
        help="what happens to the guest's memory (default: auto, the state table decides)",
    )
    group.add_argument(
        "--disks",
        type=_request_word,
        default=None,
        metavar="auto|no|internal|external",
        help="the default for every disk (default: auto)",
    )
    group.add_argument(
        "--disk",
        type=_disk_selector,
        action="append",
        default=[],
        metavar="TARGET_OR_PATH=MODE",
        help="one disk by target (vda) or source path, with its mode; repeatable",
    )
    group.add_argument(
        "--disk-only", action="store_true", help="no memory: a disk snapshot (DISK_ONLY)"
    )
    group.add_argument(
        "--name", type=_snapshot_name_arg, help="snapshot name (default: snapshotd-<UTC time>)"
    )
    group.add_argument("--description", help="snapshot description")
    group.add_argument(
        "--directory",
        type=_directory_arg,
        help="where external memory and disk files go; may use {domain} "
        "(default: disk overlays beside their image; external memory needs it)",
    )
    group.add_argument(
        "--quiesce", action="store_true", help="freeze guest file systems via the guest agent"
    )
    group.add_argument(
        "--live", action="store_true", help="external memory: keep the guest running while saving"
    )
    group.add_argument(
        "--no-atomic", action="store_true", help="do not ask libvirt for an all-or-nothing snapshot"
    )
    group.add_argument(
        "--reuse-external",
        action="store_true",
        help="use existing external files instead of refusing (REUSE_EXT)",
    )


SNAPSHOT_OPTIONS = (
    "memory",
    "disks",
    "disk",
    "disk_only",
    "name",
    "description",
    "directory",
    "quiesce",
    "live",
    "no_atomic",
    "reuse_external",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapshotd",
        description="Take libvirt domain snapshots that are right for every domain state.",
    )
    parser.add_argument("--version", action="version", version=f"snapshotd {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    check = sub.add_parser(
        "check",
        help="validate the config and every policy file",
        description="Validate snapshotd.yaml and the policy directory. Exit 0 when all is "
        "valid, 2 with every error otherwise. With libvirt reachable, also shows which "
        "domains each policy selects and where policies overlap.",
    )
    _paths(check)
    _connect(check)
    check.add_argument("--offline", action="store_true", help="do not ask libvirt for domains")
    check.add_argument(
        "--freshness",
        action="store_true",
        help="Nagios-style plugin: is each monitored domain's newest snapshot younger than its "
        "policy's monitor: limits? Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one line "
        "with perfdata",
    )

    plan = sub.add_parser(
        "plan",
        help="show what would be done (dry run)",
        description="With --domain and snapshot options: the state table row, XML and flags "
        "of one snapshot. Without --domain, or with --policy: for every domain, the "
        "policies that select it, the next due time, the XML and flags in its current "
        "state (or why it would be skipped) and what retention would delete. "
        "Changes nothing.",
    )
    _connect(plan)
    _paths(plan)
    plan.add_argument("--domain", "-d", type=_domain_arg, help="domain name or UUID")
    plan.add_argument("--policy", "-p", help="only this policy")
    plan.add_argument("--at", type=_when, help="pretend it is this time (ISO 8601)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _snapshot_options(plan)

    take = sub.add_parser(
        "take",
        help="take a snapshot now",
        description="With --domain and snapshot options: one snapshot as asked. With "
        "--policy: the policy's snapshot of every domain it selects (or of --domain), "
        "then the policy's retention for each domain that got its snapshot.",
    )
    _connect(take)
    _paths(take)
    take.add_argument("--domain", "-d", type=_domain_arg, help="domain name or UUID")
    take.add_argument("--policy", "-p", help="take this policy's snapshot")
    take.add_argument("--json", action="store_true", help="machine-readable output")
    _snapshot_options(take)

    prune_parser = sub.add_parser(
        "prune",
        help="apply retention now",
        description="Delete, through libvirt, the snapshots that no retention rule keeps. "
        "Only snapshots snapshotd made under the policy are ever considered.",
    )
    _connect(prune_parser)
    _paths(prune_parser)
    prune_parser.add_argument("--policy", "-p", help="only this policy (default: all)")
    prune_parser.add_argument(
        "--domain", "-d", type=_domain_arg, help="only this domain (default: all it selects)"
    )
    prune_parser.add_argument("--dry-run", action="store_true", help="say what would be deleted")
    prune_parser.add_argument("--json", action="store_true", help="machine-readable output")

    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground (under systemd)",
        description="Run the schedules of every policy until SIGTERM. Reloads the policies on "
        "SIGHUP and when the policy directory changes; keeps the previous policies when the "
        "new ones are not valid. Speaks systemd's notify protocol when NOTIFY_SOCKET is set.",
    )
    _paths(run)
    run.add_argument(
        "-c",
        "--connect",
        metavar="URI",
        action="append",
        default=[],
        help="libvirt URI to manage; repeatable (default: the config's connect list)",
    )
    run.add_argument(
        "--workers", type=int, default=None, help="snapshots taken at once (default: config, 4)"
    )

    status = sub.add_parser(
        "status",
        help="what the daemon is doing and has done",
        description="Read the daemon's state directory: whether it is running, the policies "
        "in force and any load errors, and per domain and policy the last snapshot and its "
        "age, the next due time and the last error. Exit status 0 when the daemon is "
        "running, 3 when it is not.",
    )
    _paths(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    lst = sub.add_parser(
        "list",
        help="list a domain's snapshots",
        description="libvirt's snapshots of the domain, and the catalog-only ones "
        "(metadata: catalog) that only snapshotd's catalog knows.",
    )
    _connect(lst)
    _paths(lst)
    lst.add_argument("--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument(
        "--tree", action="store_true", help="the hierarchy, as virsh snapshot-list --tree draws it"
    )

    _metadata_parsers(sub)
    return parser


def _metadata_parsers(sub: Any) -> None:
    """export, import, replicate, revert."""
    exp = sub.add_parser(
        "export",
        help="write a domain's snapshot metadata as XML files",
        description="One libvirt snapshot XML file per snapshot, parents first, and "
        "index.json naming the current one. Files are written 0600.",
    )
    _connect(exp)
    exp.add_argument("--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID")
    exp.add_argument(
        "--out", metavar="DIR", type=_out_arg, help="directory (default: ./DOMAIN-snapshots)"
    )
    exp.add_argument(
        "--secure", action="store_true", help="include secrets (VIR_DOMAIN_SNAPSHOT_XML_SECURE)"
    )

    imp = sub.add_parser(
        "import",
        help="redefine snapshot metadata into libvirt",
        description="Check every document against the domain and libvirt first (UUID, "
        "parents, cycles, files), then redefine parents first (REDEFINE), the current one "
        "with REDEFINE|CURRENT. All or nothing. With --dry-run and no --domain: describe and "
        "validate any snapshot XML files.",
    )
    _connect(imp)
    _paths(imp)
    imp.add_argument(
        "--domain", "-d", type=_domain_arg, help="domain name or UUID (optional with --dry-run)"
    )
    imp.add_argument("sources", nargs="*", metavar="DIR|FILE", help="export directories or files")
    imp.add_argument(
        "--from-catalog",
        action="store_true",
        help="import the catalog's snapshots of the domain that libvirt does not have",
    )
    imp.add_argument(
        "--snapshot", action="append", default=[], help="with --from-catalog: only these"
    )
    imp.add_argument("--current", metavar="NAME", help="make this snapshot current")
    imp.add_argument("--dry-run", action="store_true", help="check and describe only")

    rep = sub.add_parser(
        "replicate",
        help="copy a domain's snapshot metadata to another host",
        description="Export from --connect, import into --to, where a domain with the same "
        "UUID must exist. --remove-source-metadata then deletes the source's metadata only "
        "(METADATA_ONLY), which lets libvirt migrate the domain.",
    )
    _connect(rep)
    rep.add_argument("--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID")
    rep.add_argument("--to", metavar="URI", required=True, help="the destination connection")
    rep.add_argument("--remove-source-metadata", action="store_true")

    rev = sub.add_parser(
        "revert",
        help="revert a domain to a snapshot",
        description="If libvirt has no metadata for the snapshot (catalog-only, or lost with "
        "a transient domain), it is redefined from the catalog first.",
    )
    _connect(rev)
    _paths(rev)
    rev.add_argument("--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID")
    rev.add_argument("snapshot", help="the snapshot's name")
    state = rev.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="running afterwards")
    state.add_argument("--paused", action="store_true", help="paused afterwards")
