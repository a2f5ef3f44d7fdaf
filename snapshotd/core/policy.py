"""Policies: which domains, when, what snapshot, how long to keep it.

This module holds the typed policy model and the two things a policy does with a
domain: decide whether it selects it, and turn its snapshot settings into a
SnapshotRequest for a given moment.  Reading and validating policy files is
``snapshotd.config`` (pure) and ``snapshotd.adapters.configfiles`` (files).
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
from dataclasses import dataclass, field

from snapshotd.core import naming
from snapshotd.core.group import GroupSettings
from snapshotd.core.guard import Guard
from snapshotd.core.model import DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.retention import Retention
from snapshotd.core.schedule import Schedule
from snapshotd.errors import RequestError

DEFAULT_NAME_TEMPLATE = "{policy}-{time:%Y%m%dT%H%M%SZ}"
DEFAULT_DESCRIPTION = "taken by snapshotd"
NAME_FIELDS = frozenset({"policy", "domain", "time"})
DEFAULT_STATES = frozenset({DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF})


class Quiesce(enum.StrEnum):
    NO = "false"
    YES = "true"
    TRY = "try"  # quiesce when the guest agent answers, otherwise take it without


class Metadata(enum.StrEnum):
    LIBVIRT = "libvirt"  # libvirt keeps the snapshot's metadata (the default)
    CATALOG = "catalog"  # NO_METADATA: only snapshotd's catalog keeps it


class BeforeFailure(enum.StrEnum):
    SKIP = "skip"  # a failed `before` hook skips the snapshot
    CONTINUE = "continue"  # ... or the snapshot is taken anyway


@dataclass(frozen=True, slots=True)
class Hooks:
    """``hooks:``: commands (argument lists, no shell) around each policy snapshot."""

    before: tuple[tuple[str, ...], ...] = ()
    after: tuple[tuple[str, ...], ...] = ()
    on_failure: tuple[tuple[str, ...], ...] = ()
    timeout: dt.timedelta = dt.timedelta(seconds=60)
    before_failure: BeforeFailure = BeforeFailure.SKIP


@dataclass(frozen=True, slots=True)
class Monitor:
    """``monitor:``: how old the newest snapshot may get (`snapshotd check --freshness`)."""

    warn: dt.timedelta | None = None
    crit: dt.timedelta | None = None


@dataclass(frozen=True, slots=True)
class Selector:
    """``domains:``: globs on names or ``uuid:<uuid>``, minus excludes, in some states."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    states: frozenset[DomainState] = DEFAULT_STATES

    def matches(self, domain: DomainInfo) -> bool:
        """Does the selector name this domain (whatever its state)?"""
        return _any_match(self.include, domain) and not _any_match(self.exclude, domain)

    def skip_reason(self, domain: DomainInfo) -> str | None:
        """Why a matching domain is skipped now (its state), or None to take it."""
        if domain.state in self.states:
            return None
        allowed = ", ".join(sorted(s.value for s in self.states))
        return f"domain is {domain.state.value}; the policy takes only {allowed}"


def _any_match(patterns: tuple[str, ...], domain: DomainInfo) -> bool:
    for pattern in patterns:
        if pattern.startswith("uuid:"):
            if pattern[5:].strip().lower() == domain.uuid.lower():
                return True
        elif fnmatch.fnmatchcase(domain.name, pattern):
            return True
    return False


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    """``snapshot:``: what each snapshot of the policy looks like."""

    memory: Request = Request.OMIT
    disks: Request = Request.OMIT
    disk: tuple[tuple[str, Request], ...] = ()
    disk_only: bool = False
    quiesce: Quiesce = Quiesce.NO
    live: bool = False
    atomic: bool = True
    name: str = DEFAULT_NAME_TEMPLATE
    description: str = DEFAULT_DESCRIPTION
    directory: str | None = None
    metadata: Metadata = Metadata.LIBVIRT


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy file."""

    name: str
    source: str  # the file it came from
    selector: Selector = field(default_factory=Selector)
    schedule: Schedule = field(default_factory=Schedule)
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    retention: Retention | None = None  # None: nothing is ever pruned
    hooks: Hooks = field(default_factory=Hooks)
    monitor: Monitor | None = None  # None: not monitored
    group: GroupSettings | None = None  # None: each domain on its own
    guard: Guard = field(default_factory=Guard)  # the default guards nothing

    def snapshot_name(self, domain: str, when: dt.datetime) -> str:
        """The snapshot name for a run at ``when`` (rendered in UTC)."""
        return render_name(self.snapshot.name, self.name, domain, when)

    def quiesces(self, domain: DomainInfo) -> bool:
        """Whether the first attempt for ``domain`` asks the guest agent to freeze.

        Quiesce applies to running guests: ``true`` on a paused guest is asked for (and
        refused by the planner: its agent cannot answer); a shut-off guest has no file
        systems in use, so neither ``true`` nor ``try`` quiesces it.
        """
        mode = self.snapshot.quiesce
        if mode is Quiesce.YES:
            return domain.state is not DomainState.SHUTOFF
        return mode is Quiesce.TRY and domain.state is DomainState.RUNNING

    def request(self, domain: DomainInfo, when: dt.datetime, *, quiesce: bool) -> SnapshotRequest:
        """The request for one snapshot of ``domain`` at ``when``.

        ``quiesce`` is decided by the caller: True for ``quiesce: true``, and for the
        first attempt of ``quiesce: try``.
        """
        s = self.snapshot
        return SnapshotRequest(
            name=self.snapshot_name(domain.name, when),
            memory=s.memory,
            disks=s.disks,
            disk=s.disk,
            disk_only=s.disk_only,
            quiesce=quiesce,
            live=s.live,
            atomic=s.atomic,
            no_metadata=s.metadata is Metadata.CATALOG,
            description=s.description,
            directory=s.directory,
        )


def render_name(template: str, policy: str, domain: str, when: dt.datetime) -> str:
    """Fill a name template; ``{time:...}`` is formatted in UTC.  The result is checked."""
    if when.tzinfo is None:
        raise ValueError("render_name needs an aware datetime")
    naming.template_fields(
        template, NAME_FIELDS, "snapshot name template", specs=frozenset({"time"})
    )
    try:
        name = template.format_map(
            {"policy": policy, "domain": domain, "time": when.astimezone(dt.UTC)}
        )
    except (ValueError, KeyError) as exc:
        raise RequestError(f"snapshot name template {template!r}: {exc}") from None
    naming.check_snapshot_name(name)
    return name
