"""How the command line shows what policies do and did: check's summary, plan's
overview, take's and prune's results, and the daemon's status; text and JSON.
(output.py shows single snapshots and plans.)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from snapshotd.actions.grouprun import GroupResult
from snapshotd.actions.planning import GroupPreview, Overview, PolicyPlan, Selection
from snapshotd.actions.policyrun import Outcome, RunResult
from snapshotd.actions.prune import PruneReport
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog import describe as describe_catalog
from snapshotd.cli import output
from snapshotd.config.schema import Kind, Option
from snapshotd.config.settings import Settings
from snapshotd.core.retention import describe
from snapshotd.core.schedule import span, utc_text

# --- check --------------------------------------------------------------------------------


def print_check(settings: Settings, out: TextIO) -> None:
    """The config read and each policy's schedule and retention."""
    print(f"config: {settings.config_source}", file=out)
    print(f"policy directory: {settings.policy_dir} ({len(settings.policies)} policies)", file=out)
    print(f"catalog: {describe_catalog(settings.state_dir, settings.catalog)}", file=out)
    for policy in settings.policies:
        schedule = policy.schedule
        when = schedule.cron or f"every {schedule.every}"
        keep = describe(policy.retention) if policy.retention else "never prune"
        group = policy.group
        together = (
            ""
            if group is None
            else f"; group: {group.consistency.value} consistency, max_pause "
            f"{group.max_pause.total_seconds():g}s, on_member_failure "
            f"{group.on_member_failure.value}"
        )
        print(
            f"  {policy.name} ({policy.source}): {when} {schedule.timezone}; {keep}{together}",
            file=out,
        )


def print_selections(selections: Sequence[Selection], out: TextIO) -> None:
    """The domains some policy selects, and where policies overlap."""
    print("domains:", file=out)
    for selection in selections:
        chosen = [p.name for p in selection.policies]
        if not chosen:
            continue
        note = (
            "  (overlap: each policy takes and prunes its own snapshots)" if len(chosen) > 1 else ""
        )
        print(f"  {selection.domain.name}: {', '.join(chosen)}{note}", file=out)


# --- plan ---------------------------------------------------------------------------------


def plan_entry(entry: PolicyPlan) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "domain": entry.domain.name,
        "state": entry.domain.state.value,
        "policy": entry.policy,
        "next_due": entry.next_due.isoformat(),
    }
    if entry.skip is not None:
        shown["skip"] = entry.skip
    elif entry.refused is not None:
        shown["refused"] = entry.refused
    elif entry.snapshot is not None:
        proposed = entry.snapshot
        shown["snapshot"] = output.plan_dict(proposed.plan, entry.domain.state.value, proposed.xml)
    if entry.retention is not None:
        shown["retention"] = entry.retention
        shown["would_delete"] = list(entry.would_delete)
    return shown


def overview_dict(overview: Overview) -> dict[str, Any]:
    return {
        "at": overview.at.isoformat(),
        "domains": [
            {
                "name": s.domain.name,
                "state": s.domain.state.value,
                "policies": [p.name for p in s.policies],
            }
            for s in overview.selections
        ],
        "plans": [plan_entry(p) for p in overview.plans],
        "groups": [group_entry(g) for g in overview.groups],
    }


def group_entry(group: GroupPreview) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "policy": group.policy,
        "members": [{"domain": d, "hold": h} for d, h in group.members],
        "steps": list(group.steps),
        "max_pause_seconds": group.max_pause,
        "last_pause_seconds": group.last_pause,
    }
    if group.refused is not None:
        shown["refused"] = group.refused
    return shown


def print_overview(overview: Overview, out: TextIO) -> None:
    print(f"plan at {overview.at.isoformat()}", file=out)
    for selection in overview.selections:
        names = ", ".join(p.name for p in selection.policies) or "no policy selects it"
        print(f"  {selection.domain.name} ({selection.domain.state.value}): {names}", file=out)
    print(file=out)
    for entry in overview.plans:
        _print_plan_entry(plan_entry(entry), out)
    for group in overview.groups:
        members = ", ".join(f"{d} ({h})" for d, h in group.members) or "none"
        print(f"== group {group.policy}: {members}", file=out)
        if group.refused is not None:
            print(f"refused: {group.refused}", file=out)
        for number, step in enumerate(group.steps, 1):
            print(f"{number}. {step}", file=out)
        last = "no run yet" if group.last_pause is None else f"{group.last_pause:.3f} s last run"
        print(f"pause window: at most {group.max_pause:g} s ({last})", file=out)
        print(file=out)


def _print_plan_entry(entry: dict[str, Any], out: TextIO) -> None:
    print(f"== {entry['domain']} ({entry['state']}) by policy {entry['policy']}", file=out)
    print(f"next due: {entry['next_due']}", file=out)
    if "skip" in entry:
        print(f"skipped: {entry['skip']}", file=out)
    elif "refused" in entry:
        print(f"refused: {entry['refused']}", file=out)
    else:
        snap = entry["snapshot"]
        print(
            f"snapshot {snap['name']}: state table row {snap['row']['number']}: "
            f"{snap['row']['text']}",
            file=out,
        )
        print(f"flags: {'|'.join(snap['flags']) or 'none'}", file=out)
        for line in snap["xml"].rstrip("\n").split("\n"):
            print(f"  {line}", file=out)
    if "retention" in entry:
        doomed = ", ".join(entry["would_delete"]) or "nothing"
        print(f"retention ({entry['retention']}) would delete: {doomed}", file=out)
    print(file=out)


# --- take ---------------------------------------------------------------------------------


def take_result(result: RunResult) -> dict[str, Any]:
    """One policy run as `take --policy` shows it: created, skipped or failed."""
    shown: dict[str, Any] = {"domain": result.domain.name, "policy": result.policy}
    if result.outcome is Outcome.SKIPPED:
        shown.update(outcome="skipped", reason=result.reason)
    elif result.outcome is Outcome.GUARDED:
        shown.update(outcome="guarded", reason=result.reason)
    elif result.outcome is Outcome.FAILED or result.created is None:  # created: never None
        shown.update(outcome="failed", error=str(result.error))
    else:
        shown.update(outcome="created", snapshot=output.snapshot_dict(result.created.info))
        if result.note:
            shown["note"] = result.note
        pruned = result.pruned
        shown["pruned"] = pruned.deleted if pruned is not None else []
        if pruned is not None and pruned.failed:
            shown["prune_failed"] = [{"snapshot": n, "error": e} for n, e in pruned.failed]
    return shown


def take_failed(result: RunResult) -> bool:
    """The run failed, the policy's guard skipped it (the admin has to act), or retention
    could not delete a snapshot it should have."""
    pruned = result.pruned
    failed = result.outcome in (Outcome.FAILED, Outcome.GUARDED)
    return failed or (pruned is not None and bool(pruned.failed))


def print_take_result(result: dict[str, Any], out: TextIO) -> None:
    head = f"{result['domain']} (policy {result['policy']}): "
    if result["outcome"] == "skipped":
        print(head + f"skipped: {result['reason']}", file=out)
    elif result["outcome"] == "guarded":
        print(head + f"skipped by the policy's guard: {result['reason']}", file=out)
    elif result["outcome"] == "failed":
        print(head + f"failed: {result['error']}", file=out)
    else:
        snap = result["snapshot"]
        print(head + f"created {snap['name']}", file=out)
        if "note" in result:
            print(f"  note: {result['note']}", file=out)
        pruned = ", ".join(result["pruned"]) or "nothing"
        print(f"  pruned: {pruned}", file=out)
        for item in result.get("prune_failed", []):
            print(f"  could not delete {item['snapshot']}: {item['error']}", file=out)


def group_result(result: GroupResult, pruned: list[PruneReport]) -> dict[str, Any]:
    """A group's run as `take --policy` shows it: the group, then each member."""
    shown: dict[str, Any] = {
        "group": result.policy,
        "snapshot": result.name,
        "outcome": result.outcome.value,
        "consistency": result.consistency.value,
        "pause_seconds": None if result.pause is None else round(result.pause, 3),
    }
    if result.error is not None:
        shown["error"] = str(result.error)
    if result.note:
        shown["note"] = result.note
    members = []
    for m in result.members:
        uri = sanitize_uri(m.uri)  # as every other output shows a URI: no password
        member: dict[str, Any] = {"domain": m.domain.name, "uri": uri, "hold": m.hold.value}
        if m.rolled_back:
            member["outcome"] = "rolled back"
        elif m.created is not None:
            member["outcome"] = "created"
        else:
            member.update(outcome="failed", error=str(m.error))
        if m.release_error:
            member["release_error"] = m.release_error
        members.append(member)
    for domain, why in result.skipped:
        members.append({"domain": domain.name, "outcome": "skipped", "reason": why})
    shown["members"] = members
    shown["pruned"] = sorted({n for r in pruned for n in r.deleted})
    failed = [{"domain": r.domain, "snapshot": n, "error": e} for r in pruned for n, e in r.failed]
    if failed:
        shown["prune_failed"] = failed
    return shown


def print_group_result(result: dict[str, Any], out: TextIO) -> None:
    pause = result["pause_seconds"]
    held = f", held still {pause:.3f} s" if pause is not None else ""
    head = f"group {result['group']}: {result['outcome']} {result['snapshot']}"
    print(f"{head} ({result['consistency']}-consistent{held})", file=out)
    if "error" in result:
        print(f"  error: {result['error']}", file=out)
    if "note" in result:
        print(f"  note: {result['note']}", file=out)
    for m in result["members"]:
        line = f"  {m['domain']}: {m['outcome']}"
        if "error" in m:
            line += f": {m['error']}"
        if "reason" in m:
            line += f": {m['reason']}"
        print(line, file=out)
        if "release_error" in m:
            print(f"    NOT RELEASED: {m['release_error']}", file=out)
    print(f"  pruned: {', '.join(result['pruned']) or 'nothing'}", file=out)
    for item in result.get("prune_failed", []):
        print(
            f"  could not delete {item['snapshot']} of {item['domain']}: {item['error']}", file=out
        )


# --- prune --------------------------------------------------------------------------------


def prune_dict(report: PruneReport) -> dict[str, Any]:
    return {
        "policy": report.policy,
        "domain": report.domain,
        "dry_run": report.dry_run,
        "would_delete" if report.dry_run else "deleted": report.to_delete
        if report.dry_run
        else report.deleted,
        "failed": [{"snapshot": n, "error": e} for n, e in report.failed],
        "kept_in_use": [{"snapshot": n, "reason": why} for n, why in report.kept],
        "left_to": [{"snapshot": n, "host_id": host} for n, host in report.elsewhere],
        "kept": [
            {"snapshot": v.name, "reasons": list(v.reasons)} for v in report.verdicts if v.keep
        ],
    }


def print_prune(report: PruneReport, out: TextIO) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    names = report.to_delete if report.dry_run else report.deleted
    print(
        f"{report.domain} (policy {report.policy}): {verb} {', '.join(names) or 'nothing'}",
        file=out,
    )
    for name, error in report.failed:
        print(f"  could not delete {name}: {error}", file=out)
    for name, why in report.kept:
        print(f"  kept {name}: {why}", file=out)
    for name, host in report.elsewhere:
        print(f"  left {name} to {host}: its libvirt holds it, its daemon deletes it", file=out)


# --- status -------------------------------------------------------------------------------


def _utc(epoch: int | None) -> str:
    return "-" if epoch is None else utc_text(epoch)


def print_status(data: dict[str, Any], out: TextIO) -> None:
    """The daemon, its policies and connections, then one row per domain and policy."""
    daemon = data["daemon"]
    running = daemon["running"]
    if running:
        pid = f"pid {daemon['pid']}" if daemon["pid"] else "pid unknown"
        state = f"running ({pid}, since {_utc(daemon['started_at'])})"
        if daemon["stopping"]:
            state += ", stopping"
    else:
        state = "not running"
    print(f"daemon: {state}", file=out)
    print(f"state directory: {data['state_dir']}", file=out)
    print(f"catalog: {data['catalog']}", file=out)
    if data["config"]:
        print(f"config: {data['config']}", file=out)
    label = "policies in force" if running else "policies when it last ran"
    print(f"{label}: {', '.join(data['policies']) or 'none'}", file=out)
    for error in data["load_errors"]:
        print(f"  policy error: {error}", file=out)
    for link in data["connections"]:
        up = "connected" if link["connected"] else f"not connected: {link['error']}"
        print(f"connection {link['uri']}: {up}", file=out)
    if data["last_error"]:
        print(f"last error: {data['last_error']}", file=out)
    if data["domains"]:
        _status_table(data["domains"], out)
    elif not data.get("groups"):
        print("(no snapshots scheduled or taken yet)", file=out)
    for group in data.get("groups", []):
        pause = group["pause_seconds"]
        held = f", held still {pause * 1000:.0f} ms" if pause is not None else ""
        partial = ", partial" if group["partial"] else ""
        due = f"; next due {_utc(group['next_due'])}" if group["next_due"] else ""
        print(
            f"group {group['policy']}: last {group['last_snapshot']} of "
            f"{', '.join(group['members'])}{held}{partial}{due}",
            file=out,
        )


def _status_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    table = [("domain", "policy", "last snapshot", "age", "next due", "last error")]
    for row in rows:
        last = row["last_snapshot"]
        if row["running"]:
            due = "overrun" if row["overrun"] else "running now"
        else:
            due = _utc(row["next_due"]) if row["next_due"] else "-"
        error = row["last_error"]["message"].splitlines()[0] if row["last_error"] else "-"
        age = span(last["age_seconds"]) if last else "-"
        table.append((row["domain"], row["policy"], last["name"] if last else "-", age, due, error))
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    for line in table:
        cells = [line[i].rjust(widths[i]) if i == 3 else line[i].ljust(widths[i]) for i in range(5)]
        print("  ".join([*cells, line[5]]), file=out)


def print_fleet(data: dict[str, Any], out: TextIO) -> None:
    """``status --fleet``: the hosts and their last contact, each domain's newest snapshot."""
    print(f"catalog: {data['catalog']}", file=out)
    print(f"hosts ({len(data['hosts'])}):", file=out)
    for host in data["hosts"]:
        silent = ", SILENT: no report for more than a minute" if host["silent"] else ""
        print(
            f"  {host['host_id']}: last contact {_utc(host['last_contact'])} "
            f"({span(host['age'])} ago{silent}); pid {host['pid'] or '-'}, snapshotd "
            f"{host['version'] or '-'}; {', '.join(host['connections']) or 'no connection'}",
            file=out,
        )
    print(f"domains ({len(data['domains'])}):", file=out)
    for d in data["domains"]:
        where = d["host_id"] or "this host (before fleet mode)"
        print(
            f"  {d['domain']} ({d['domain_uuid']}): newest {d['snapshot']} at "
            f"{_utc(d['created_at'])} ({span(d['age'])} ago) on {where}, policy "
            f"{d['policy'] or '- (by hand)'}",
            file=out,
        )
    if data["migrations"]:
        print(f"migrations under way ({len(data['migrations'])}):", file=out)
    for m in data["migrations"]:
        print(
            f"  {m['domain']}: {m['from']} -> {m['to']}, step {m['step']} since "
            f"{_utc(m['since'])} ({span(m['age'])} ago), {len(m['snapshots'])} snapshots' "
            f"metadata in the catalog; by {m['host_id'] or '-'} (a killed migrate: run it "
            "again, or start that host's daemon)",
            file=out,
        )


# --- schema -------------------------------------------------------------------------------


def print_options(schema: Sequence[Option], out: TextIO) -> None:
    """``schema`` without --json: one line per option, its type and default."""
    for option in schema:
        if option.kind is Kind.SECTION:
            print(f"{option.path}:", file=out)
            continue
        shown = option.default or ("required" if option.required else option.default_note)
        print(f"  {option.path}: {option.type_text}; default {shown or 'none'}", file=out)
