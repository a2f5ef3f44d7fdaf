"""Cross-field checks: the options that only make sense together.

They run once every option has been read (``snapshotd.config.reader``), each on
the options that were read without error.  A policy's snapshot section is checked
against the seed's state table for every domain state the policy accepts, and its
name template is rendered for a run of consecutive scheduled runs.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass

from snapshotd.config.reader import Reader
from snapshotd.config.schema import POLICY_SCHEMA
from snapshotd.config.values import check_metrics_address, check_policy_name
from snapshotd.core import schedule
from snapshotd.core.group import min_pause
from snapshotd.core.model import DomainState, Request
from snapshotd.core.plan import ONLINE_STATES, fold_requests
from snapshotd.core.policy import render_name
from snapshotd.core.retention import COUNT_FIELDS, Retention
from snapshotd.core.schedule import Schedule
from snapshotd.core.table import INVALID_ADVICE, UNSUPPORTED_ADVICE, Outcome, Row, lookup
from snapshotd.errors import RequestError

# Name templates are tried on this many consecutive runs after _T1.
_T1 = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
_SAMPLE_RUNS = 48
_SAMPLE_DOMAIN = "web01"


def check_policy(r: Reader, filename: str) -> tuple[str | None, Retention | None]:
    """Every cross-field check of a policy file: its name (None when it has no valid
    one) and its retention (None when it has none or it could not be read)."""
    name = _policy_name(r, filename)
    _cross_schedule(r)
    _cross_snapshot(r)
    _cross_name(r, name)
    _cross_hooks_and_monitor(r)
    _cross_group(r)
    return name, _cross_retention(r)


def check_config(r: Reader) -> None:
    """snapshotd.yaml's checks that need the whole file read."""
    if not r.errors and r.count("workers") < 1:
        node, path = r.where("workers")
        r.error(node, path, "must be at least 1")
    address = r.opt_text("metrics_address") if r.ok("metrics_address") else None
    problem = check_metrics_address(address) if address is not None else None
    if problem is not None:
        node, path = r.where("metrics_address")
        r.error(node, path, problem)
    if not r.errors and r.duration("operation_timeout") < dt.timedelta(seconds=1):
        node, path = r.where("operation_timeout")
        r.error(node, path, "must be at least 1s")


def _cross_hooks_and_monitor(r: Reader) -> None:
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


def _policy_name(r: Reader, filename: str) -> str | None:
    if r.given("name"):
        return r.text("name") if r.ok("name") else None
    stem = _stem(filename)
    problem = check_policy_name(stem)
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


def _cross_schedule(r: Reader) -> None:
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


def _cross_snapshot(r: Reader) -> None:
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


def _cross_table(r: Reader, asked: _Asked) -> None:
    """The seed's state table must give a snapshot for every state the policy takes."""
    disk = fold_requests([asked.default, *(request for _, request in asked.per_disk)])
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
        group = [s.value for s in asked.states if (s in ONLINE_STATES) == online]
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


def _cross_quiesce(r: Reader, asked: _Asked) -> None:
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


def _cross_name(r: Reader, policy: str | None) -> None:
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


def _sample_runs(r: Reader) -> list[dt.datetime]:
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


def _cross_retention(r: Reader) -> Retention | None:
    if "retention" not in r.nodes:
        return None
    paths = [o.path for o in POLICY_SCHEMA if o.parent == "retention"]
    if not r.ok(*paths):
        return None
    retention = Retention(
        **{name: r.count(f"retention.{name}") for name in COUNT_FIELDS},
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


_GLOB = frozenset("*?[")


def _cross_group(r: Reader) -> None:
    """A group's members are held still by the group and share one snapshot name."""
    if not r.given("group"):
        return
    if r.ok("snapshot.name") and "{domain" in r.text("snapshot.name"):
        node, path = r.where("snapshot.name")
        r.error(
            node,
            path,
            "a group's members share one snapshot name, so the template cannot use "
            "{domain}: use {policy} and {time}",
        )
    if r.ok("snapshot.quiesce") and r.text("snapshot.quiesce") != "false":
        r.error(
            r.nodes["snapshot.quiesce"],
            "snapshot.quiesce",
            "a group freezes or suspends its members itself: leave quiesce out and set "
            "group.consistency: application for frozen file systems",
        )
    if r.ok("snapshot.live") and r.flag("snapshot.live"):
        r.error(
            r.nodes["snapshot.live"],
            "snapshot.live",
            "a group holds its members still while their snapshots are made; live does "
            "not apply: leave it out",
        )
    application = r.ok("group.consistency") and r.text("group.consistency") == "application"
    if application and r.ok("snapshot.memory", "snapshot.disk_only"):
        memory = Request.parse(r.text("snapshot.memory"))
        if not (memory is Request.NO or (memory is Request.OMIT and r.flag("snapshot.disk_only"))):
            node, path = r.where("snapshot.memory", "snapshot.disk_only")
            r.error(
                node,
                path,
                "group.consistency: application snapshots the disks of running, frozen "
                "members: it needs memory no or disk_only true (crash consistency can "
                "save memory)",
            )
    fallback = r.ok("group.fallback") and r.given("group.fallback")
    if fallback and r.text("group.fallback") != "none" and not application:
        node, path = r.where("group.fallback")
        r.error(node, path, "applies only to group.consistency: application")
    _cross_max_pause(r)


def _cross_max_pause(r: Reader) -> None:
    if not r.ok("group.max_pause", "domains.include"):
        return
    given = r.duration("group.max_pause")
    include = r.texts("domains.include")
    # Literal names count the members; globs are checked when a run sees the domains.
    literal = not any(_GLOB & set(p) for p in include)
    members = len(set(include)) if literal else 1
    floor = min_pause(members)
    if given < floor:
        node, path = r.where("group.max_pause")
        size = f" for the {members} domains of domains.include" if literal else ""
        r.error(
            node,
            path,
            f"{given.total_seconds():g}s is too short{size}: at least "
            f"{floor.total_seconds():g}s (1s, and 0.1s for each member after the first)",
        )
