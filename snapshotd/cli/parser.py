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
from collections.abc import Callable, Sequence
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
DOMAIN_HELP = "domain name or UUID"

# The settings options: the option, its dest and metavar, its help.
_PATH_OPTIONS = (
    ("--config", "config", "FILE", CONFIG_HELP),
    ("--policy-dir", "policy_dir", "DIR", POLICY_DIR_HELP),
    ("--state-dir", "state_dir", "DIR", STATE_DIR_HELP),
)


def _connect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--connect", metavar="URI", default=None, help=CONNECT_HELP)


def _paths(parser: argparse.ArgumentParser) -> None:
    for flag, _dest, metavar, text in _PATH_OPTIONS:
        parser.add_argument(flag, metavar=metavar, help=text)


def _connection(parser: argparse.ArgumentParser) -> None:
    """-c/--connect, then the settings options: most verbs take both."""
    _connect(parser)
    _paths(parser)


def _domain(
    parser: argparse.ArgumentParser, text: str = DOMAIN_HELP, *, required: bool = False
) -> None:
    parser.add_argument("--domain", "-d", type=_domain_arg, required=required, help=text)


def _policy(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--policy", "-p", help=text)


def _flag(parser: argparse._ActionsContainer, option: str, text: str | None = None) -> None:
    parser.add_argument(option, action="store_true", help=text)


def _json(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--json", "machine-readable output")


# --- options before the verb -------------------------------------------------------------

# The verb's dest -> how the option is spelled in messages.
GLOBAL_OPTIONS = {"connect": "-c/--connect"} | {dest: flag for flag, dest, _m, _t in _PATH_OPTIONS}
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
    for flag, dest, metavar, text in _PATH_OPTIONS:
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
    for option, text in (
        ("--memory", "what happens to the guest's memory (default: auto, the state table decides)"),
        ("--disks", "the default for every disk (default: auto)"),
    ):
        group.add_argument(
            option, type=_request_word, default=None, metavar="auto|no|internal|external", help=text
        )
    group.add_argument(
        "--disk",
        type=_disk_selector,
        action="append",
        default=[],
        metavar="TARGET_OR_PATH=MODE",
        help="one disk by target (vda) or source path, with its mode; repeatable",
    )
    _flag(group, "--disk-only", "no memory: a disk snapshot (DISK_ONLY)")
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
    for option, text in (
        ("--quiesce", "freeze guest file systems via the guest agent"),
        ("--live", "external memory: keep the guest running while saving"),
        ("--no-atomic", "do not ask libvirt for an all-or-nothing snapshot"),
        ("--reuse-external", "use existing external files instead of refusing (REUSE_EXT)"),
    ):
        _flag(group, option, text)


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


# The verbs' parsers, as build_parser adds them.
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# What adds one verb's options to its parser.
Options: TypeAlias = Callable[[argparse.ArgumentParser], None]

# Each verb's name, one-line help, description and options, in the order `@_verb` below
# registers them (the order of the usage line, the man page and the completion).
_VERBS: list[tuple[str, str, str, Options]] = []


def _verb(name: str, summary: str) -> Callable[[Options], Options]:
    """Register the function below as verb ``name``'s options; its docstring, on one line,
    is the verb's description (in its --help and the man page)."""

    def register(options: Options) -> Options:
        _VERBS.append((name, summary, " ".join((options.__doc__ or "").split()), options))
        return options

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="snapshotd",
        description="Take libvirt domain snapshots that are right for every domain state.",
    )
    parser.add_argument("--version", action="version", version=f"snapshotd {__version__}")
    _global_options(parser)
    sub: Verbs = parser.add_subparsers(
        dest="verb", required=True, metavar="VERB", parser_class=argparse.ArgumentParser
    )
    for name, summary, description, options in _VERBS:
        options(sub.add_parser(name, help=summary, description=description))
    parser.verbs = dict(sub.choices)
    return parser


@_verb("check", "validate the config and every policy file")
def _check(parser: argparse.ArgumentParser) -> None:
    """Validate snapshotd.yaml and the policy directory. Exit 0 when all is valid, 2 with every
    error otherwise. With libvirt reachable, also shows which domains each policy selects and
    where policies overlap."""
    _paths(parser)
    _connect(parser)
    _flag(parser, "--offline", "do not ask libvirt for domains")
    _flag(
        parser,
        "--freshness",
        "Nagios-style plugin: is each monitored domain's newest snapshot younger than its "
        "policy's monitor: limits? Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one line "
        "with perfdata",
    )
    _flag(
        parser,
        "--fleet",
        "with --freshness: every monitored policy's domains on every host of the shared "
        "catalog, not only this host's",
    )


@_verb("plan", "show what would be done (dry run)")
def _plan(parser: argparse.ArgumentParser) -> None:
    """With --domain and snapshot options: the state table row, XML and flags of one snapshot.
    Without --domain, or with --policy: for every domain, the policies that select it, the next
    due time, the XML and flags in its current state (or why it would be skipped) and what
    retention would delete. Changes nothing."""
    _connection(parser)
    _domain(parser)
    _policy(parser, "only this policy")
    parser.add_argument("--at", type=_when, help="pretend it is this time (ISO 8601)")
    _json(parser)
    _snapshot_options(parser)


@_verb("take", "take a snapshot now")
def _take(parser: argparse.ArgumentParser) -> None:
    """With --domain and snapshot options: one snapshot as asked. With --policy: the policy's
    snapshot of every domain it selects (or of --domain), then the policy's retention for each
    domain that got its snapshot."""
    _connection(parser)
    _domain(parser)
    _policy(parser, "take this policy's snapshot")
    _json(parser)
    _snapshot_options(parser)


@_verb("prune", "apply retention now")
def _prune(parser: argparse.ArgumentParser) -> None:
    """Delete, through libvirt, the snapshots that no retention rule keeps. Only snapshots
    snapshotd made under the policy are ever considered."""
    _connection(parser)
    _policy(parser, "only this policy (default: all)")
    _domain(parser, "only this domain (default: all it selects)")
    _flag(parser, "--dry-run", "say what would be deleted")
    _json(parser)


@_verb("run", "run the daemon in the foreground (under systemd)")
def _run(parser: argparse.ArgumentParser) -> None:
    """Run the schedules of every policy until SIGTERM. Reloads the policies on SIGHUP and when
    the policy directory changes; keeps the previous policies when the new ones are not valid.
    Speaks systemd's notify protocol when NOTIFY_SOCKET is set."""
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


@_verb("status", "what the daemon is doing and has done")
def _status(parser: argparse.ArgumentParser) -> None:
    """Read the daemon's state directory: whether it is running, the policies in force and any
    load errors, and per domain and policy the last snapshot and its age, the next due time and
    the last error. Exit status 0 when the daemon is running, 3 when it is not. With --fleet
    (a shared catalog): every host of the fleet and its last contact, and every domain's
    newest snapshot wherever it was taken; exit 0."""
    _paths(parser)
    _json(parser)
    _flag(parser, "--fleet", "the whole fleet, from the shared catalog (snapshotd.yaml catalog:)")


@_verb("schema", "the options of policy files or snapshotd.yaml, as JSON Schema for editors")
def _schema(parser: argparse.ArgumentParser) -> None:
    """Every option of a policy file (with --config: of snapshotd.yaml) with its type and
    default; with --json, the JSON Schema of the file, for an editor's YAML language server
    (yaml-language-server): each option's description, type, default and example, from the
    same data as snapshotd check and the reference. What needs several options or the host
    (cron with every, a time zone) is left to snapshotd check."""
    _json(parser)
    _flag(parser, "--config", "snapshotd.yaml's options, not a policy file's")


@_verb("list", "list a domain's snapshots")
def _list(parser: argparse.ArgumentParser) -> None:
    """libvirt's snapshots of the domain, and the catalog-only ones (metadata: catalog) that
    only snapshotd's catalog knows; each names the consistency group it belongs to.  With
    --group, a group policy's snapshots instead, each with its members."""
    _connection(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--domain", "-d", type=_domain_arg, help=DOMAIN_HELP)
    which.add_argument(
        "--group",
        "-g",
        metavar="POLICY",
        help="a group policy's snapshots, each with its members (from the catalog)",
    )
    _json(parser)
    _flag(parser, "--tree", "the hierarchy, as virsh snapshot-list --tree draws it")


@_verb("export", "write a domain's snapshot metadata as XML files")
def _export(parser: argparse.ArgumentParser) -> None:
    """One libvirt snapshot XML file per snapshot, parents first, and index.json naming the
    current one and, from the catalog, the consistency group of each snapshot that is a
    member of one. Files are written 0600."""
    _connection(parser)
    _domain(parser, required=True)
    parser.add_argument(
        "--out", metavar="DIR", type=_out_arg, help="directory (default: ./DOMAIN-snapshots)"
    )
    _flag(parser, "--secure", "include secrets (VIR_DOMAIN_SNAPSHOT_XML_SECURE)")


@_verb("import", "redefine snapshot metadata into libvirt")
def _import(parser: argparse.ArgumentParser) -> None:
    """Check every document against the domain and libvirt first (UUID, parents, cycles, files),
    then redefine parents first (REDEFINE), the current one with REDEFINE|CURRENT. All or
    nothing. A snapshot an export's index names a member of a consistency group is recorded
    as a member of that group in the catalog. With --dry-run and no --domain: describe and
    validate any snapshot XML files."""
    _connection(parser)
    _domain(parser, "domain name or UUID (optional with --dry-run)")
    parser.add_argument(
        "sources", nargs="*", metavar="DIR|FILE", help="export directories or files"
    )
    _flag(
        parser,
        "--from-catalog",
        "import the catalog's snapshots of the domain that libvirt does not have",
    )
    parser.add_argument(
        "--snapshot", action="append", default=[], help="with --from-catalog: only these"
    )
    parser.add_argument("--current", metavar="NAME", help="make this snapshot current")
    _flag(parser, "--dry-run", "check and describe only")


@_verb("replicate", "copy a domain's snapshot metadata to another host")
def _replicate(parser: argparse.ArgumentParser) -> None:
    """Export from --connect, import into --to, where a domain with the same UUID must exist.
    The catalog records the target's copy of each member of a consistency group in that group.
    --remove-source-metadata then deletes the source's metadata only (METADATA_ONLY), which lets
    libvirt migrate the domain, and the group's member is the target's."""
    _connection(parser)
    _domain(parser, required=True)
    parser.add_argument("--to", metavar="URI", required=True, help="the destination connection")
    _flag(parser, "--remove-source-metadata")


@_verb("migrate", "migrate a domain to another host, with its snapshot metadata")
def _migrate(parser: argparse.ArgumentParser) -> None:
    """libvirt refuses to migrate a domain with snapshot metadata: the metadata is kept in
    the catalog, removed from the source (METADATA_ONLY), the domain migrated, and the
    hierarchy redefined on --to (parents first, the current snapshot kept). A migration
    that fails is rolled back (the metadata redefined on the source); one that was
    interrupted is finished by the same command run again. A domain that is not running
    is migrated offline (defined on --to). The snapshots' files must be on storage both
    hosts reach."""
    _connection(parser)
    _domain(parser, required=True)
    parser.add_argument("--to", metavar="URI", required=True, help="the destination connection")
    _flag(parser, "--live", "migrate a running domain without stopping it (VIR_MIGRATE_LIVE)")
    _flag(parser, "--persistent", "define the domain on the destination (PERSIST_DEST)")
    _flag(parser, "--undefine-source", "undefine it on the source after (UNDEFINE_SOURCE)")
    parser.add_argument(
        "--migrate-uri",
        metavar="URI",
        help="where the destination's QEMU listens, as tcp://ADDRESS[:PORT] (default: "
        "libvirt's choice, the destination host's name)",
    )
    _flag(
        parser,
        "--unsafe",
        "the disks are on shared storage libvirt does not recognise as such (a bind mount, "
        "a cluster file system it does not know): skip its cache-mode check (VIR_MIGRATE_UNSAFE)",
    )


@_verb("revert", "revert a domain to a snapshot")
def _revert(parser: argparse.ArgumentParser) -> None:
    """If libvirt has no metadata for the snapshot (catalog-only, or lost with a transient
    domain), it is redefined from the catalog first.  With --group, every member of a
    consistency group goes back to the group's snapshot; each is checked first, and
    nothing is changed when one cannot be."""
    _connection(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--domain", "-d", type=_domain_arg, help=DOMAIN_HELP)
    which.add_argument(
        "--group", "-g", metavar="POLICY", help="every member of this group policy's snapshot"
    )
    parser.add_argument("snapshot", help="the snapshot's name")
    state = parser.add_mutually_exclusive_group()
    _flag(state, "--running", "running afterwards")
    _flag(state, "--paused", "paused afterwards")
