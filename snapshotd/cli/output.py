"""How the command line shows single plans and snapshots, a domain's snapshots (a table
or the hierarchy) and the progress of a long call: text and JSON.  (reports.py shows
what policies do and did.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from snapshotd.actions.listing import Listed, Listing
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.catalog.api import GroupRow
from snapshotd.core.model import SnapshotInfo
from snapshotd.core.plan import Plan


def iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def plan_dict(plan: Plan, state: str, xml: str) -> dict[str, Any]:
    spec = plan.spec
    return {
        "domain": spec.domain,
        "state": state,
        "row": {"number": plan.row.number, "text": plan.row.text},
        "name": spec.name,
        "method": spec.method.value,
        "memory": {"snapshot": spec.memory.value, "file": spec.memory_file},
        "disks": [
            {
                "target": d.target,
                "snapshot": d.location.value,
                "source": d.source,
                "file": d.new_file,
                "reason": d.reason,
            }
            for d in spec.disks
        ],
        "flags": spec.flags.names(),
        "flags_value": int(spec.flags),
        "xml": xml,
    }


def print_plan(plan: Plan, state: str, xml: str, out: TextIO, indent: str = "") -> None:
    spec = plan.spec
    lines = [
        f"domain {spec.domain} ({state})",
        f"state table row {plan.row.number}: {plan.row.text}",
        "memory: " + spec.memory.value + (f" -> {spec.memory_file}" if spec.memory_file else ""),
        "disks:",
    ]
    for d in spec.disks:
        target = f" -> {d.new_file}" if d.new_file else ""
        lines.append(f"  {d.target:<6} {d.location.value:<9}{target}  ({d.reason})")
    lines.append(f"flags: {'|'.join(spec.flags.names()) or 'none'} ({int(spec.flags):#x})")
    lines.append("xml:")
    lines.extend(xml.rstrip("\n").split("\n"))
    for line in lines:
        print(indent + line, file=out)


def snapshot_dict(info: SnapshotInfo, current: bool | None = None) -> dict[str, Any]:
    return {
        "name": info.name,
        "creation_time": iso(info.creation_time),
        "state": info.state,
        "memory": info.memory,
        "memory_file": info.memory_file,
        "disks": [
            {"target": d.name, "snapshot": d.snapshot, "file": d.source_file or d.source_dev}
            for d in info.disks
        ],
        "parent": info.parent,
        "current": current,
        "description": info.description,
    }


def print_created(info: SnapshotInfo, plan: Plan, state: str, out: TextIO) -> None:
    spec = plan.spec
    print(f"created snapshot {info.name} of domain {spec.domain} ({state})", file=out)
    print(f"  state table row {plan.row.number}: {plan.row.text}", file=out)
    print(f"  snapshot state: {info.state}", file=out)
    memory = f"{info.memory}" + (f" -> {info.memory_file}" if info.memory_file else "")
    print(f"  memory: {memory}", file=out)
    for d in info.disks:
        where = d.source_file or d.source_dev
        print(f"  disk {d.name}: {d.snapshot}" + (f" -> {where}" if where else ""), file=out)
    print(f"  flags: {'|'.join(spec.flags.names()) or 'none'}", file=out)


def disk_summary(info: SnapshotInfo) -> str:
    return ",".join(f"{d.name}={d.snapshot}" for d in info.disks) or "-"


def listed_dict(item: Listed) -> dict[str, Any]:
    """One snapshot as `list --json` shows it; a catalog-only one also names its policy."""
    shown = snapshot_dict(item.info, item.current)
    shown["parent"] = item.parent
    shown["catalog_only"] = item.catalog_only
    if item.catalog_only:
        shown["policy"] = item.policy
    shown["group"] = item.group
    return shown


def group_dict(group: GroupRow) -> dict[str, Any]:
    """One group as `list --group --json` shows it."""
    return {
        "group": group.policy,
        "snapshot": group.name,
        "taken_at": iso(group.taken_at),
        "partial": group.partial,
        "pause_seconds": None if group.pause_ms is None else group.pause_ms / 1000,
        "members": [
            {
                "domain": m.domain_name,
                "domain_uuid": m.domain_uuid,
                "uri": sanitize_uri(m.uri),
                "creation_time": iso(m.created_at),
                # Its snapshot's metadata on other connections too (replicate, import).
                "also_on": [sanitize_uri(c.uri) for c in group.everywhere(m)[1:]],
            }
            for m in group.members
        ],
    }


def print_groups(policy: str, groups: list[GroupRow], out: TextIO) -> None:
    """A group policy's snapshots, oldest first, each with its members."""
    for group in groups:
        taken = (iso(group.taken_at) or "-")[:19].replace("T", " ")
        pause = "" if group.pause_ms is None else f", held still {group.pause_ms} ms"
        partial = ", partial" if group.partial else ""
        print(f"{group.name}  {taken}{pause}{partial}", file=out)
        for m in group.members:
            also = "".join(f", also on {sanitize_uri(c.uri)}" for c in group.everywhere(m)[1:])
            print(f"  {m.domain_name}  {sanitize_uri(m.uri)}{also}", file=out)
    if not groups:
        print(f"(policy {policy} has no groups in the catalog)", file=out)


def print_listing(listing: Listing, out: TextIO) -> None:
    """A domain's snapshots as a table, libvirt's first, then the catalog-only ones."""
    print(
        f"{'name':<47} {'created (UTC)':<20} {'state':<14} {'memory':<9} {'disks':<28} parent",
        file=out,
    )
    for item in listing.snapshots:
        info = item.info
        created = (iso(info.creation_time) or "-")[:19].replace("T", " ")
        mark = " *" if item.current else ""
        mark += " (catalog-only)" if item.catalog_only else ""
        mark += f" [group {item.group}]" if item.group else ""
        print(
            f"{(info.name or '') + mark:<47} {created:<20} {info.state or '-':<14} "
            f"{info.memory or '-':<9} {disk_summary(info):<28} {item.parent or '-'}",
            file=out,
        )
    if not listing.snapshots:
        print(f"(domain {listing.domain.name} has no snapshots)", file=out)


def _label(item: dict[str, Any]) -> str:
    label = str(item["name"])
    if item.get("current"):
        label += " *"
    if item.get("catalog_only"):
        label += " (catalog-only)"
    return label


def _children(items: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    names = {str(i["name"]) for i in items}
    kids: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for item in items:
        parent = item.get("parent")
        if parent is not None and parent in names:
            kids.setdefault(str(parent), []).append(item)
        else:
            roots.append(item)
    return [str(r["name"]) for r in roots], kids


def tree_lines(items: list[dict[str, Any]]) -> list[str]:
    """The hierarchy drawn as `virsh snapshot-list --tree` draws it (children in name
    order, the same connectors and spacer lines); a current snapshot is marked `*`, a
    catalog-only one `(catalog-only)`."""
    by_name = {str(i["name"]): i for i in items}
    roots, kids = _children(items)
    lines: list[str] = []

    def draw(name: str, indent: str, *, root: bool, last: bool) -> None:
        lines.append(_label(by_name[name]) if root else f"{indent}+- {_label(by_name[name])}")
        children = sorted(str(c["name"]) for c in kids.get(name, []))
        inner = "  " if root else indent + ("    " if last else "|   ")
        if children:
            lines.append(inner + "|")
        for index, child in enumerate(children):
            draw(child, inner, root=False, last=index == len(children) - 1)
        if not children and last:
            lines.append(indent + "  ")

    for root in sorted(roots):
        draw(root, "", root=True, last=True)
    return lines


def snapshot_forest(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same hierarchy for scripts: each snapshot with a `children` list."""
    by_name = {str(i["name"]): i for i in items}
    roots, kids = _children(items)

    def node(name: str) -> dict[str, Any]:
        item = dict(by_name[name])
        item["children"] = [node(c) for c in sorted(str(k["name"]) for k in kids.get(name, []))]
        return item

    return [node(r) for r in sorted(roots)]


def file_progress(path: str | None, total: int | None) -> Callable[[], tuple[int, int] | None]:
    """Progress of an external memory snapshot: how much of the guest's RAM its memory
    file holds so far.  libvirt 9.0 answers no job query while a snapshot runs (the
    call waits for the snapshot to end), so the file is the only live source."""

    def poll() -> tuple[int, int] | None:
        if path is None or not total:
            return None
        try:
            size = Path(path).stat().st_size
        except OSError:
            return None
        return (min(size, total), total) if size else None

    return poll


@contextlib.contextmanager
def progress(
    label: str, poll: Callable[[], tuple[int, int] | None], stream: TextIO, interval: float = 0.1
) -> Iterator[None]:
    """While the body runs, show `label: NN% (done of total MiB)` on a terminal.

    Quiet when ``stream`` is not a terminal (scripts, logs, pipes) and when the job
    reports no size (short jobs finish before there is anything to show).
    """
    if not stream.isatty():
        yield
        return
    stop = threading.Event()
    shown = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            sample = poll()
            if sample is None:
                continue
            done, total = sample
            percent = min(100, done * 100 // total)
            mib = 1 << 20
            stream.write(f"\r{label}: {percent:3d}% ({done // mib} of {total // mib} MiB)")
            stream.flush()
            shown.set()

    thread = threading.Thread(target=watch, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if shown.is_set():
            stream.write("\n")
            stream.flush()
