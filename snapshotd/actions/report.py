"""`snapshotd status`: the daemon's state as its state directory records it.

Three sources, no network protocol: the daemon lock (is it running, which PID),
``status.json`` (policies in force, load errors, connections, next due times,
jobs in flight; read through adapters/statusfile.py) and the catalog (each policy
and domain's last snapshot, last success and last error, from its runs and
snapshots).
"""

from __future__ import annotations

import time
from typing import Any

from snapshotd.adapters import statefile, statusfile
from snapshotd.adapters.statusfile import DaemonStatus, Running, Scheduled
from snapshotd.catalog import Catalog, Run, SnapshotRow, catalog_exists, describe, open_catalog
from snapshotd.config.settings import DatabaseSettings


def collect(
    state_dir: str, now: float | None = None, *, database: DatabaseSettings | None = None
) -> dict[str, Any]:
    """The status report as plain data (what ``--json`` prints); ``database``: the
    catalog is there (snapshotd.yaml's ``catalog:``), not in ``state_dir``."""
    now = time.time() if now is None else now
    pid = statefile.daemon_pid(state_dir)
    written = statusfile.read_status(state_dir) or DaemonStatus()
    running = pid is not None
    report: dict[str, Any] = {
        "state_dir": state_dir,
        "catalog": describe(state_dir, database),
        "daemon": {
            "running": running,
            "pid": pid if running and pid and pid > 0 else None,
            "started_at": written.started_at if running else None,
            "stopping": written.stopping if running else False,
        },
        # What the daemon last reported; when it is not running, what it had.
        "config": written.config,
        "policy_dir": written.policy_dir,
        "policies": list(written.policies),
        "load_errors": list(written.load_errors),
        "connections": [_connection(c) for c in written.connections] if running else [],
        "last_error": written.last_error,
        "domains": [],
        "groups": [],
    }
    if not catalog_exists(state_dir, database):
        return report
    # Due times and jobs in flight only while a daemon runs: nobody acts on them else.
    scheduled = {(s.policy, s.domain_uuid): s for s in written.scheduled} if running else {}
    inflight = {(r.policy, r.domain_uuid): r for r in written.running} if running else {}
    with open_catalog(state_dir, database=database) as catalog:
        rows = _last_snapshots(catalog)
        for run in catalog.runs.all():
            key = (run.policy, run.domain_uuid)
            row = _row(run, rows.get(key), scheduled.get(key), inflight.get(key), now)
            report["domains"].append(row)
        report["groups"] = _groups(catalog, scheduled)
    # Keys the daemon schedules that have never run yet have no row in `runs` (a
    # group's key names no one domain: its members' rows and `groups` show it).
    known = {(d["policy"], d["domain_uuid"]) for d in report["domains"]}
    report["domains"].extend(
        _never_run(s) for k, s in scheduled.items() if k not in known and s.domain_uuid
    )
    report["domains"].sort(key=lambda d: (d["domain"], d["policy"]))
    return report


def _groups(catalog: Catalog, scheduled: dict[tuple[str, str], Scheduled]) -> list[dict[str, Any]]:
    """Each group policy's newest group in the catalog: its members and pause window."""
    newest = {}
    for group in catalog.groups.all():  # oldest first: the last one of a policy wins
        newest[group.policy] = group
    shown = []
    for policy, group in sorted(newest.items()):
        due = scheduled.get((policy, ""))
        shown.append(
            {
                "policy": policy,
                "last_snapshot": group.name,
                "taken_at": group.taken_at,
                "partial": group.partial,
                "pause_seconds": None if group.pause_ms is None else group.pause_ms / 1000,
                "members": [m.domain_name for m in group.members],
                "next_due": due.next_due if due is not None else None,
            }
        )
    return shown


def _connection(connection: statusfile.Connection) -> dict[str, Any]:
    return {"uri": connection.uri, "connected": connection.connected, "error": connection.error}


def _last_snapshots(catalog: Catalog) -> dict[tuple[str, str], SnapshotRow]:
    """Each (policy, domain UUID)'s newest snapshot in the catalog."""
    rows = {}
    for row in catalog.snapshots():
        if row.policy is not None:
            rows[(row.policy, row.domain_uuid)] = row  # oldest first: the last one wins
    return rows


def _row(
    run: Run,
    last: SnapshotRow | None,
    due: Scheduled | None,
    job: Running | None,
    now: float,
) -> dict[str, Any]:
    """One (policy, domain) line of the report, for a stream that has run."""
    error = None
    if run.last_error is not None and (run.last_error_at or 0) >= (run.last_success or 0):
        error = {"message": run.last_error, "at": run.last_error_at}
    return {
        "domain": run.domain_name,
        "domain_uuid": run.domain_uuid,
        "uri": run.uri,
        "policy": run.policy,
        "last_snapshot": None
        if last is None
        else {
            "name": last.name,
            "created_at": last.created_at,
            "age_seconds": max(0, int(now) - last.created_at),
        },
        "last_success": run.last_success,
        "next_due": due.next_due if due else None,
        "running": job is not None,
        "running_since": job.since if job else None,
        "overrun": bool(job and job.overrun),
        "last_error": error,
    }


def _never_run(due: Scheduled) -> dict[str, Any]:
    """The line of a key the daemon schedules that has no run yet."""
    return {
        "domain": due.domain,
        "domain_uuid": due.domain_uuid,
        "uri": due.uri,
        "policy": due.policy,
        "last_snapshot": None,
        "last_success": None,
        "next_due": due.next_due,
        "running": False,
        "running_since": None,
        "overrun": False,
        "last_error": None,
    }
