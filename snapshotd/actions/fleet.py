"""The fleet in one place: the hosts of a shared catalog, every domain's newest
snapshot wherever it was taken and the migrations under way (``status --fleet``), and
the freshness of every monitored stream of the fleet (``check --freshness --fleet``),
from the catalog alone: no libvirt of another host is asked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snapshotd.actions.freshness import Stream, check, newest_in
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import describe, open_catalog
from snapshotd.catalog.api import HostRow, MoveRow, Newest, Run
from snapshotd.config.settings import Settings
from snapshotd.core import freshness
from snapshotd.core.policy import Policy
from snapshotd.errors import RequestError, SnapshotdError

# A host whose daemon has not reported for this long is shown as silent (it reports
# every 15 s: snapshotd.daemon.fleetduty.HEARTBEAT).
SILENT_AFTER = 60


def _shared(settings: Settings) -> None:
    if settings.catalog is None:
        raise RequestError(
            "--fleet reads a shared catalog: snapshotd.yaml has no catalog: section, so "
            "this host's catalog is its own (see docs/fleet.md)"
        )


def collect(settings: Settings, now: int) -> dict[str, Any]:
    """``status --fleet --json``: the hosts, each domain's newest snapshot."""
    _shared(settings)
    with open_catalog(settings.state_dir, database=settings.catalog) as catalog:
        hosts = catalog.runs.hosts()
        newest = catalog.newest()
        runs = catalog.runs.all()
        moves = catalog.runs.moves()
    return {
        "catalog": describe(settings.state_dir, settings.catalog),
        "hosts": [_host(h, now) for h in hosts],
        "domains": [_domain(n, runs, now) for n in newest],
        "migrations": [_move(m, now) for m in moves],
    }


def _move(move: MoveRow, now: int) -> dict[str, Any]:
    return {
        "domain": move.domain_name,
        "domain_uuid": move.domain_uuid,
        "from": sanitize_uri(move.source_uri),
        "to": sanitize_uri(move.target_uri),
        "step": move.step,
        "snapshots": [name for name, _xml in move.snapshots],
        "since": move.since,
        "age": max(0, now - move.since),
        "host_id": move.host_id,
    }


def _host(host: HostRow, now: int) -> dict[str, Any]:
    age = max(0, now - host.seen_at)
    return {
        "host_id": host.host_id,
        "last_contact": host.seen_at,
        "age": age,
        "silent": age > SILENT_AFTER,
        "pid": host.pid,
        "version": host.version,
        "connections": list(host.uris),
    }


def _domain(newest: Newest, runs: Sequence[Run], now: int) -> dict[str, Any]:
    scheduled_by = sorted(
        {r.host_id for r in runs if r.domain_uuid == newest.domain_uuid and r.host_id}
    )
    return {
        "domain": newest.domain_name,
        "domain_uuid": newest.domain_uuid,
        "snapshot": newest.name,
        "policy": newest.policy,
        "created_at": newest.created_at,
        "age": max(0, now - newest.created_at),
        "host_id": newest.host_id,
        "uri": newest.uri,
        "last_run_by": scheduled_by,
    }


def checks(
    policies: Sequence[Policy], runs: Sequence[Run], newest: dict[Stream, int], now: int
) -> list[freshness.Check]:
    """One check per stream of the fleet (a monitored policy and a domain it ran for,
    on any host), its age from the newest snapshot any host took."""
    monitored = {p.name: p.monitor for p in policies if p.monitor is not None}
    found = []
    for run in runs:
        monitor = monitored.get(run.policy)
        if monitor is None:
            continue
        made = newest.get((run.policy, run.domain_uuid))
        found.append(check(run.policy, monitor, run.domain_name, made, now))
    return found


def assess(settings: Settings, now: int) -> tuple[freshness.Code, str]:
    """``check --freshness --fleet``: the plugin's exit code and line for the fleet."""
    if settings.errors:
        return freshness.unknown(f"configuration not valid: {settings.errors[0]}")
    if settings.catalog is None:
        return freshness.unknown("--fleet needs a shared catalog (snapshotd.yaml catalog:)")
    try:
        with open_catalog(settings.state_dir, database=settings.catalog) as catalog:
            runs, newest = catalog.runs.all(), newest_in(catalog)
    except SnapshotdError as exc:
        return freshness.unknown(f"cannot read the catalog: {exc}")
    return freshness.verdict(checks(settings.policies, runs, newest, now))
