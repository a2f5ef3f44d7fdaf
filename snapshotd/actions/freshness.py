"""`check --freshness`'s facts: the catalog's newest snapshot per (policy, domain) and
libvirt's domains -> one freshness.Check per monitored stream -> the plugin's verdict."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import Catalog, catalog_exists, open_catalog
from snapshotd.config.settings import DatabaseSettings, Settings
from snapshotd.core import freshness
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Monitor, Policy
from snapshotd.errors import SnapshotdError

Stream = tuple[str, str]  # (policy name, domain UUID)


def newest_by_stream(state_dir: str, database: DatabaseSettings | None = None) -> dict[Stream, int]:
    """When each policy last made a snapshot of each domain (epoch seconds), from the
    catalog; nothing when there is no catalog yet."""
    if not catalog_exists(state_dir, database):
        return {}
    with open_catalog(state_dir, database=database) as catalog:
        return newest_in(catalog)


def newest_in(catalog: Catalog) -> dict[Stream, int]:
    """When each policy last made a snapshot of each domain, in ``catalog``."""
    newest: dict[Stream, int] = {}
    for row in catalog.snapshots():
        if row.policy is not None:
            key = (row.policy, row.domain_uuid)
            newest[key] = max(newest.get(key, 0), row.created_at)
    return newest


def checks(
    policies: Sequence[Policy],
    domains: Sequence[DomainInfo],
    newest: dict[Stream, int],
    now: int,
) -> list[freshness.Check]:
    """One check per monitored policy and each domain it selects and does not skip."""
    found = []
    for policy in policies:
        if policy.monitor is None:
            continue
        for domain in domains:
            if not policy.selector.matches(domain) or policy.selector.skip_reason(domain):
                continue
            made = newest.get((policy.name, domain.uuid))
            found.append(check(policy.name, policy.monitor, domain.name, made, now))
    return found


def check(
    policy: str, monitor: Monitor, domain: str, made: int | None, now: int
) -> freshness.Check:
    """One stream's check: its newest snapshot made at ``made`` (None: none yet)."""
    return freshness.Check(
        policy=policy,
        domain=domain,
        age=None if made is None else max(0, now - made),
        warn=None if monitor.warn is None else int(monitor.warn.total_seconds()),
        crit=None if monitor.crit is None else int(monitor.crit.total_seconds()),
    )


def assess(
    settings: Settings, uri: str, clock: Callable[[], dt.datetime]
) -> tuple[freshness.Code, str]:
    """The plugin's exit code and line; UNKNOWN when the facts cannot be had (the
    configuration is not valid, no policy is monitored, libvirt does not answer)."""
    if settings.errors:
        return freshness.unknown(f"configuration not valid: {settings.errors[0]}")
    monitored = [p for p in settings.policies if p.monitor is not None]
    if not monitored:
        return freshness.unknown("no policy has monitor: (warn/crit)")
    try:
        newest = newest_by_stream(settings.state_dir, settings.catalog)
    except SnapshotdError as exc:
        return freshness.unknown(f"cannot read the catalog: {exc}")
    try:
        with Hypervisor.open(uri) as hv:
            domains = hv.list_domains()
    except SnapshotdError as exc:
        return freshness.unknown(f"cannot list domains: {exc}")
    # The clock is read after libvirt answered, so that the ages are the ones of now.
    now = int(clock().timestamp())
    return freshness.verdict(checks(monitored, domains, newest, now))
