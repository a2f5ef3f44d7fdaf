"""`snapshotd status`: the daemon's state as its state directory records it.

Three sources, no network protocol: the daemon lock (is it running, which PID),
``status.json`` (policies in force, load errors, connections, next due times,
jobs in flight) and the catalog (each policy and domain's last snapshot, last
success and last error, from the ``runs`` and ``snapshots`` tables).
"""

from __future__ import annotations

import time
from typing import Any

from snapshotd.adapters import statefile
from snapshotd.catalog import catalog_exists, open_catalog


def collect(state_dir: str, now: float | None = None) -> dict[str, Any]:
    """The status report as plain data (what ``--json`` prints)."""
    now = time.time() if now is None else now
    pid = statefile.daemon_pid(state_dir)
    written = statefile.read_status(state_dir) or {}
    running = pid is not None
    report: dict[str, Any] = {
        "state_dir": state_dir,
        "daemon": {
            "running": running,
            "pid": pid if running and pid and pid > 0 else None,
            "started_at": written.get("started_at") if running else None,
            "stopping": bool(written.get("stopping")) if running else False,
        },
        # What the daemon last reported; when it is not running, what it had.
        "config": written.get("config"),
        "policy_dir": written.get("policy_dir"),
        "policies": written.get("policies", []),
        "load_errors": written.get("load_errors", []),
        "connections": written.get("connections", []) if running else [],
        "last_error": written.get("last_error"),
        "domains": [],
    }
    if not catalog_exists(state_dir):
        return report
    scheduled = {(s["policy"], s["domain_uuid"]): s for s in written.get("scheduled", [])}
    inflight = {(s["policy"], s["domain_uuid"]): s for s in written.get("running", [])}
    with open_catalog(state_dir) as catalog:
        rows = {}
        for row in catalog.snapshots():
            if row.policy is not None:
                rows[(row.policy, row.domain_uuid)] = row  # oldest first: the last one wins
        for run in catalog.runs.all():
            key = (run.policy, run.domain_uuid)
            last = rows.get(key)
            error = None
            if run.last_error is not None and (run.last_error_at or 0) >= (run.last_success or 0):
                error = {"message": run.last_error, "at": run.last_error_at}
            due = scheduled.get(key) if running else None
            job = inflight.get(key) if running else None
            report["domains"].append(
                {
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
                    "next_due": due["next_due"] if due else None,
                    "running": job is not None,
                    "running_since": job["since"] if job else None,
                    "overrun": bool(job and job["overrun"]),
                    "last_error": error,
                }
            )
        # Keys the daemon schedules that have never run yet have no row in `runs`.
        known = {(d["policy"], d["domain_uuid"]) for d in report["domains"]}
        for key, due in scheduled.items() if running else ():
            if key in known:
                continue
            report["domains"].append(
                {
                    "domain": due["domain"],
                    "domain_uuid": due["domain_uuid"],
                    "uri": due["uri"],
                    "policy": due["policy"],
                    "last_snapshot": None,
                    "last_success": None,
                    "next_due": due["next_due"],
                    "running": False,
                    "running_since": None,
                    "overrun": False,
                    "last_error": None,
                }
            )
    report["domains"].sort(key=lambda d: (d["domain"], d["policy"]))
    return report
