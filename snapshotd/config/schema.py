"""Every option of policy files and snapshotd.yaml, described once, as data.

``POLICY_SCHEMA`` and ``CONFIG_SCHEMA`` give each option's path, type, default,
description and example.  The reader (``snapshotd.config.reader``) validates a file
against them, reads the defaults from them, and ``snapshotd.docgen`` makes the
reference documentation (docs/policies.md, snapshotd.policy(5)) from them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from snapshotd.config.settings import (
    DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_POLICY_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_URI,
    DEFAULT_WORKERS,
)
from snapshotd.core import schedule
from snapshotd.core.group import Consistency, Fallback, OnMemberFailure
from snapshotd.core.policy import BeforeFailure, Metadata, Quiesce
from snapshotd.core.retention import format_duration

MAX_COUNT = 100_000  # retention counts
MIN_EVERY = schedule.MIN_EVERY
POLICY_NAME_MAX = 64
DESCRIPTION_MAX = 4096


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


def _values(choices: type[enum.StrEnum]) -> tuple[str, ...]:
    """An option's choices: the values of the enum its text is read into."""
    return tuple(member.value for member in choices)


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
        choices=_values(Quiesce),
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
        choices=_values(Metadata),
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
        choices=_values(BeforeFailure),
    ),
    Option(
        "guard",
        Kind.SECTION,
        "Checks before each snapshot: one that would leave too little free space where "
        "its files grow, or make a disk's external backing chain too long, is skipped "
        "before libvirt is called, recorded with the reason (status, the journal, the "
        "operations log, the metric snapshotd_snapshots_skipped_total) and taken at the "
        "next slot the guard allows. Retention never deletes anything to make room.",
        default_note="none: nothing is checked",
    ),
    Option(
        "guard.min_free",
        Kind.STRING,
        "The free space that must be left on each file system a snapshot's files grow "
        "on (an external snapshot's overlays and memory file; an internal snapshot's "
        "qcow2 images): a percentage of the file system (`10%`) or a size with a binary "
        "unit K, M, G or T (`20G`). Measured with statvfs on this host, and through "
        "libvirt's storage pools for a remote connection (a directory no pool holds is "
        "not checked there, and the run says so).",
        example="10%",
        default_note="none: free space is not checked",
    ),
    Option(
        "guard.max_chain",
        Kind.COUNT,
        "The longest backing chain a disk may get from an external snapshot (the disk's "
        "image, its backing files and the new overlay): libvirt before 12.0 cannot start "
        "a domain whose chain is longer than about 25 images. `0`: no cap. A disk of "
        "a remote connection is measured from libvirt's domain XML (`<backingStore>`).",
        default="0",
        example="20",
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
    Option(
        "group",
        Kind.SECTION,
        "The domains the policy selects form one consistency group: each run snapshots "
        "all of them at one instant, under the one snapshot name, and they are kept, "
        "pruned and reverted together (docs/groups.md). The name template cannot use "
        "`{domain}`, `snapshot.quiesce` and `snapshot.live` do not apply (the group holds "
        "its members still itself), and `snapshot` must work for a paused domain.",
        default_note="none: each domain is snapshotted on its own",
    ),
    Option(
        "group.consistency",
        Kind.CHOICE,
        "`crash`: every running member is suspended (in parallel), snapshotted, and "
        "resumed, so the group holds what a power cut at one instant would have left. "
        "`application`: every running member's file systems are frozen through its guest "
        "agent (virDomainFSFreeze) instead, the disk-only snapshots taken, and thawed; "
        "the members keep running. Paused and shut-off members write nothing, so they "
        "are snapshotted as they are.",
        default="crash",
        example="application",
        choices=_values(Consistency),
    ),
    Option(
        "group.max_pause",
        Kind.DURATION,
        "The longest any member may stay suspended or frozen. Past it every member is "
        "released at once, the run fails and what it made is deleted again, whatever "
        "`on_member_failure` says (a snapshot finished after the release is not of the "
        "group's instant). At least 1s, plus 0.1s for each member after the first.",
        default="5s",
        example="10s",
    ),
    Option(
        "group.on_member_failure",
        Kind.CHOICE,
        "`abort`: when one member's snapshot fails, delete the snapshots the run made of "
        "the others (and their files): every member has the group's snapshot, or none "
        "does. `partial`: keep the others, recorded as a partial group.",
        default="abort",
        example="partial",
        choices=_values(OnMemberFailure),
    ),
    Option(
        "group.fallback",
        Kind.CHOICE,
        "With `consistency: application`: what happens when a running member's guest "
        "agent does not answer. `none`: the run fails. `crash`: the run is taken "
        "crash-consistent instead, and says so.",
        default="none",
        example="crash",
        choices=_values(Fallback),
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
    Option(
        "catalog",
        Kind.SECTION,
        "A catalog on PostgreSQL that several hosts share (fleet mode; docs/fleet.md). "
        "Without this section the catalog is SQLite in `state_dir`, this host's alone.",
        default_note="SQLite in `state_dir`",
    ),
    Option(
        "catalog.url",
        Kind.STRING,
        "The database, as a libpq URL: `postgresql://USER@HOST[:PORT]/DATABASE`, with "
        "libpq's parameters after `?` (TLS: `sslmode=verify-full&sslrootcert=/path`). "
        "No password in it: snapshotd.yaml is not a secret; use `password_file`.",
        example='"postgresql://snapshotd@db.example/snapshotd?sslmode=verify-full"',
        required=True,
    ),
    Option(
        "catalog.password_file",
        Kind.STRING,
        "A file holding the database role's password (one line), readable by root "
        "alone (mode 0600 or 0400): a file others can read is refused.",
        example="/etc/snapshotd/db.password",
        default_note="none: libpq's own means (a client certificate, ~/.pgpass, peer "
        "authentication on a Unix socket)",
    ),
    Option(
        "catalog.host_id",
        Kind.STRING,
        "This host's name in the shared catalog: in `status --fleet`, in the metrics' "
        "`host` label, and as the owner of the domains it works on. Unique across the "
        "fleet; letters, digits and `. _ -`, at most 63 characters.",
        example="kvm-07",
        default_note="the host's name",
    ),
)
