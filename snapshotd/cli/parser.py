"""The command line's grammar: every verb, its options and their checks.

Names and paths are checked here, as the arguments are parsed, so that a bad one is
refused (exit 2, naming the option) before any connection or file is made.

The connection and settings options (-c/--connect, --config, --policy-dir, --state-dir)
may also come before the verb, as virsh's -c does: parsing moves them onto the verb's
own (given after the verb as well, the one after the verb wins), and refuses one the
verb does not take.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from typing import NoReturn, TypeAlias

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


CONNECT_HELP = f"libvirt connection URI, as virsh -c (default: from the config, else {DEFAULT_URI})"
CONFIG_HELP = f"daemon settings (default: {DEFAULT_CONFIG})"
POLICY_DIR_HELP = "policy directory (default: config)"
STATE_DIR_HELP = "state directory (default: config)"


def _connect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--connect", metavar="URI", default=None, help=CONNECT_HELP)


def _paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--policy-dir", metavar="DIR", help=POLICY_DIR_HELP)
    parser.add_argument("--state-dir", metavar="DIR", help=STATE_DIR_HELP)


# --- options before the verb -------------------------------------------------------------

# The verb's dest -> how the option is spelled in messages.
GLOBAL_OPTIONS = {
    "connect": "-c/--connect",
    "config": "--config",
    "policy_dir": "--policy-dir",
    "state_dir": "--state-dir",
}
_BEFORE = "before_verb_"  # the dests of the options given before the verb


class _Parser(argparse.ArgumentParser):
    """The top-level parser: after parsing, the options given before the verb become the
    verb's (see _apply_global_options)."""

    verbs: dict[str, argparse.ArgumentParser]

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        _apply_global_options(self, parsed)
        return parsed, extras


def _global_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "connection and settings",
        "accepted before the verb as well as after it, by the verbs that take them "
        "(after the verb wins when both are given)",
    )
    # SUPPRESS: the namespace has the dest only when the option was given.
    group.add_argument(
        "-c",
        "--connect",
        dest=_BEFORE + "connect",
        metavar="URI",
        action="append",
        default=argparse.SUPPRESS,
        help=CONNECT_HELP + "; repeatable for run",
    )
    for flag, dest, metavar, text in (
        ("--config", "config", "FILE", CONFIG_HELP),
        ("--policy-dir", "policy_dir", "DIR", POLICY_DIR_HELP),
        ("--state-dir", "state_dir", "DIR", STATE_DIR_HELP),
    ):
        group.add_argument(
            flag, dest=_BEFORE + dest, metavar=metavar, default=argparse.SUPPRESS, help=text
        )


def _apply_global_options(parser: _Parser, args: argparse.Namespace) -> None:
    """Move each option given before the verb onto the verb's own, unless the verb's was
    given too; refuse (exit 2) one the verb does not take."""
    for dest, spelling in GLOBAL_OPTIONS.items():
        before = vars(args).pop(_BEFORE + dest, None)
        if before is None:
            continue
        if not hasattr(args, dest):  # the verb has no such option
            _refuse_before_verb(parser.verbs[args.verb], spelling, args.verb)
        after = getattr(args, dest)
        if isinstance(after, list):  # run's -c: a list of URIs, [] when none was given
            if not after:
                setattr(args, dest, list(before))
        elif after is None:
            setattr(args, dest, before[-1] if isinstance(before, list) else before)


def _refuse_before_verb(verb_parser: argparse.ArgumentParser, option: str, verb: str) -> NoReturn:
    verb_parser.error(
        f"{option} was given before the verb, but `snapshotd {verb}` has no {option} option"
    )


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


# The verbs' parsers, as build_parser adds them (one function per verb, below).
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="snapshotd",
        description="Take libvirt domain snapshots that are right for every domain state.",
    )
    parser.add_argument("--version", action="version", version=f"snapshotd {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(
        dest="verb", required=True, metavar="VERB", parser_class=argparse.ArgumentParser
    )
    _check_parser(sub)
    _plan_parser(sub)
    _take_parser(sub)
    _prune_parser(sub)
    _run_parser(sub)
    _status_parser(sub)
    _list_parser(sub)
    _export_parser(sub)
    _import_parser(sub)
    _replicate_parser(sub)
    _revert_parser(sub)
    parser.verbs = dict(sub.choices)
    return parser


def _check_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "check",
        help="validate the config and every policy file",
        description="Validate snapshotd.yaml and the policy directory. Exit 0 when all is "
        "valid, 2 with every error otherwise. With libvirt reachable, also shows which "
        "domains each policy selects and where policies overlap.",
    )
    _paths(parser)
    _connect(parser)
    parser.add_argument("--offline", action="store_true", help="do not ask libvirt for domains")
    parser.add_argument(
        "--freshness",
        action="store_true",
        help="Nagios-style plugin: is each monitored domain's newest snapshot younger than its "
        "policy's monitor: limits? Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one line "
        "with perfdata",
    )


def _plan_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "plan",
        help="show what would be done (dry run)",
        description="With --domain and snapshot options: the state table row, XML and flags "
        "of one snapshot. Without --domain, or with --policy: for every domain, the "
        "policies that select it, the next due time, the XML and flags in its current "
        "state (or why it would be skipped) and what retention would delete. "
        "Changes nothing.",
    )
    _connect(parser)
    _paths(parser)
    parser.add_argument("--domain", "-d", type=_domain_arg, help="domain name or UUID")
    parser.add_argument("--policy", "-p", help="only this policy")
    parser.add_argument("--at", type=_when, help="pretend it is this time (ISO 8601)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _snapshot_options(parser)


def _take_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "take",
        help="take a snapshot now",
        description="With --domain and snapshot options: one snapshot as asked. With "
        "--policy: the policy's snapshot of every domain it selects (or of --domain), "
        "then the policy's retention for each domain that got its snapshot.",
    )
    _connect(parser)
    _paths(parser)
    parser.add_argument("--domain", "-d", type=_domain_arg, help="domain name or UUID")
    parser.add_argument("--policy", "-p", help="take this policy's snapshot")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    _snapshot_options(parser)


def _prune_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "prune",
        help="apply retention now",
        description="Delete, through libvirt, the snapshots that no retention rule keeps. "
        "Only snapshots snapshotd made under the policy are ever considered.",
    )
    _connect(parser)
    _paths(parser)
    parser.add_argument("--policy", "-p", help="only this policy (default: all)")
    parser.add_argument(
        "--domain", "-d", type=_domain_arg, help="only this domain (default: all it selects)"
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be deleted")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _run_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "run",
        help="run the daemon in the foreground (under systemd)",
        description="Run the schedules of every policy until SIGTERM. Reloads the policies on "
        "SIGHUP and when the policy directory changes; keeps the previous policies when the "
        "new ones are not valid. Speaks systemd's notify protocol when NOTIFY_SOCKET is set.",
    )
    _paths(parser)
    parser.add_argument(
        "-c",
        "--connect",
        metavar="URI",
        action="append",
        default=[],
        help="libvirt URI to manage; repeatable (default: the config's connect list)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="snapshots taken at once (default: config, 4)"
    )


def _status_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "status",
        help="what the daemon is doing and has done",
        description="Read the daemon's state directory: whether it is running, the policies "
        "in force and any load errors, and per domain and policy the last snapshot and its "
        "age, the next due time and the last error. Exit status 0 when the daemon is "
        "running, 3 when it is not.",
    )
    _paths(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _list_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "list",
        help="list a domain's snapshots",
        description="libvirt's snapshots of the domain, and the catalog-only ones "
        "(metadata: catalog) that only snapshotd's catalog knows.",
    )
    _connect(parser)
    _paths(parser)
    parser.add_argument(
        "--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--tree", action="store_true", help="the hierarchy, as virsh snapshot-list --tree draws it"
    )


def _export_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "export",
        help="write a domain's snapshot metadata as XML files",
        description="One libvirt snapshot XML file per snapshot, parents first, and "
        "index.json naming the current one. Files are written 0600.",
    )
    _connect(parser)
    parser.add_argument(
        "--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID"
    )
    parser.add_argument(
        "--out", metavar="DIR", type=_out_arg, help="directory (default: ./DOMAIN-snapshots)"
    )
    parser.add_argument(
        "--secure", action="store_true", help="include secrets (VIR_DOMAIN_SNAPSHOT_XML_SECURE)"
    )


def _import_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "import",
        help="redefine snapshot metadata into libvirt",
        description="Check every document against the domain and libvirt first (UUID, "
        "parents, cycles, files), then redefine parents first (REDEFINE), the current one "
        "with REDEFINE|CURRENT. All or nothing. With --dry-run and no --domain: describe and "
        "validate any snapshot XML files.",
    )
    _connect(parser)
    _paths(parser)
    parser.add_argument(
        "--domain", "-d", type=_domain_arg, help="domain name or UUID (optional with --dry-run)"
    )
    parser.add_argument(
        "sources", nargs="*", metavar="DIR|FILE", help="export directories or files"
    )
    parser.add_argument(
        "--from-catalog",
        action="store_true",
        help="import the catalog's snapshots of the domain that libvirt does not have",
    )
    parser.add_argument(
        "--snapshot", action="append", default=[], help="with --from-catalog: only these"
    )
    parser.add_argument("--current", metavar="NAME", help="make this snapshot current")
    parser.add_argument("--dry-run", action="store_true", help="check and describe only")


def _replicate_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "replicate",
        help="copy a domain's snapshot metadata to another host",
        description="Export from --connect, import into --to, where a domain with the same "
        "UUID must exist. --remove-source-metadata then deletes the source's metadata only "
        "(METADATA_ONLY), which lets libvirt migrate the domain.",
    )
    _connect(parser)
    parser.add_argument(
        "--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID"
    )
    parser.add_argument("--to", metavar="URI", required=True, help="the destination connection")
    parser.add_argument("--remove-source-metadata", action="store_true")


def _revert_parser(sub: Verbs) -> None:
    parser = sub.add_parser(
        "revert",
        help="revert a domain to a snapshot",
        description="If libvirt has no metadata for the snapshot (catalog-only, or lost with "
        "a transient domain), it is redefined from the catalog first.",
    )
    _connect(parser)
    _paths(parser)
    parser.add_argument(
        "--domain", "-d", type=_domain_arg, required=True, help="domain name or UUID"
    )
    parser.add_argument("snapshot", help="the snapshot's name")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="running afterwards")
    state.add_argument("--paused", action="store_true", help="paused afterwards")
