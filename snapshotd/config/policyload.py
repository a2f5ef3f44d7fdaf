"""Policy files and snapshotd.yaml: YAML text in, a typed value or located errors out.

Pure: the functions here take the text and the file's name; reading files (size
cap, owners, modes, symlinks) is ``snapshotd.adapters.configfiles``.

Every option is described once, as data, in ``POLICY_SCHEMA`` and
``CONFIG_SCHEMA`` (path, type, default, description, example); the validator and
the reference documentation (``schema_markdown``) are both made from it.

Validation is a pipeline of small steps, each collecting every problem it finds
before the next one runs on what is left:

1. syntax    size cap; the node tree is composed by PyYAML's SafeLoader, which
             refuses each event before it becomes a node: anchors and aliases (the
             billion-laughs bomb), tags (``!!python/object``), nesting deeper than
             ``MAX_DEPTH``; and a second document.  Nodes carry the positions.
2. keys      every mapping key is a string and appears once.
3. structure unknown options (with "did you mean"), wrong types, missing options.
4. values    each option's own rules (cron syntax, time zone, durations, paths).
5. cross     options that only make sense together, checked against the seed's
             state table for every domain state the policy accepts.

Values are never built by a YAML constructor: scalars are read from the composed
node tree, which has no Python objects in it, only text and resolved tags.  So a
policy file cannot run code, whatever it contains.
"""

from __future__ import annotations

import datetime as dt
import difflib
import enum
import posixpath
import re
import string
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import yaml

from snapshotd.config.settings import (
    DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_POLICY_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_URI,
    DEFAULT_WORKERS,
    Settings,
)
from snapshotd.core import naming, schedule
from snapshotd.core.model import DomainState, Request
from snapshotd.core.plan import REFUSED_STATES
from snapshotd.core.policy import (
    NAME_FIELDS,
    BeforeFailure,
    Hooks,
    Metadata,
    Monitor,
    Policy,
    Quiesce,
    Selector,
    SnapshotSettings,
    render_name,
)
from snapshotd.core.retention import Retention, format_duration
from snapshotd.core.schedule import Schedule
from snapshotd.core.table import INVALID_ADVICE, UNSUPPORTED_ADVICE, Outcome, Row, lookup
from snapshotd.errors import RequestError

MAX_BYTES = 256 * 1024  # a policy file is a few hundred bytes; anything this big is wrong
MAX_DEPTH = 10  # mappings and lists inside each other; a policy needs 3
MAX_COUNT = 100_000  # retention counts
MIN_EVERY = schedule.MIN_EVERY
POLICY_NAME_MAX = 64
DESCRIPTION_MAX = 4096

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

_ONLINE = frozenset({DomainState.RUNNING, DomainState.PAUSED, DomainState.BLOCKED})
_POLICY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]*")
_TARGET_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]*")
_TIME_SPEC_RE = re.compile(r"(?:%[A-Za-z%]|[^%])*")
# Name templates are tried on this many consecutive runs after _T1.
_T1 = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
_SAMPLE_RUNS = 48
_SAMPLE_DOMAIN = "web01"
_YEAR_DIRECTIVES = frozenset("YyGgs")


# --------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, slots=True)
class LocatedError:
    """One problem in one file, where an editor would show it.

    ``line`` and ``column`` are 1-based; both are 0 when the problem is the file
    as a whole (its owner or mode, say).  ``path`` is the option's dotted path
    (``schedule.cron``, ``domains.include[1]``); empty for the document itself.
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        # A file name is untrusted: a newline in it must not start a fake log line.
        name = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in self.file)
        where = f"{name}:{self.line}:{self.column}" if self.line > 0 else name
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


# --------------------------------------------------------------------------
# The schema


class Kind(enum.StrEnum):
    """An option's type, as the documentation names it."""

    SECTION = "section"
    STRING = "string"
    BOOLEAN = "boolean"
    COUNT = "count"
    DURATION = "duration"
    CHOICE = "choice"
    STRINGS = "list of strings"
    CHOICES = "list of choices"
    CHOICE_MAP = "mapping"
    COMMANDS = "list of commands"


@dataclass(frozen=True, slots=True)
class Option:
    """One option of a YAML file: the single source for validation and documentation.

    ``default`` and ``example`` are YAML text for the option's value; the default
    is read by the same code that reads a file, so the documented default is the
    one that applies.  ``default`` None means there is no default value; then
    ``default_note`` says what happens (or the option is ``required``).
    """

    path: str
    kind: Kind
    description: str
    default: str | None = None
    example: str | None = None
    choices: tuple[str, ...] = ()
    required: bool = False
    default_note: str | None = None

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def type_text(self) -> str:
        """What a value must look like, for error messages and the reference."""
        choices = ", ".join(self.choices)
        return {
            Kind.SECTION: "a mapping of options",
            Kind.STRING: "a string",
            Kind.BOOLEAN: "true or false",
            Kind.COUNT: f"a whole number from 0 to {MAX_COUNT}",
            Kind.DURATION: "a duration such as 30s, 15m, 1h or 1d",
            Kind.CHOICE: f"one of {choices}",
            Kind.STRINGS: "a list of strings",
            Kind.CHOICES: f"a list of: {choices}",
            Kind.CHOICE_MAP: f"a mapping of disk (target or source path) to one of {choices}",
            Kind.COMMANDS: "a list of commands, each a list of strings: an absolute program "
            "path and its arguments (no shell)",
        }[self.kind]


_REQUESTS = ("auto", "no", "internal", "external")
_STATES = ("running", "paused", "shutoff", "blocked")

POLICY_SCHEMA: tuple[Option, ...] = (
    Option(
        "name",
        Kind.STRING,
        "The policy's name: unique across all policy files, `{policy}` in snapshot "
        "names, and the owner of the snapshots it takes (its retention only ever looks "
        "at those). Letters, digits and `. _ + : @ -`, starting with a letter or digit, "
        f"at most {POLICY_NAME_MAX} characters.",
        example="web-hourly",
        default_note="the file's name without `.yaml` or `.yml`",
    ),
    Option("domains", Kind.SECTION, "Which domains the policy snapshots."),
    Option(
        "domains.include",
        Kind.STRINGS,
        "The domains to snapshot: shell-style globs on domain names (`*`, `?`, `[...]`) "
        "or `uuid:` followed by a domain's UUID.",
        default='["*"]',
        example='["web-*", "uuid:6695eb01-f6a4-8304-79aa-97f2502e193f"]',
    ),
    Option(
        "domains.exclude",
        Kind.STRINGS,
        "Domains left out even when `include` names them: globs or `uuid:` UUIDs.",
        default="[]",
        example='["web-scratch"]',
    ),
    Option(
        "domains.states",
        Kind.CHOICES,
        "The domain states in which a snapshot is taken; a selected domain in any other "
        "state is skipped, and the reason logged. The `snapshot` section must work for "
        "every state listed (checked when the file is loaded): a shut-off domain has no "
        "memory to save, for example.",
        default="[running, paused, shutoff]",
        example="[running, paused]",
        choices=_STATES,
    ),
    Option(
        "schedule",
        Kind.SECTION,
        "When snapshots are taken. Exactly one of `cron` and `every` is required.",
        required=True,
    ),
    Option(
        "schedule.cron",
        Kind.STRING,
        "A cron expression (minute, hour, day of month, month, day of week), read in `timezone`.",
        example='"0 * * * *"',
        default_note="none; give `cron` or `every`",
    ),
    Option(
        "schedule.every",
        Kind.DURATION,
        f"A fixed interval between snapshots, at least {int(MIN_EVERY.total_seconds())}s.",
        example="15m",
        default_note="none; give `cron` or `every`",
    ),
    Option(
        "schedule.timezone",
        Kind.STRING,
        "The IANA time zone that `cron` is read in and retention's hours, days and weeks "
        "are counted in. Snapshot names always use UTC.",
        default="UTC",
        example="Europe/Berlin",
    ),
    Option(
        "schedule.jitter",
        Kind.DURATION,
        "A random delay of up to this long before each run, so that policies due at the "
        "same moment do not all start at once. Shorter than `every`.",
        default="0s",
        example="30s",
    ),
    Option(
        "schedule.catch_up",
        Kind.BOOLEAN,
        "After downtime (daemon stopped, host off), take one snapshot as soon as "
        "possible for the runs that were missed; never a burst of them.",
        default="true",
        example="false",
    ),
    Option(
        "snapshot",
        Kind.SECTION,
        "What each snapshot looks like. The combination is checked against libvirt's "
        "state table (docs/state-table.md) for every state in `domains.states` when the "
        "file is loaded.",
    ),
    Option(
        "snapshot.memory",
        Kind.CHOICE,
        "The domain's memory: `auto` (the state table decides: internal for a running "
        "domain's full snapshot, none otherwise), `no`, `internal` (inside the qcow2 "
        "images) or `external` (a file in `directory`).",
        default="auto",
        example="external",
        choices=_REQUESTS,
    ),
    Option(
        "snapshot.disks",
        Kind.CHOICE,
        "The request for every disk that `disk` does not name: `auto` (the state table "
        "decides), `no` (leave the disk out), `internal` or `external`.",
        default="auto",
        example="external",
        choices=_REQUESTS,
    ),
    Option(
        "snapshot.disk",
        Kind.CHOICE_MAP,
        "Requests for single disks, each named by its target (`vda`) or its source path. "
        "`internal` and `external` cannot be mixed in one snapshot.",
        default="{}",
        example='{vdb: "no"}',
        choices=_REQUESTS,
    ),
    Option(
        "snapshot.disk_only",
        Kind.BOOLEAN,
        "Take a disk-only snapshot (libvirt's DISK_ONLY): the disks without the memory.",
        default="false",
        example="true",
    ),
    Option(
        "snapshot.quiesce",
        Kind.CHOICE,
        "Freeze the guest's file systems through the QEMU guest agent while the disks "
        "are snapshotted; needs `memory: no` or `disk_only: true`. `true`: fail without "
        "the agent (running domains only); `try`: without the freeze when the agent "
        "does not answer.",
        default="false",
        example="try",
        choices=("false", "true", "try"),
    ),
    Option(
        "snapshot.live",
        Kind.BOOLEAN,
        "Keep the guest running while its memory is saved (libvirt's LIVE); needs "
        "`memory: external`.",
        default="false",
        example="true",
    ),
    Option(
        "snapshot.atomic",
        Kind.BOOLEAN,
        "All disks or none (libvirt's ATOMIC).",
        default="true",
        example="false",
    ),
    Option(
        "snapshot.name",
        Kind.STRING,
        "The snapshot name template: `{policy}`, `{domain}` and `{time:FORMAT}` (strftime "
        "directives such as `%Y`, without widths or flags; always UTC). It must contain "
        "`{policy}` and `{time:...}` with the year, and tell the runs of the schedule "
        "apart, so that no two snapshots are ever given the same name.",
        default='"{policy}-{time:%Y%m%dT%H%M%SZ}"',
        example='"{policy}-{domain}-{time:%Y%m%d-%H%M}"',
    ),
    Option(
        "snapshot.description",
        Kind.STRING,
        f"The snapshot's description (at most {DESCRIPTION_MAX} characters).",
        default='"taken by snapshotd"',
        example='"hourly, kept for a day"',
    ),
    Option(
        "snapshot.directory",
        Kind.STRING,
        "Where external memory and disk files go: an absolute directory, which may use "
        "`{domain}`. Required for external memory.",
        example="/var/lib/libvirt/snapshots/{domain}",
        default_note="none: external disk overlays go beside their images",
    ),
    Option(
        "snapshot.metadata",
        Kind.CHOICE,
        "Who keeps the snapshot's metadata: `libvirt`, or `catalog` (libvirt's "
        "NO_METADATA; snapshotd's catalog keeps the XML).",
        default="libvirt",
        example="catalog",
        choices=("libvirt", "catalog"),
    ),
    Option(
        "retention",
        Kind.SECTION,
        "Which of the policy's own snapshots to keep. A snapshot is deleted only when no "
        "rule keeps it, and the newest is always kept. A count of 0 keeps nothing by "
        "that rule; a section of only zeros is refused.",
        default_note="none: nothing is ever deleted",
    ),
    Option(
        "retention.keep_last",
        Kind.COUNT,
        "Keep the newest this many.",
        default="0",
        example="3",
    ),
    Option(
        "retention.hourly",
        Kind.COUNT,
        "Keep the newest snapshot of each of the last this many hours that have one.",
        default="0",
        example="24",
    ),
    Option(
        "retention.daily",
        Kind.COUNT,
        "Keep the newest snapshot of each of the last this many days that have one.",
        default="0",
        example="7",
    ),
    Option(
        "retention.weekly",
        Kind.COUNT,
        "Keep the newest snapshot of each of the last this many (ISO) weeks that have one.",
        default="0",
        example="4",
    ),
    Option(
        "retention.monthly",
        Kind.COUNT,
        "Keep the newest snapshot of each of the last this many months that have one.",
        default="0",
        example="12",
    ),
    Option(
        "retention.yearly",
        Kind.COUNT,
        "Keep the newest snapshot of each of the last this many years that have one.",
        default="0",
        example="1",
    ),
    Option(
        "retention.min_age",
        Kind.DURATION,
        "Never delete a snapshot younger than this, whatever the counts say.",
        default="0s",
        example="1h",
    ),
    Option(
        "hooks",
        Kind.SECTION,
        "Commands run around each of the policy's snapshots (by the daemon and by "
        "`snapshotd take --policy`). Each is an argument list run without a shell, in its "
        "own process group, with SNAPSHOTD_POLICY, SNAPSHOTD_DOMAIN, SNAPSHOTD_DOMAIN_UUID, "
        "SNAPSHOTD_SNAPSHOT, SNAPSHOTD_STATE, SNAPSHOTD_RESULT and SNAPSHOTD_ERROR in its "
        "environment; its output goes to the journal.",
        default_note="none",
    ),
    Option(
        "hooks.before",
        Kind.COMMANDS,
        "Run before the snapshot, in order (SNAPSHOTD_RESULT is `pending`).",
        default="[]",
        example='[["/usr/local/sbin/app-flush", "--fast"]]',
    ),
    Option(
        "hooks.after",
        Kind.COMMANDS,
        "Run after a successful snapshot (SNAPSHOTD_RESULT is `ok`).",
        default="[]",
        example='[["/usr/local/sbin/notify", "snapshot done"]]',
    ),
    Option(
        "hooks.on_failure",
        Kind.COMMANDS,
        "Run when the snapshot failed or was skipped by a `before` hook (SNAPSHOTD_RESULT "
        "is `failed` or `skipped`, SNAPSHOTD_ERROR says why).",
        default="[]",
        example='[["/usr/local/sbin/page-oncall"]]',
    ),
    Option(
        "hooks.timeout",
        Kind.DURATION,
        "How long each hook may run; past it, its whole process group is killed and the "
        "hook counts as failed. At least 1s.",
        default="60s",
        example="30s",
    ),
    Option(
        "hooks.before_failure",
        Kind.CHOICE,
        "What a failed (or timed-out) `before` hook does: `skip` the snapshot, or "
        "`continue` and take it anyway.",
        default="skip",
        example="continue",
        choices=("skip", "continue"),
    ),
    Option(
        "monitor",
        Kind.SECTION,
        "Freshness limits for `snapshotd check --freshness` (a Nagios-style check): how old "
        "the newest snapshot of each domain the policy selects may be.",
        default_note="none: the policy is not checked",
    ),
    Option(
        "monitor.warn",
        Kind.DURATION,
        "Older than this is WARNING.",
        example="2h",
        default_note="none",
    ),
    Option(
        "monitor.crit",
        Kind.DURATION,
        "Older than this (or no snapshot at all) is CRITICAL.",
        example="6h",
        default_note="none",
    ),
)


CONFIG_SCHEMA: tuple[Option, ...] = (
    Option(
        "policy_dir",
        Kind.STRING,
        "The directory of policy files (`*.yaml` and `*.yml`, read in sorted order).",
        default=DEFAULT_POLICY_DIR,
        example="/etc/snapshotd/policies.d",
    ),
    Option(
        "state_dir",
        Kind.STRING,
        "Where snapshotd keeps its state: the catalog of its snapshots and the time of "
        "each policy's last run.",
        default=DEFAULT_STATE_DIR,
        example="/var/lib/snapshotd",
    ),
    Option(
        "connect",
        Kind.STRINGS,
        "The libvirt connection URIs to take snapshots on, as `virsh -c` takes them.",
        default=f'["{DEFAULT_URI}"]',
        example=f'["{DEFAULT_URI}"]',
    ),
    Option(
        "workers",
        Kind.COUNT,
        "How many snapshots the daemon takes at once, across all domains (at least 1; "
        "never more than one at a time per domain).",
        default=str(DEFAULT_WORKERS),
        example="4",
    ),
    Option(
        "operation_timeout",
        Kind.DURATION,
        "How long one scheduled snapshot (with its retention) may take before the daemon "
        "reports it as overrun: an error in the journal and the status line, and its "
        "worker is handed to the next job.  The libvirt call itself cannot be cancelled "
        "safely, so the domain gets no other operation until it returns; what it made "
        "is then recorded as usual.  At least 1s.",
        default=format_duration(DEFAULT_OPERATION_TIMEOUT),
        example="30m",
    ),
    Option(
        "metrics_address",
        Kind.STRING,
        "Where the daemon serves Prometheus metrics (`/metrics`), as HOST:PORT. Keep it on "
        "localhost or a management network: the metrics name every domain and policy.",
        example="127.0.0.1:9477",
        default_note="none: no metrics are served",
    ),
)


# --------------------------------------------------------------------------
# Reading nodes


class _Mark(Protocol):
    """A position in a YAML stream (PyYAML's pure and libyaml marks both have it)."""

    line: int  # 0-based
    column: int  # 0-based


def _mark_position(mark: _Mark | None) -> tuple[int, int]:
    if mark is None:
        return 1, 1
    return mark.line + 1, mark.column + 1


def _show(text: str, limit: int = 60) -> str:
    """A value quoted for a message, cut short when long."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _describe(node: yaml.Node) -> str:
    """What a node is, in words: "a list", "the number 5", "the string 'x'"."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = str(node.value)
    words = {
        _NULL: "an empty value",
        _BOOL: f"the boolean {value}",
        _INT: f"the number {value[:40]}",
        _FLOAT: f"the number {value[:40]}",
        _TIMESTAMP: f"the date {value[:40]}",
    }
    return words.get(node.tag, f"the string {_show(value, 40)}")


def _is_str(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _STR


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _code_point(character: object) -> str:
    """PyYAML reports a bad character as an int (text) or a byte string."""
    if isinstance(character, int):
        return f"U+{character:04X}"
    if isinstance(character, str) and len(character) == 1:
        return f"U+{ord(character):04X}"
    return repr(character)


def _tag_as_written(tag: str) -> str:
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag[len(prefix) :] if tag.startswith(prefix) else tag


class _Refused(Exception):
    """YAML that snapshotd files never need, found while composing."""

    def __init__(self, mark: _Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _StrictLoader(yaml.SafeLoader):
    """The SafeLoader's composer, refusing as it goes, before any node is built from
    them: aliases and anchors (the billion-laughs bomb), tags (``!!python/object``)
    and collections nested deeper than ``MAX_DEPTH``.  No constructor ever runs:
    the result is the node tree, text and resolved tags only."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                mark,
                f"YAML aliases (*{event.anchor}) are not allowed in snapshotd files; "
                "write the value out",
            )
        if event.anchor is not None:
            raise _Refused(
                mark,
                f"YAML anchors (&{event.anchor}) are not allowed in snapshotd files; "
                "write the value out",
            )
        if event.tag is not None:
            raise _Refused(
                mark,
                f"YAML tags ({_show(_tag_as_written(event.tag))}) are not allowed in "
                "snapshotd files; they hold plain values only (quote a value to make it "
                "a string)",
            )
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(mark, f"the document is nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> yaml.Node | None:
    """The one document's node tree (None for an empty stream), in one pass."""
    loader = _StrictLoader(text)
    try:
        loader.get_event()  # type: ignore[no-untyped-call]  # the stream's start
        node = None
        try:
            if not loader.check_event(yaml.StreamEndEvent):
                node = loader.compose_document()
        except (ValueError, OverflowError):
            # PyYAML's scanner turns "\U80001000" into chr() of a number past U+10FFFF
            # and fails with a bare ValueError or OverflowError, not a YAMLError.
            raise _Refused(
                loader.get_mark(),
                "an escape in a double-quoted string names no Unicode character (the "
                "largest is \\U0010FFFF); write the character itself or a valid escape",
            ) from None
        if not loader.check_event(yaml.StreamEndEvent):
            event: Any = loader.peek_event()  # type: ignore[no-untyped-call]
            raise _Refused(
                event.start_mark,
                "a second YAML document; a snapshotd file holds exactly one "
                "(remove this '---' and what follows, or put it in its own file)",
            )
        return node
    finally:
        loader.dispose()


class _Failed:
    """A value that could not be read; its error is already recorded."""


_FAILED = _Failed()


class _Reader:
    """One file being read: its errors and the nodes and values found so far."""

    def __init__(self, filename: str, schema: Sequence[Option]) -> None:
        self.filename = filename
        self.schema = {o.path: o for o in schema}
        self.errors: list[LocatedError] = []
        self.root: yaml.Node | None = None
        self.nodes: dict[str, yaml.Node] = {}  # option path -> value node
        self.values: dict[str, object] = {}  # option path -> value read from the file
        self.failed: set[str] = set()  # options whose value could not be read

    # -- errors

    def error_at(self, mark: _Mark | None, path: str, message: str) -> None:
        line, column = _mark_position(mark)
        self.errors.append(LocatedError(self.filename, line, column, path, message))

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.error_at(node.start_mark if node is not None else None, path, message)

    def where(self, *paths: str) -> tuple[yaml.Node | None, str]:
        """The node of the first of ``paths`` given in the file, else its nearest
        section in the file, for locating a problem that several options share."""
        for path in paths:
            if path in self.nodes:
                return self.nodes[path], path
        parent = paths[0]
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in self.nodes:
                return self.nodes[parent], paths[0]
        return self.root, paths[0]

    def sorted_errors(self) -> list[LocatedError]:
        return sorted(self.errors, key=lambda e: (e.line, e.column))

    # -- step 1: syntax

    def document(self, text: str) -> yaml.Node | _Failed | None:
        """The composed document, None for an empty file, or _FAILED."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_BYTES:
            self.error_at(
                None,
                "",
                f"the file is {size} bytes long; at most {MAX_BYTES} ({MAX_BYTES // 1024} KiB) "
                "are read",
            )
            return _FAILED
        try:
            return _compose(text)
        except _Refused as refused:
            self.error_at(refused.mark, "", refused.message)
        except yaml.MarkedYAMLError as exc:
            self._syntax_error(exc)
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            self.errors.append(
                LocatedError(
                    self.filename,
                    line,
                    column,
                    "",
                    f"character {_code_point(exc.character)} is not allowed in a YAML file",
                )
            )
        except yaml.YAMLError as exc:
            self.error_at(None, "", f"not valid YAML: {exc}")
        return _FAILED

    def _syntax_error(self, exc: yaml.MarkedYAMLError) -> None:
        message = f"not valid YAML: {exc.problem or exc.context or 'unreadable'}"
        context = exc.context_mark
        if exc.problem and exc.context and context is not None:
            if exc.problem_mark is not None and context.line != exc.problem_mark.line:
                message += f" ({exc.context} that starts at line {context.line + 1})"
            else:
                message += f" ({exc.context})"
        self.error_at(exc.problem_mark or context, "", message)

    # -- step 2: keys

    def check_keys(self, node: yaml.Node, path: str) -> None:
        """Every mapping key anywhere is a string, and no key appears twice."""
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.check_keys(item, f"{path}[{index}]")
            return
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not _is_str(key):
                if key.tag == "tag:yaml.org,2002:merge":
                    message = "YAML merge keys (<<) are not allowed; write the options out"
                else:
                    message = (
                        f"keys must be strings, and this key is {_describe(key)}; "
                        "quote it if it is meant as a name"
                    )
                self.error(key, path, message)
                continue
            name = str(key.value)
            child = f"{path}.{name}" if path else name
            if name in seen:
                first = seen[name].start_mark.line + 1
                self.error(
                    key,
                    child,
                    f"{_show(name)} is given twice (first on line {first}); YAML would "
                    "silently keep only the last one, so remove one of them",
                )
                continue
            seen[name] = key
            self.check_keys(value, child)

    # -- step 3: structure

    def structure(self, node: yaml.MappingNode, prefix: str) -> None:
        """Record each known option's node; refuse unknown and missing options."""
        given: set[str] = set()
        for key, value in node.value:
            if not _is_str(key):
                continue  # reported by check_keys
            name = str(key.value)
            if name in given:
                continue  # a duplicate, reported by check_keys
            given.add(name)
            path = f"{prefix}.{name}" if prefix else name
            option = self.schema.get(path)
            if option is None:
                self.error(key, path, self._unknown(name, prefix))
                continue
            if option.kind is Kind.SECTION:
                if _is_null(value):
                    continue  # an empty section is the same as none
                if not isinstance(value, yaml.MappingNode):
                    self._type_error(option, value, path)
                    # Its options are unknown, not defaults: checks that need them skip.
                    self.failed.update(o for o in self.schema if o.startswith(path + "."))
                    continue
                self.nodes[path] = value
                self.structure(value, path)
            else:
                self.nodes[path] = value
        for option in self.schema.values():
            if option.required and option.parent == prefix and option.key not in given:
                what = option.description.replace("`", "")
                self.error(node, option.path, f"is required and missing. {what}")

    def _unknown(self, name: str, prefix: str) -> str:
        siblings = [o.key for o in self.schema.values() if o.parent == prefix]
        message = f"unknown option {_show(name)}"
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
        elsewhere = [o.path for o in self.schema.values() if o.key == name and o.parent]
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif elsewhere:
            message += f"; did you mean {' or '.join(elsewhere)}? (it belongs in that section)"
        else:
            where = f"under {prefix}" if prefix else "at the top level"
            message += f"; the options {where} are {', '.join(siblings)}"
        return message

    def _type_error(self, option: Option, node: yaml.Node, path: str) -> None:
        message = f"expected {option.type_text}, got {_describe(node)}"
        if _is_null(node) and option.kind is not Kind.SECTION:
            message += " (remove the line to use the default)"
        elif option.kind is Kind.STRING and isinstance(node, yaml.ScalarNode):
            message += " (quote it to make it a string)"
        elif option.kind is Kind.BOOLEAN and node.tag == _BOOL:
            message += " (write true or false)"
        self.failed.add(path)
        self.error(node, path, message)

    # -- step 4: values

    def read_values(self) -> None:
        for path, node in self.nodes.items():
            option = self.schema[path]
            if option.kind is Kind.SECTION:
                continue
            value = self.convert(option, node, path)
            if isinstance(value, _Failed):
                self.failed.add(path)
                continue
            check = _CHECKS.get(path)
            message = check(value) if check is not None else None
            if message is not None:
                self.failed.add(path)
                self.error(node, path, message)
                continue
            self.values[path] = value

    def convert(self, option: Option, node: yaml.Node, path: str) -> object:
        """The Python value of ``node`` for ``option``, or _FAILED (error recorded)."""
        kind = option.kind
        if kind in (Kind.STRINGS, Kind.CHOICES):
            if not isinstance(node, yaml.SequenceNode):
                self._type_error(option, node, path)
                return _FAILED
            items: list[str] = []
            ok = True
            for index, item in enumerate(node.value):
                value = self._list_item(option, item, f"{path}[{index}]")
                if isinstance(value, _Failed):
                    ok = False
                else:
                    items.append(value)
            return tuple(items) if ok else _FAILED
        if kind is Kind.CHOICE_MAP:
            return self._choice_map(option, node, path)
        if kind is Kind.COMMANDS:
            return self._commands(option, node, path)
        if not isinstance(node, yaml.ScalarNode):
            self._type_error(option, node, path)
            return _FAILED
        return self._scalar(option, node, path)

    def _list_item(self, option: Option, item: yaml.Node, path: str) -> str | _Failed:
        if not _is_str(item):
            what = "a string" if option.kind is Kind.STRINGS else f"one of {option.choices}"
            self.error(item, path, f"expected {what}, got {_describe(item)}")
            return _FAILED
        text = str(item.value)
        if option.kind is Kind.CHOICES:
            return self._choose(option, item, text, path)
        check = _ITEM_CHECKS.get(option.path)
        message = check(text) if check is not None else None
        if message is not None:
            self.error(item, path, message)
            return _FAILED
        return text

    def _choice_map(
        self, option: Option, node: yaml.Node, path: str
    ) -> tuple[tuple[str, str], ...] | _Failed:
        if _is_null(node):
            return ()
        if not isinstance(node, yaml.MappingNode):
            self._type_error(option, node, path)
            return _FAILED
        pairs: list[tuple[str, str]] = []
        ok = True
        seen: set[str] = set()
        for key, value in node.value:
            if not _is_str(key) or str(key.value) in seen:
                ok = False  # reported by check_keys
                continue
            name = str(key.value)
            seen.add(name)
            where = f"{path}.{name}"
            problem = _disk_key_problem(name)
            if problem is not None:
                self.error(key, where, problem)
                ok = False
                continue
            if not isinstance(value, yaml.ScalarNode) or value.tag not in (_STR, _BOOL):
                self.error(value, where, f"expected {option.type_text}, got {_describe(value)}")
                ok = False
                continue
            choice = self._choose(option, value, str(value.value), where)
            if isinstance(choice, _Failed):
                ok = False
            else:
                pairs.append((name, choice))
        return tuple(pairs) if ok else _FAILED

    def _commands(
        self, option: Option, node: yaml.Node, path: str
    ) -> tuple[tuple[str, ...], ...] | _Failed:
        if _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self._type_error(option, node, path)
            return _FAILED
        commands: list[tuple[str, ...]] = []
        ok = True
        for index, item in enumerate(node.value):
            where = f"{path}[{index}]"
            if isinstance(item, yaml.SequenceNode) and not item.value:
                self.error(item, where, "is an empty command")
                ok = False
                continue
            if not isinstance(item, yaml.SequenceNode):
                self.error(
                    item,
                    where,
                    f'expected a command as a list such as ["/usr/bin/logger", "done"], '
                    f"got {_describe(item)}; commands run without a shell",
                )
                ok = False
                continue
            words = [
                w
                for w in item.value
                if _is_str(w) or (isinstance(w, yaml.ScalarNode) and w.tag in (_INT, _BOOL))
            ]
            if len(words) != len(item.value):
                self.error(item, where, "every word of a command must be a string")
                ok = False
                continue
            argv = tuple(str(w.value) for w in words)
            if not argv[0].startswith("/") or "\0" in "".join(argv):
                self.error(
                    item.value[0],
                    f"{where}[0]",
                    f"{_show(argv[0])} must be an absolute path to a program (snapshotd "
                    "runs as root and does not search PATH)",
                )
                ok = False
                continue
            commands.append(argv)
        return tuple(commands) if ok else _FAILED

    def _choose(self, option: Option, node: yaml.Node, text: str, path: str) -> str | _Failed:
        word = text.strip().lower()
        if word in option.choices:
            return word
        if option.path == "domains.states" and word in {s.value for s in REFUSED_STATES}:
            why = REFUSED_STATES[DomainState(word)][1]
            self.error(node, path, f"{word} domains are never snapshotted: {why}")
            return _FAILED
        message = f"{_show(text)} is not one of {', '.join(option.choices)}"
        close = difflib.get_close_matches(word, option.choices, n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
        self.error(node, path, message)
        return _FAILED

    def _scalar(self, option: Option, node: yaml.ScalarNode, path: str) -> object:
        text = str(node.value)
        kind = option.kind
        if kind is Kind.STRING and node.tag == _STR:
            return text
        if kind is Kind.BOOLEAN and node.tag == _BOOL and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is Kind.COUNT and node.tag == _INT:
            return self._count(node, path)
        if kind is Kind.DURATION and node.tag in (_STR, _INT):
            return self._duration(node, text, path)
        if kind is Kind.CHOICE and node.tag in (_STR, _BOOL):
            return self._choose(option, node, text, path)
        self._type_error(option, node, path)
        return _FAILED

    def _count(self, node: yaml.ScalarNode, path: str) -> int | _Failed:
        try:
            number = int(yaml.constructor.SafeConstructor().construct_yaml_int(node))
        except (ValueError, OverflowError):
            number = MAX_COUNT + 1
        if number < 0:
            self.error(node, path, f"must be 0 or more, not {number}")
            return _FAILED
        if number > MAX_COUNT:
            self.error(node, path, f"must be at most {MAX_COUNT}")
            return _FAILED
        return number

    def _duration(self, node: yaml.Node, text: str, path: str) -> dt.timedelta | _Failed:
        try:
            value = schedule.parse_duration(text)
        except (ValueError, OverflowError) as exc:
            self.error(node, path, str(exc))
            return _FAILED
        if value < dt.timedelta(0):
            self.error(node, path, f"{_show(text)} is negative")
            return _FAILED
        return value

    # -- typed access to values (the file's, or the schema's defaults)

    def get(self, path: str) -> object:
        if path in self.values:
            return self.values[path]
        return _defaults(tuple(self.schema.values()))[path]

    def text(self, path: str) -> str:
        return cast(str, self.get(path))

    def opt_text(self, path: str) -> str | None:
        return cast("str | None", self.get(path))

    def flag(self, path: str) -> bool:
        return cast(bool, self.get(path))

    def count(self, path: str) -> int:
        return cast(int, self.get(path))

    def duration(self, path: str) -> dt.timedelta:
        return cast(dt.timedelta, self.get(path))

    def opt_duration(self, path: str) -> dt.timedelta | None:
        return cast("dt.timedelta | None", self.get(path))

    def command_lists(self, path: str) -> tuple[tuple[str, ...], ...]:
        return cast("tuple[tuple[str, ...], ...]", self.get(path))

    def texts(self, path: str) -> tuple[str, ...]:
        return cast("tuple[str, ...]", self.get(path))

    def pairs(self, path: str) -> tuple[tuple[str, str], ...]:
        return cast("tuple[tuple[str, str], ...]", self.get(path))

    def ok(self, *paths: str) -> bool:
        """Were all these options read (or defaulted) without error?"""
        return not any(p in self.failed for p in paths)

    def given(self, path: str) -> bool:
        return path in self.nodes


# --------------------------------------------------------------------------
# Step 4: each option's own rules.  A check returns an error message or None.


def _control_character(text: str, allowed: str = "") -> bool:
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)


def _check_policy_name(name: str) -> str | None:
    if len(name) > POLICY_NAME_MAX or not _POLICY_NAME_RE.fullmatch(name):
        return (
            f"policy name {_show(name)} is not allowed: use letters, digits and . _ + : @ -, "
            f"starting with a letter or digit, at most {POLICY_NAME_MAX} characters"
        )
    return None


def _check_pattern(pattern: str) -> str | None:
    if not pattern.strip():
        return "an empty pattern selects nothing"
    if _control_character(pattern):
        return f"{_show(pattern)} contains a control character"
    if pattern.startswith("uuid:"):
        text = pattern[5:].strip().lower()
        try:
            canonical = str(uuid.UUID(text)) == text  # as libvirt spells it, with dashes
        except ValueError:
            canonical = False
        if not canonical:
            return (
                f"{_show(pattern)} is not uuid: followed by a UUID "
                "(like uuid:6695eb01-f6a4-8304-79aa-97f2502e193f)"
            )
    return None


def _check_include(patterns: object) -> str | None:
    if patterns == ():
        return 'selects no domain; list globs or uuids, or leave it out for all ("*")'
    return None


def _check_states(states: object) -> str | None:
    if states == ():
        return "lists no state, so the policy would never take a snapshot"
    return None


def _check_cron(expr: object) -> str | None:
    try:
        return schedule.check_cron(cast(str, expr))
    except (ValueError, OverflowError) as exc:
        return str(exc)


def _check_timezone(name: object) -> str | None:
    try:
        return schedule.check_timezone(cast(str, name))
    except (ValueError, OSError) as exc:
        return str(exc)


def _check_every(every: object) -> str | None:
    if cast(dt.timedelta, every) < MIN_EVERY:
        return (
            f"must be at least {int(MIN_EVERY.total_seconds())}s; more frequent "
            "snapshots would keep the domains busy taking them"
        )
    return None


def _check_description(text: object) -> str | None:
    description = cast(str, text)
    if len(description) > DESCRIPTION_MAX:
        return f"is {len(description)} characters long; at most {DESCRIPTION_MAX}"
    if _control_character(description, "\n\t"):
        return "contains a control character (only newlines and tabs are allowed)"
    return None


def _check_name_template(template: object) -> str | None:
    """The template's own rules; rendering it needs the policy name (cross step)."""
    text = cast(str, template)
    try:
        fields = naming.template_fields(
            text, NAME_FIELDS, "snapshot name template", specs=frozenset({"time"})
        )
    except RequestError as exc:
        return exc.message
    missing = [f"{{{f}}}" for f in ("policy", "time") if f not in fields]
    if missing:
        return (
            f"snapshot name template {_show(text)} must contain {' and '.join(missing)}: "
            "{policy} keeps the names of different policies apart and {time:...} those "
            "of different runs"
        )
    for _literal, field, spec, _conversion in string.Formatter().parse(text):
        if field != "time":
            continue
        if not (spec and _TIME_SPEC_RE.fullmatch(spec)):
            return (
                f"snapshot name template {_show(text)}: {{time}} needs a format of "
                "strftime directives without widths or flags, such as {time:%Y%m%dT%H%M%SZ}"
            )
        if not _YEAR_DIRECTIVES.intersection(re.findall(r"%([A-Za-z%])", spec)):
            return (
                f"snapshot name template {_show(text)}: {{time:{spec}}} must include the "
                "year (%Y), or names repeat from one year to the next"
            )
    return None


def _check_directory(template: object) -> str | None:
    text = cast(str, template)
    try:
        naming.check_directory(text, "snapshot directory")
        naming.template_fields(text, frozenset({"domain"}), "snapshot directory")
    except RequestError as exc:
        return exc.message
    return None


def _check_plain_directory(path: object) -> str | None:
    text = cast(str, path)
    try:
        naming.check_directory(text, "directory")
    except RequestError as exc:
        return exc.message
    return None


def _check_uri(uri: str) -> str | None:
    if not _URI_RE.fullmatch(uri) or _control_character(uri):
        return f"{_show(uri)} is not a libvirt connection URI (like qemu:///system)"
    return None


def _check_connect(uris: object) -> str | None:
    if uris == ():
        return "lists no connection; snapshotd needs at least one (qemu:///system)"
    return None


def _disk_key_problem(name: str) -> str | None:
    if name.startswith("/"):
        if _control_character(name) or ".." in name.split("/"):
            return f"disk path {_show(name)} must be a plain absolute path (no '..')"
        return None
    if not _TARGET_RE.fullmatch(name):
        return (
            f"disk {_show(name)} is neither a disk target (vda, sdb, ...) nor an "
            "absolute source path"
        )
    return None


_CHECKS: dict[str, Callable[[object], str | None]] = {
    "name": lambda v: _check_policy_name(cast(str, v)),
    "domains.include": _check_include,
    "domains.states": _check_states,
    "schedule.cron": _check_cron,
    "schedule.timezone": _check_timezone,
    "schedule.every": _check_every,
    "snapshot.name": _check_name_template,
    "snapshot.description": _check_description,
    "snapshot.directory": _check_directory,
    "policy_dir": _check_plain_directory,
    "state_dir": _check_plain_directory,
    "connect": _check_connect,
}

_ITEM_CHECKS: dict[str, Callable[[str], str | None]] = {
    "domains.include": _check_pattern,
    "domains.exclude": _check_pattern,
    "connect": _check_uri,
}


# --------------------------------------------------------------------------
# Defaults, read from the schema's YAML text by the same code as a file.

_DEFAULTS: dict[tuple[Option, ...], dict[str, object]] = {}


def _defaults(schema: tuple[Option, ...]) -> dict[str, object]:
    cached = _DEFAULTS.get(schema)
    if cached is not None:
        return cached
    values: dict[str, object] = {}
    reader = _Reader("<schema>", schema)
    for option in schema:
        if option.kind is Kind.SECTION:
            continue
        if option.default is None:
            values[option.path] = None
            continue
        node = yaml.compose(option.default, Loader=yaml.SafeLoader)
        if node is None:
            raise AssertionError(f"{option.path}: empty default")
        values[option.path] = reader.convert(option, node, option.path)
    if reader.errors:  # a mistake in the schema itself
        raise AssertionError("; ".join(str(e) for e in reader.errors))
    _DEFAULTS[schema] = values
    return values


# --------------------------------------------------------------------------
# Step 5: cross-field checks


def _cross_hooks_and_monitor(r: _Reader) -> None:
    if r.ok("hooks.timeout") and r.duration("hooks.timeout") < dt.timedelta(seconds=1):
        node, path = r.where("hooks.timeout")
        r.error(node, path, "must be at least 1s")
    if not r.given("monitor"):
        return
    warn, crit = r.opt_duration("monitor.warn"), r.opt_duration("monitor.crit")
    if r.ok("monitor.warn") and r.ok("monitor.crit"):
        if warn is None and crit is None:
            r.error(r.nodes["monitor"], "monitor", "gives neither warn nor crit")
        elif warn is not None and crit is not None and warn > crit:
            node, path = r.where("monitor.warn")
            r.error(node, path, "is longer than monitor.crit; WARNING must come first")


def _policy_name(r: _Reader, filename: str) -> str | None:
    if r.given("name"):
        return r.text("name") if r.ok("name") else None
    stem = _stem(filename)
    problem = _check_policy_name(stem)
    if problem is not None:
        r.error(r.root, "name", f"the policy is named after its file: {problem}; set name:")
        return None
    return stem


def _stem(filename: str) -> str:
    base = posixpath.basename(filename)
    for suffix in (".yaml", ".yml"):
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def _cross_schedule(r: _Reader) -> None:
    if "schedule" not in r.nodes:
        return  # missing: reported as required
    cron, every = r.given("schedule.cron"), r.given("schedule.every")
    if cron and every:
        r.error(
            r.nodes["schedule.every"],
            "schedule.every",
            "give cron or every, not both",
        )
    elif not cron and not every:
        r.error(
            r.nodes["schedule"],
            "schedule",
            'needs cron (a cron expression such as "0 * * * *") or every (an interval such as 15m)',
        )
    interval = r.opt_duration("schedule.every")
    if every and r.ok("schedule.every", "schedule.jitter") and interval is not None:
        jitter = r.duration("schedule.jitter")
        if jitter >= interval:
            node, path = r.where("schedule.jitter")
            every_text = str(r.nodes["schedule.every"].value)
            r.error(
                node,
                path,
                f"must be shorter than every ({every_text}), or one run could start after "
                "the next one is due",
            )


def _fold(requests: Sequence[Request]) -> Request | None:
    """The table's one disk column from the disks' requests, as the planner folds
    them (``snapshotd.core.plan``); None when they mix internal and external."""
    if all(r is Request.NO for r in requests):
        return Request.NO
    explicit = {r for r in requests if r not in (Request.NO, Request.OMIT)}
    if len(explicit) > 1:
        return None
    return explicit.pop() if explicit else Request.OMIT


def _policy_words(advice: str) -> str:
    """The table's advice is written for the command line."""
    return advice.replace("--disk-only", "disk_only").replace("--directory", "directory:")


@dataclass(frozen=True, slots=True)
class _Asked:
    """The snapshot block's requests, in the state table's terms."""

    memory: Request
    default: Request  # disks:
    per_disk: tuple[tuple[str, Request], ...]  # disk:
    disk_only: bool
    states: tuple[DomainState, ...]

    def words(self) -> str:
        disks = _request_word(self.default)
        for name, request in self.per_disk:
            disks += f", {name} {_request_word(request)}"
        memory = _request_word(self.memory)
        return f"memory {memory}, disks {disks}, disk_only {str(self.disk_only).lower()}"


def _request_word(request: Request) -> str:
    return "auto" if request is Request.OMIT else request.value


_TABLE_INPUTS = ("snapshot.memory", "snapshot.disks", "snapshot.disk", "snapshot.disk_only")


def _cross_snapshot(r: _Reader) -> None:
    if not r.ok(*_TABLE_INPUTS, "domains.states"):
        return
    asked = _Asked(
        memory=Request.parse(r.text("snapshot.memory")),
        default=Request.parse(r.text("snapshot.disks")),
        per_disk=tuple((name, Request.parse(word)) for name, word in r.pairs("snapshot.disk")),
        disk_only=r.flag("snapshot.disk_only"),
        states=tuple(dict.fromkeys(DomainState(s) for s in r.texts("domains.states"))),
    )
    _cross_table(r, asked)
    _cross_quiesce(r, asked)
    if r.ok("snapshot.live") and r.flag("snapshot.live") and asked.memory is not Request.EXTERNAL:
        r.error(
            r.nodes["snapshot.live"],
            "snapshot.live",
            "live keeps the guest running while its memory is saved, which libvirt only "
            "does for memory external",
        )
    if (
        asked.memory is Request.EXTERNAL
        and r.ok("snapshot.directory")
        and r.opt_text("snapshot.directory") is None
    ):
        node, path = r.where("snapshot.memory")
        r.error(
            node,
            path,
            "external memory needs directory: for its state file (for example "
            "directory: /var/lib/libvirt/snapshots/{domain})",
        )


def _cross_table(r: _Reader, asked: _Asked) -> None:
    """The seed's state table must give a snapshot for every state the policy takes."""
    disk = _fold([asked.default, *(request for _, request in asked.per_disk)])
    if disk is None:
        internal = [n for n, q in asked.per_disk if q is Request.INTERNAL]
        external = [n for n, q in asked.per_disk if q is Request.EXTERNAL]
        for names, location in ((internal, Request.INTERNAL), (external, Request.EXTERNAL)):
            if asked.default is location:
                names.append(f"every other disk (disks: {location.value})")
        node, path = r.where("snapshot.disk", "snapshot.disks")
        r.error(
            node,
            path,
            f"asks for internal snapshots of {', '.join(internal)} and external ones of "
            f"{', '.join(external)}; libvirt cannot mix the two in one snapshot: ask for "
            "one location for all disks, or write two policies",
        )
        return
    node, path = r.where(*_TABLE_INPUTS)
    refused: list[tuple[list[str], Row]] = []
    groups = 0
    for online in (True, False):
        group = [s.value for s in asked.states if (s in _ONLINE) == online]
        if group:
            groups += 1
            row = lookup(online, asked.memory, disk, asked.disk_only)
            if row.outcome is not Outcome.OK:
                refused.append((group, row))
    for group, row in refused:
        if row.outcome is Outcome.INVALID:
            reason = row.reason or ""
            said = f"an invalid combination ({reason})"
            advice = INVALID_ADVICE[reason]
        else:
            said = "unsupported"
            advice = UNSUPPORTED_ADVICE[row.number]
        if len(refused) < groups:  # the policy works for its other states
            advice += f"; or take {' and '.join(group)} out of domains.states"
        r.error(
            node,
            path,
            f"{asked.words()} is {said} for {' or '.join(group)} domains "
            f"[seed table row {row.number}]: {_policy_words(advice)}",
        )


def _cross_quiesce(r: _Reader, asked: _Asked) -> None:
    if not r.ok("snapshot.quiesce") or r.text("snapshot.quiesce") == "false":
        return
    node = r.nodes["snapshot.quiesce"]
    if not (asked.memory is Request.NO or (asked.memory is Request.OMIT and asked.disk_only)):
        r.error(
            node,
            "snapshot.quiesce",
            "quiesce freezes the guest's file systems for a disk snapshot; it needs "
            "memory no or disk_only true",
        )
        return
    cannot = [s.value for s in asked.states if s is not DomainState.RUNNING]
    if r.text("snapshot.quiesce") == "true" and cannot:
        r.error(
            node,
            "snapshot.quiesce",
            "quiesce true needs the guest agent, which only a running domain has, and "
            f"domains.states includes {', '.join(cannot)}: use quiesce try, or states "
            "[running]",
        )


def _cross_name(r: _Reader, policy: str | None) -> None:
    """Render the name template for a run of consecutive scheduled runs: each name must
    be a valid snapshot name, and no two runs may get the same one."""
    if policy is None or not r.ok("snapshot.name"):
        return
    template = r.text("snapshot.name")
    node, path = r.where("snapshot.name")
    seen: dict[str, dt.datetime] = {}
    for when in _sample_runs(r):
        try:
            name = render_name(template, policy, _SAMPLE_DOMAIN, when)
        except RequestError as exc:
            r.error(node, path, f"renders no valid snapshot name: {exc.message}")
            return
        if name in seen:
            r.error(
                node,
                path,
                f"the runs at {_iso(seen[name])} and {_iso(when)} would both be named "
                f"{name!r}; use a finer {{time:...}} format",
            )
            return
        seen[name] = when


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sample_runs(r: _Reader) -> list[dt.datetime]:
    """``_SAMPLE_RUNS`` consecutive runs of the policy's schedule after ``_T1``, or
    just ``_T1`` when the schedule itself is not valid."""
    paths = [o.path for o in POLICY_SCHEMA if o.parent == "schedule"]
    cron, every = r.opt_text("schedule.cron"), r.opt_duration("schedule.every")
    if "schedule" not in r.nodes or not r.ok(*paths) or (cron is None) == (every is None):
        return [_T1]
    plan = Schedule(cron=cron, every=every, timezone=r.text("schedule.timezone"))
    runs: list[dt.datetime] = []
    when = _T1
    try:
        for _ in range(_SAMPLE_RUNS):
            when = schedule.next_due(plan, when)
            runs.append(when)
    except ValueError:
        return [_T1]
    return runs


def _cross_retention(r: _Reader) -> Retention | None:
    if "retention" not in r.nodes:
        return None
    paths = [o.path for o in POLICY_SCHEMA if o.parent == "retention"]
    if not r.ok(*paths):
        return None
    retention = Retention(
        keep_last=r.count("retention.keep_last"),
        hourly=r.count("retention.hourly"),
        daily=r.count("retention.daily"),
        weekly=r.count("retention.weekly"),
        monthly=r.count("retention.monthly"),
        yearly=r.count("retention.yearly"),
        min_age=r.duration("retention.min_age"),
    )
    if retention.is_empty:
        r.error(
            r.nodes["retention"],
            "retention",
            "keeps only the newest snapshot: every count and min_age are 0, so all the "
            "others would be deleted; give a count or min_age, or remove retention: to "
            "never delete anything",
        )
    return retention


# --------------------------------------------------------------------------
# The entry points


def _read(text: str, filename: str, schema: tuple[Option, ...]) -> _Reader | None:
    """Steps 1 to 4.  None when the file is empty."""
    r = _Reader(filename, schema)
    root = r.document(text)
    if isinstance(root, _Failed):
        return r
    if root is None or _is_null(root):
        return None
    r.root = root
    if not isinstance(root, yaml.MappingNode):
        names = ", ".join(o.path for o in schema if not o.parent)
        r.error(root, "", f"the file must be a mapping of options ({names}), not {_describe(root)}")
        return r
    r.check_keys(root, "")
    r.structure(root, "")
    r.read_values()
    return r


def parse_policy(text: str, filename: str) -> Policy | list[LocatedError]:
    """One policy file's text -> a Policy, or every problem found, in file order."""
    r = _read(text, filename, POLICY_SCHEMA)
    if r is None:
        return [
            LocatedError(
                filename, 1, 1, "", "the file is empty; a policy needs at least a schedule:"
            )
        ]
    if r.root is None:
        return r.sorted_errors()
    name = _policy_name(r, filename)
    _cross_schedule(r)
    _cross_snapshot(r)
    _cross_name(r, name)
    _cross_hooks_and_monitor(r)
    retention = _cross_retention(r)
    if r.errors or name is None:
        return r.sorted_errors()
    policy = _build_policy(r, name, filename, retention)
    # The scheduler's own check must agree; if it ever does not, refuse here, not later.
    problem = schedule.check_schedule(policy.schedule)
    if problem is not None:
        r.error(r.nodes.get("schedule"), "schedule", problem)
        return r.sorted_errors()
    return policy


def _build_policy(r: _Reader, name: str, filename: str, retention: Retention | None) -> Policy:
    return Policy(
        name=name,
        source=filename,
        selector=Selector(
            include=r.texts("domains.include"),
            exclude=r.texts("domains.exclude"),
            states=frozenset(DomainState(s) for s in r.texts("domains.states")),
        ),
        schedule=Schedule(
            cron=r.opt_text("schedule.cron"),
            every=r.opt_duration("schedule.every"),
            timezone=r.text("schedule.timezone"),
            jitter=r.duration("schedule.jitter"),
            catch_up=r.flag("schedule.catch_up"),
        ),
        snapshot=SnapshotSettings(
            memory=Request.parse(r.text("snapshot.memory")),
            disks=Request.parse(r.text("snapshot.disks")),
            disk=tuple((k, Request.parse(v)) for k, v in r.pairs("snapshot.disk")),
            disk_only=r.flag("snapshot.disk_only"),
            quiesce=Quiesce(r.text("snapshot.quiesce")),
            live=r.flag("snapshot.live"),
            atomic=r.flag("snapshot.atomic"),
            name=r.text("snapshot.name"),
            description=r.text("snapshot.description"),
            directory=r.opt_text("snapshot.directory"),
            metadata=Metadata(r.text("snapshot.metadata")),
        ),
        retention=retention,
        hooks=Hooks(
            before=r.command_lists("hooks.before"),
            after=r.command_lists("hooks.after"),
            on_failure=r.command_lists("hooks.on_failure"),
            timeout=r.duration("hooks.timeout"),
            before_failure=BeforeFailure(r.text("hooks.before_failure")),
        ),
        monitor=Monitor(r.opt_duration("monitor.warn"), r.opt_duration("monitor.crit"))
        if r.given("monitor")
        else None,
    )


def parse_config(text: str, filename: str) -> Settings | list[LocatedError]:
    """snapshotd.yaml's text -> Settings, or every problem found.  Empty means defaults."""
    r = _read(text, filename, CONFIG_SCHEMA)
    if r is None:
        return Settings(config=filename, config_found=True)
    if not r.errors and r.count("workers") < 1:
        node, path = r.where("workers")
        r.error(node, path, "must be at least 1")
    address = r.opt_text("metrics_address") if r.ok("metrics_address") else None
    if address is not None and not re.fullmatch(
        r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}", address
    ):
        node, path = r.where("metrics_address")
        r.error(node, path, f"{_show(address)} is not HOST:PORT, for example 127.0.0.1:9477")
    if not r.errors and r.duration("operation_timeout") < dt.timedelta(seconds=1):
        node, path = r.where("operation_timeout")
        r.error(node, path, "must be at least 1s")
    if r.errors:
        return r.sorted_errors()
    return Settings(
        workers=r.count("workers"),
        operation_timeout=r.duration("operation_timeout"),
        metrics_address=r.opt_text("metrics_address"),
        policy_dir=naming.check_directory(r.text("policy_dir"), "policy_dir"),
        state_dir=naming.check_directory(r.text("state_dir"), "state_dir"),
        connect=tuple(dict.fromkeys(r.texts("connect"))),
        config=filename,
        config_found=True,
    )


def check_set(policies: Iterable[Policy]) -> list[LocatedError]:
    """Problems between policy files: two files with the same policy name.

    Each file involved gets an error naming the others: policies that share a name
    would share (and prune) each other's snapshots, so none of them can be used.
    """
    by_name: dict[str, list[str]] = {}
    for policy in policies:
        by_name.setdefault(policy.name, []).append(policy.source)
    errors: list[LocatedError] = []
    for name, sources in by_name.items():
        if len(sources) < 2:
            continue
        for source in sources:
            others = ", ".join(s for s in sources if s != source) or source
            errors.append(
                LocatedError(
                    source,
                    1,
                    1,
                    "name",
                    f"policy name {name!r} is also used by {others}; policy names must be "
                    "unique (set a different name: or rename the file)",
                )
            )
    return errors


# --------------------------------------------------------------------------
# Documentation


def _default_text(option: Option) -> str:
    if option.default is not None:
        return f"`{option.default}`"
    if option.required:
        return "required"
    return option.default_note or "none"


def _schema_section(schema: Sequence[Option], title: str) -> list[str]:
    lines = [f"### {title}", ""]
    for option in schema:
        if option.kind is Kind.SECTION:
            lines += [f"#### `{option.path}:` (section)", "", option.description, ""]
            if option.required:
                lines += ["- required", ""]
            elif option.default_note:
                lines += [f"- default: {option.default_note}", ""]
            continue
        lines += [
            f"#### `{option.path}`",
            "",
            option.description,
            "",
            f"- type: {option.type_text}",
            f"- default: {_default_text(option)}",
        ]
        if option.example is not None:
            lines.append(f"- example: `{option.key}: {option.example}`")
        lines.append("")
    return lines


def schema_markdown() -> str:
    """The option reference of docs/policies.md, made from the schemas."""
    lines = _schema_section(POLICY_SCHEMA, "Policy files (policies.d/*.yaml)")
    lines += _schema_section(CONFIG_SCHEMA, "Daemon settings (snapshotd.yaml)")
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = [
    "CONFIG_SCHEMA",
    "MAX_BYTES",
    "MAX_DEPTH",
    "POLICY_SCHEMA",
    "Kind",
    "LocatedError",
    "Option",
    "check_set",
    "parse_config",
    "parse_policy",
    "schema_markdown",
]
