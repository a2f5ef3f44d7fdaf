"""The man pages: snapshotd(8) from the command line's parser, snapshotd.policy(5) from
the config schemas."""

from __future__ import annotations

import argparse
import re

from snapshotd import __version__
from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA, Kind, Option
from snapshotd.docgen.verbs import each_verb


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


def man_snapshotd(parser: argparse.ArgumentParser) -> str:
    """snapshotd(8): every verb of ``parser`` (the CLI's ``build_parser()``) and its options."""
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
    for name, summary, sub in each_verb(parser):
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
    """snapshotd.policy(5): every option of policy files and snapshotd.yaml."""
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
