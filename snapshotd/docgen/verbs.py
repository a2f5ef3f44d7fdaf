"""The verbs of an argparse parser (the CLI's), as the man page and the completion list them."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def each_verb(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Each verb's name, its one-line help and its own parser, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub
