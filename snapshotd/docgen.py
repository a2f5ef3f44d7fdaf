"""Documents made from the code, so they cannot drift from it.

* the worked example of every state-table row in docs/state-table.md (the planner);
* snapshotd(8) from the command line's parser, snapshotd.policy(5) from the schemas;
* bash completion from the parser.

``scripts/gen-docs.py`` writes them; a unit test checks the committed files equal
what this module makes now.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from snapshotd import __version__
from snapshotd.cli.parser import build_parser
from snapshotd.config.policyload import CONFIG_SCHEMA, POLICY_SCHEMA, Kind, Option
from snapshotd.core import snapxml
from snapshotd.core.model import DiskInfo, DomainInfo, DomainState, Request, SnapshotRequest
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.table import TABLE, Row
from snapshotd.errors import PlanError

EXAMPLE_DOMAIN = "web"
EXAMPLE_IMAGE = "/var/lib/libvirt/images/web.qcow2"
EXAMPLE_DIRECTORY = "/var/lib/snapshots/{domain}"
_PREFERRED = (Request.OMIT, Request.NO, Request.INTERNAL, Request.EXTERNAL)


# --- the state table's worked examples ------------------------------------------------------


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


# --- man pages -----------------------------------------------------------------------------------


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    lines = [("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n")]
    return "\n".join(lines).replace("-", "\\-")


def _option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return f"{names} {metavar}"


def _verbs(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def man_snapshotd() -> str:
    parser = build_parser()
    out = [
        f'.TH SNAPSHOTD 8 "" "snapshotd {__version__}" "System Administration"',
        ".SH NAME",
        "snapshotd \\- libvirt domain snapshots that are right for every domain state",
        ".SH SYNOPSIS",
        ".B snapshotd",
        ".I VERB",
        "[\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "snapshotd works out the <domainsnapshot> XML and the flags a snapshot needs in "
            "the domain's state (running, paused, shut off), following the state table of "
            "libvirt's snapshot design, and refuses what the table forbids before libvirt is "
            "called. Policies in /etc/snapshotd/policies.d say which domains to snapshot, when, "
            "how, and how long to keep the snapshots; `snapshotd run` runs them under systemd. "
            "See snapshotd.policy(5) for the files."
        ),
        ".SH COMMANDS",
    ]
    for name, summary, sub in _verbs(parser):
        out += [".SS " + _roff(f"snapshotd {name}"), _roff(summary + ".")]
        if sub.description:
            out += [".PP", _roff(sub.description)]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            out += [".TP", ".B " + _roff(_option_names(action)), _roff(action.help or "")]
    out += [
        ".SH EXIT STATUS",
        ".TP",
        ".B 0",
        "Success.",
        ".TP",
        ".B 1",
        _roff("A failure while doing the work (libvirt refused or failed)."),
        ".TP",
        ".B 2",
        _roff("Bad usage, or a request refused before anything was changed."),
        ".TP",
        ".B 3",
        _roff("status: the daemon is not running; check --freshness: UNKNOWN."),
        ".SH FILES",
        ".TP",
        ".B /etc/snapshotd/snapshotd.yaml",
        "Daemon settings.",
        ".TP",
        ".B /etc/snapshotd/policies.d/",
        "Policy files.",
        ".TP",
        ".B /var/lib/snapshotd/",
        _roff("State: the catalog (catalog.sqlite), daemon.lock, status.json."),
        ".SH SEE ALSO",
        "snapshotd.policy(5), virsh(1), systemd.service(5)",
        "",
    ]
    return "\n".join(out)


def _option_entry(option: Option) -> list[str]:
    head = f".B {_roff(option.path)}" + (" (section)" if option.kind is Kind.SECTION else "")
    body = [_roff(option.description)]
    if option.kind is not Kind.SECTION:
        body.append(".br")
        body.append(_roff(f"Type: {option.type_text}."))
        default = option.default if option.default is not None else option.default_note
        if option.required:
            default = "required"
        body.append(".br")
        body.append(_roff(f"Default: {default or 'none'}."))
        if option.example is not None:
            body.append(".br")
            body.append(_roff(f"Example: {option.key}: {option.example}"))
    return [".TP", head, *body]


def man_policy() -> str:
    out = [
        f'.TH SNAPSHOTD.POLICY 5 "" "snapshotd {__version__}" "File Formats"',
        ".SH NAME",
        "snapshotd.policy \\- snapshotd policy files and snapshotd.yaml",
        ".SH DESCRIPTION",
        _roff(
            "Each *.yaml or *.yml file in /etc/snapshotd/policies.d is one policy: which domains, "
            "when, what snapshot and how long to keep it. The files are read with a safe YAML "
            "loader, must be owned by root and writable by nobody else, and every error is "
            "reported as FILE:LINE:COLUMN: option: message. snapshotd check validates them."
        ),
        ".SH POLICY OPTIONS",
    ]
    for option in POLICY_SCHEMA:
        out += _option_entry(option)
    out.append(".SH SNAPSHOTD.YAML")
    for option in CONFIG_SCHEMA:
        out += _option_entry(option)
    out += [".SH SEE ALSO", "snapshotd(8)", ""]
    return "\n".join(out)


# --- bash completion -----------------------------------------------------------------------------


def bash_completion() -> str:
    parser = build_parser()
    verbs = []
    cases = []
    for name, _summary, sub in _verbs(parser):
        verbs.append(name)
        options = sorted(o for a in sub._actions for o in a.option_strings)
        cases.append(f"        {name}) opts='{' '.join(options)}' ;;")
    return "\n".join(
        [
            "# bash completion for snapshotd; made by scripts/gen-docs.py from the parser.",
            "_snapshotd() {",
            "    local cur prev verb opts",
            '    cur="${COMP_WORDS[COMP_CWORD]}"',
            '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    if [ "$COMP_CWORD" -eq 1 ]; then',
            f"        mapfile -t COMPREPLY < <(compgen -W '{' '.join(verbs)} --help --version' "
            '-- "$cur")',
            "        return",
            "    fi",
            '    verb="${COMP_WORDS[1]}"',
            '    case "$prev" in',
            "        --domain|-d)",
            '            mapfile -t COMPREPLY < <(compgen -W "$(virsh -q list --all --name '
            '2>/dev/null)" -- "$cur")',
            "            return ;;",
            "        --config|--out|--policy-dir|--state-dir|--directory)",
            '            mapfile -t COMPREPLY < <(compgen -f -- "$cur")',
            "            return ;;",
            "    esac",
            '    case "$verb" in',
            *cases,
            "        *) opts='' ;;",
            "    esac",
            '    mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")',
            "}",
            "complete -F _snapshotd snapshotd",
            "",
        ]
    )
