"""Bash completion for snapshotd, made from the command line's parser."""

from __future__ import annotations

import argparse

from snapshotd.docgen.verbs import each_verb


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """The completion script for the verbs and options of ``parser`` (``build_parser()``)."""
    names = []
    cases = []
    for name, _summary, sub in each_verb(parser):
        names.append(name)
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
            f"        mapfile -t COMPREPLY < <(compgen -W '{' '.join(names)} --help --version' "
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
