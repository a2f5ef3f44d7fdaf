"""What the daemon says about itself: the systemd status line and status.json's content.

``Status`` holds the few facts the loop keeps for the line ``systemctl status`` shows;
``describe`` turns the loop's scheduling state into the ``DaemonStatus`` model that
adapters/statusfile.py writes for ``snapshotd status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from snapshotd.adapters.logs import sanitize_uri
from snapshotd.adapters.statusfile import Connection, DaemonStatus, Running, Scheduled
from snapshotd.config.settings import Settings
from snapshotd.core.model import DomainInfo
from snapshotd.daemon.runs import AnyKey, Due, GroupKey, Job, utc


@dataclass(slots=True)
class Status:
    """What the systemd status line and `snapshotd status` show."""

    policies: int = 0
    domains: int = 0
    next_due: str = "-"
    last_error: str | None = None
    load_errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.policies} policies, {self.domains} domains; next {self.next_due}"
        if self.load_errors:
            text += f"; policy errors: {self.load_errors[0]}"
            if len(self.load_errors) > 1:
                text += f" (+{len(self.load_errors) - 1} more)"
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return text

    def count(self, policies: int, domains: Mapping[str, list[DomainInfo]]) -> None:
        self.policies = policies
        self.domains = sum(len(d) for d in domains.values())

    def next_run(self, due: Mapping[AnyKey, Due]) -> None:
        """``next_due``: the earliest due time and its policy, or ``-``."""
        if due:
            key, first = min(due.items(), key=lambda kv: kv[1].at)
            when = utc(first.at).strftime("%Y-%m-%d %H:%M:%SZ")
            self.next_due = f"{when} ({key.policy})"
        else:
            self.next_due = "-"


@dataclass(frozen=True, slots=True)
class LoopState:
    """The loop's state that status.json shows, as the loop holds it."""

    pid: int
    started_at: float
    settings: Settings | None
    policies: Iterable[str]
    domains: Mapping[str, list[DomainInfo]]
    connected: Mapping[str, tuple[bool, str | None]]
    due: Mapping[AnyKey, Due]
    jobs: Mapping[AnyKey, Job]
    workers: int
    operation_timeout: float
    status: Status
    stopping: bool


def describe(state: LoopState) -> DaemonStatus:
    """What ``snapshotd status`` shows besides the catalog (URIs without secrets)."""
    names = {(uri, d.uuid): d.name for uri, ds in state.domains.items() for d in ds}
    settings = state.settings
    return DaemonStatus(
        pid=state.pid,
        started_at=int(state.started_at),
        config=settings.config_source if settings is not None else None,
        policy_dir=settings.policy_dir if settings is not None else None,
        policies=tuple(sorted(state.policies)),
        load_errors=tuple(state.status.load_errors),
        connections=tuple(
            Connection(sanitize_uri(uri), up, error)
            for uri, (up, error) in sorted(state.connected.items())
        ),
        workers=state.workers,
        operation_timeout=state.operation_timeout,
        scheduled=tuple(
            Scheduled(
                policy=key.policy,
                uri=sanitize_uri(key.uri),
                domain_uuid=key.uuid,
                domain=_named(key, names),
                next_due=int(due.at),
                reason=due.reason,
            )
            for key, due in sorted(state.due.items(), key=_order)
        ),
        running=tuple(
            Running(
                policy=key.policy,
                uri=sanitize_uri(key.uri),
                domain_uuid=key.uuid,
                domain=job.domain,
                since=int(job.since),
                overrun=job.overrun,
            )
            for key, job in sorted(state.jobs.items(), key=_order)
        ),
        last_error=state.status.last_error,
        stopping=state.stopping,
    )


def _order(item: tuple[AnyKey, object]) -> tuple[str, str, str]:
    key = item[0]
    return key.policy, key.uri, key.uuid


def _named(key: AnyKey, names: Mapping[tuple[str, str], str]) -> str:
    """A key's domain as status shows it; a group's: its members' names."""
    if isinstance(key, GroupKey):
        return "group: " + ", ".join(names.get(m, m[1]) for m in key.members)
    return names.get((key.uri, key.uuid), key.uuid)
