"""Bash completion for snapshotd, made from the command line's parser."""

from __future__ import annotations

import argparse

from snapshotd.docgen.verbs import each_verb


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """The completion script for the verbs and options of ``parser`` (``build_parser()``)."""
    # Long because most of it is the script itself, line by line, read top to bottom.
    names = []
    cases = []
    # The options the top-level parser takes before the verb, and those of them that take
    # a value: the verb is the first word after them.
    before = sorted(o for a in parser._actions if a.option_strings for o in a.option_strings)
    valued = "|".join(
        sorted(
            o
            for a in parser._actions
            if a.option_strings and a.nargs != 0
            for o in a.option_strings
        )
    )
    for name, _summary, sub in each_verb(parser):
        names.append(name)
        options = sorted(o for a in sub._actions for o in a.option_strings)
        cases.append(f"        {name}) opts='{' '.join(options)}' ;;")
    return "\n".join(
        [
            "# bash completion for snapshotd; made by scripts/gen-docs.py from the parser.",
            "_snapshotd() {",
            "    local cur prev verb opts i=1",
            '    cur="${COMP_WORDS[COMP_CWORD]}"',
            '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    case "$prev" in',
            "        --domain|-d)",
            '            mapfile -t COMPREPLY < <(compgen -W "$(virsh -q list --all --name '
            '2>/dev/null)" -- "$cur")',
            "            return ;;",
            "        --config|--out|--policy-dir|--state-dir|--directory)",
            '            mapfile -t COMPREPLY < <(compgen -f -- "$cur")',
            "            return ;;",
            f"        {valued})",
            "            return ;;",
            "    esac",
            "    # Options may come before the verb (snapshotd -c URI list ...): skip them.",
            '    while [ "$i" -lt "$COMP_CWORD" ]; do',
            '        case "${COMP_WORDS[i]}" in',
            f"            {valued}) i=$((i + 2)) ;;",
            "            -*) i=$((i + 1)) ;;",
            "            *) break ;;",
            "        esac",
            "    done",
            '    if [ "$i" -ge "$COMP_CWORD" ]; then',
            f"        mapfile -t COMPREPLY < <(compgen -W '{' '.join([*names, *before])}' "
            '-- "$cur")',
            "        return",
            "    fi",
            '    verb="${COMP_WORDS[i]}"',
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
