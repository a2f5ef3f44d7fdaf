"""The worked example of every state-table row (docs/state-table.md), made by the planner.

For each row, one ``snapshotd plan`` command on a running or shut-off domain and what
snapshotd answers: the plan (memory, disks, flags, the <domainsnapshot> XML) or the
refusal, as the planner makes them now.
"""

from __future__ import annotations

from snapshotd.core import snapxml
from snapshotd.core.model import DiskInfo, DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.table import TABLE, Row
from snapshotd.errors import PlanError

EXAMPLE_DOMAIN = "web"
EXAMPLE_IMAGE = "/var/lib/libvirt/images/web.qcow2"
EXAMPLE_DIRECTORY = "/var/lib/snapshots/{domain}"
_PREFERRED = (Request.OMIT, Request.NO, Request.INTERNAL, Request.EXTERNAL)


def _first(choices: frozenset[Request]) -> Request:
    return next(r for r in _PREFERRED if r in choices)


def _example(row: Row) -> tuple[str, str]:
    """The command line for one combination of the row, and what snapshotd answers."""
    memory, disks = _first(row.memory), _first(row.disk)
    disk_only = min(row.disk_only)  # False when the row allows it
    state = DomainState.RUNNING if row.online else DomainState.SHUTOFF
    domain = DomainInfo(
        name=EXAMPLE_DOMAIN,
        uuid="6695eb01-f6a4-8304-79aa-97f2502e193f",
        state=state,
        disks=(DiskInfo("vda", format="qcow2", path=EXAMPLE_IMAGE),),
    )
    external_memory = memory is Request.EXTERNAL
    request = SnapshotRequest(
        name="example",
        memory=memory,
        disks=disks,
        disk_only=disk_only,
        directory=EXAMPLE_DIRECTORY if external_memory else None,
    )
    words = [f"snapshotd plan --domain {EXAMPLE_DOMAIN} --name example"]
    if memory is not Request.OMIT:
        words.append(f"--memory {memory.value}")
    if disks is not Request.OMIT:
        words.append(f"--disks {disks.value}")
    if disk_only:
        words.append("--disk-only")
    if external_memory:
        words.append(f"--directory {EXAMPLE_DIRECTORY}")
    command = " ".join(words)
    try:
        plan = plan_snapshot(domain, request)
    except PlanError as exc:
        return command, f"refused before libvirt is called (exit 2):\n{exc}"
    spec = plan.spec
    memory_file = f" -> {spec.memory_file}" if spec.memory_file else ""
    lines = [f"memory: {spec.memory.value}{memory_file}"]
    for disk in spec.disks:
        lines.append(
            f"disk {disk.target}: {disk.location.value}"
            + (f" -> {disk.new_file}" if disk.new_file else "")
        )
    lines.append(f"flags: {'|'.join(spec.flags.names()) or 'none'}")
    lines.append(snapxml.render_spec(spec).rstrip("\n"))
    return command, "\n".join(lines)


def state_table_examples() -> str:
    """Markdown: for every row, one command on a running or shut-off domain and its answer."""
    out = []
    for row in TABLE:
        command, answer = _example(row)
        state = "running" if row.online else "shut off"
        out += [
            f"#### Row {row.number}: {row.text}",
            "",
            f"Domain `{EXAMPLE_DOMAIN}` {state}, one qcow2 disk `vda` ({EXAMPLE_IMAGE}):",
            "",
            "```",
            command,
            "```",
            "",
            "```",
            answer,
            "```",
            "",
        ]
    return "\n".join(out)
