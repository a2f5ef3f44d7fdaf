"""The typed node reader: a file's node tree checked against a schema, option by option.

``Reader`` records the node of each known option (refusing unknown and missing ones,
with a "did you mean"), converts each node to its option's Python value (checked by
``snapshotd.config.values``), and hands out the values, or the schema's defaults,
typed.  Every problem is collected as a ``LocatedError``; nothing is raised.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Sequence
from typing import cast

import yaml

from snapshotd.config.schema import MAX_COUNT, Kind, Option
from snapshotd.config.values import CHECKS, ITEM_CHECKS, disk_key_problem
from snapshotd.config.yamlreader import (
    BOOL_TAG,
    INT_TAG,
    STR_TAG,
    LocatedError,
    Mark,
    describe,
    is_null,
    is_str,
    key_errors,
    located,
    read_document,
    show,
)
from snapshotd.core import schedule
from snapshotd.core.model import DomainState
from snapshotd.core.plan import REFUSED_STATES


class Failed:
    """A value that could not be read; its error is already recorded."""


FAILED = Failed()


class Reader:
    """One file being read: its errors and the nodes and values found so far."""

    def __init__(self, filename: str, schema: Sequence[Option]) -> None:
        self.filename = filename
        self.schema = {o.path: o for o in schema}
        self.errors: list[LocatedError] = []
        self.root: yaml.Node | None = None
        self.nodes: dict[str, yaml.Node] = {}  # option path -> value node
        self.values: dict[str, object] = {}  # option path -> value read from the file
        self.failed: set[str] = set()  # options whose value could not be read

    # -- errors

    def error_at(self, mark: Mark | None, path: str, message: str) -> None:
        self.errors.append(located(self.filename, mark, path, message))

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.error_at(node.start_mark if node is not None else None, path, message)

    def where(self, *paths: str) -> tuple[yaml.Node | None, str]:
        """The node of the first of ``paths`` given in the file, else its nearest
        section in the file, for locating a problem that several options share."""
        for path in paths:
            if path in self.nodes:
                return self.nodes[path], path
        parent = paths[0]
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in self.nodes:
                return self.nodes[parent], paths[0]
        return self.root, paths[0]

    def sorted_errors(self) -> list[LocatedError]:
        return sorted(self.errors, key=lambda e: (e.line, e.column))

    # -- steps 1 and 2: syntax and keys (snapshotd.config.yamlreader)

    def document(self, text: str) -> yaml.Node | Failed | None:
        """The composed document, None for an empty file, or FAILED."""
        document = read_document(text, self.filename)
        if isinstance(document, LocatedError):
            self.errors.append(document)
            return FAILED
        return document

    def check_keys(self, root: yaml.Node) -> None:
        """Every mapping key anywhere is a string, and no key appears twice."""
        self.errors.extend(key_errors(root, self.filename))

    # -- step 3: structure

    def structure(self, node: yaml.MappingNode, prefix: str) -> None:
        """Record each known option's node; refuse unknown and missing options."""
        given: set[str] = set()
        for key, value in node.value:
            if not is_str(key):
                continue  # reported by check_keys
            name = str(key.value)
            if name in given:
                continue  # a duplicate, reported by check_keys
            given.add(name)
            path = f"{prefix}.{name}" if prefix else name
            option = self.schema.get(path)
            if option is None:
                self.error(key, path, self._unknown(name, prefix))
                continue
            if option.kind is Kind.SECTION:
                if is_null(value):
                    continue  # an empty section is the same as none
                if not isinstance(value, yaml.MappingNode):
                    self._type_error(option, value, path)
                    # Its options are unknown, not defaults: checks that need them skip.
                    self.failed.update(o for o in self.schema if o.startswith(path + "."))
                    continue
                self.nodes[path] = value
                self.structure(value, path)
            else:
                self.nodes[path] = value
        for option in self.schema.values():
            if option.required and option.parent == prefix and option.key not in given:
                what = option.description.replace("`", "")
                self.error(node, option.path, f"is required and missing. {what}")

    def _unknown(self, name: str, prefix: str) -> str:
        siblings = [o.key for o in self.schema.values() if o.parent == prefix]
        message = f"unknown option {show(name)}"
        close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
        elsewhere = [o.path for o in self.schema.values() if o.key == name and o.parent]
        if close:
            message += f"; did you mean {close[0]!r}?"
        elif elsewhere:
            message += f"; did you mean {' or '.join(elsewhere)}? (it belongs in that section)"
        else:
            where = f"under {prefix}" if prefix else "at the top level"
            message += f"; the options {where} are {', '.join(siblings)}"
        return message

    def _type_error(self, option: Option, node: yaml.Node, path: str) -> None:
        message = f"expected {option.type_text}, got {describe(node)}"
        if is_null(node) and option.kind is not Kind.SECTION:
            message += " (remove the line to use the default)"
        elif option.kind is Kind.STRING and isinstance(node, yaml.ScalarNode):
            message += " (quote it to make it a string)"
        elif option.kind is Kind.BOOLEAN and node.tag == BOOL_TAG:
            message += " (write true or false)"
        self.failed.add(path)
        self.error(node, path, message)

    # -- step 4: values

    def read_values(self) -> None:
        for path, node in self.nodes.items():
            option = self.schema[path]
            if option.kind is Kind.SECTION:
                continue
            value = self.convert(option, node, path)
            if isinstance(value, Failed):
                self.failed.add(path)
                continue
            check = CHECKS.get(path)
            message = check(value) if check is not None else None
            if message is not None:
                self.failed.add(path)
                self.error(node, path, message)
                continue
            self.values[path] = value

    def convert(self, option: Option, node: yaml.Node, path: str) -> object:
        """The Python value of ``node`` for ``option``, or FAILED (error recorded)."""
        kind = option.kind
        if kind in (Kind.STRINGS, Kind.CHOICES):
            if not isinstance(node, yaml.SequenceNode):
                self._type_error(option, node, path)
                return FAILED
            items: list[str] = []
            ok = True
            for index, item in enumerate(node.value):
                value = self._list_item(option, item, f"{path}[{index}]")
                if isinstance(value, Failed):
                    ok = False
                else:
                    items.append(value)
            return tuple(items) if ok else FAILED
        if kind is Kind.CHOICE_MAP:
            return self._choice_map(option, node, path)
        if kind is Kind.COMMANDS:
            return self._commands(option, node, path)
        if not isinstance(node, yaml.ScalarNode):
            self._type_error(option, node, path)
            return FAILED
        return self._scalar(option, node, path)

    def _list_item(self, option: Option, item: yaml.Node, path: str) -> str | Failed:
        if not is_str(item):
            what = "a string" if option.kind is Kind.STRINGS else f"one of {option.choices}"
            self.error(item, path, f"expected {what}, got {describe(item)}")
            return FAILED
        text = str(item.value)
        if option.kind is Kind.CHOICES:
            return self._choose(option, item, text, path)
        check = ITEM_CHECKS.get(option.path)
        message = check(text) if check is not None else None
        if message is not None:
            self.error(item, path, message)
            return FAILED
        return text

    def _choice_map(
        self, option: Option, node: yaml.Node, path: str
    ) -> tuple[tuple[str, str], ...] | Failed:
        if is_null(node):
            return ()
        if not isinstance(node, yaml.MappingNode):
            self._type_error(option, node, path)
            return FAILED
        pairs: list[tuple[str, str]] = []
        ok = True
        seen: set[str] = set()
        for key, value in node.value:
            if not is_str(key) or str(key.value) in seen:
                ok = False  # reported by check_keys
                continue
            name = str(key.value)
            seen.add(name)
            where = f"{path}.{name}"
            problem = disk_key_problem(name)
            if problem is not None:
                self.error(key, where, problem)
                ok = False
                continue
            if not isinstance(value, yaml.ScalarNode) or value.tag not in (STR_TAG, BOOL_TAG):
                self.error(value, where, f"expected {option.type_text}, got {describe(value)}")
                ok = False
                continue
            choice = self._choose(option, value, str(value.value), where)
            if isinstance(choice, Failed):
                ok = False
            else:
                pairs.append((name, choice))
        return tuple(pairs) if ok else FAILED

    def _commands(
        self, option: Option, node: yaml.Node, path: str
    ) -> tuple[tuple[str, ...], ...] | Failed:
        if is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self._type_error(option, node, path)
            return FAILED
        commands: list[tuple[str, ...]] = []
        ok = True
        for index, item in enumerate(node.value):
            where = f"{path}[{index}]"
            if isinstance(item, yaml.SequenceNode) and not item.value:
                self.error(item, where, "is an empty command")
                ok = False
                continue
            if not isinstance(item, yaml.SequenceNode):
                self.error(
                    item,
                    where,
                    f'expected a command as a list such as ["/usr/bin/logger", "done"], '
                    f"got {describe(item)}; commands run without a shell",
                )
                ok = False
                continue
            words = [
                w
                for w in item.value
                if is_str(w) or (isinstance(w, yaml.ScalarNode) and w.tag in (INT_TAG, BOOL_TAG))
            ]
            if len(words) != len(item.value):
                self.error(item, where, "every word of a command must be a string")
                ok = False
                continue
            argv = tuple(str(w.value) for w in words)
            if not argv[0].startswith("/") or "\0" in "".join(argv):
                self.error(
                    item.value[0],
                    f"{where}[0]",
                    f"{show(argv[0])} must be an absolute path to a program (snapshotd "
                    "runs as root and does not search PATH)",
                )
                ok = False
                continue
            commands.append(argv)
        return tuple(commands) if ok else FAILED

    def _choose(self, option: Option, node: yaml.Node, text: str, path: str) -> str | Failed:
        word = text.strip().lower()
        if word in option.choices:
            return word
        if option.path == "domains.states" and word in {s.value for s in REFUSED_STATES}:
            why = REFUSED_STATES[DomainState(word)][1]
            self.error(node, path, f"{word} domains are never snapshotted: {why}")
            return FAILED
        message = f"{show(text)} is not one of {', '.join(option.choices)}"
        close = difflib.get_close_matches(word, option.choices, n=1, cutoff=0.6)
        if close:
            message += f"; did you mean {close[0]!r}?"
        self.error(node, path, message)
        return FAILED

    def _scalar(self, option: Option, node: yaml.ScalarNode, path: str) -> object:
        text = str(node.value)
        kind = option.kind
        if kind is Kind.STRING and node.tag == STR_TAG:
            return text
        if kind is Kind.BOOLEAN and node.tag == BOOL_TAG and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is Kind.COUNT and node.tag == INT_TAG:
            return self._count(node, path)
        if kind is Kind.DURATION and node.tag in (STR_TAG, INT_TAG):
            return self._duration(node, text, path)
        if kind is Kind.CHOICE and node.tag in (STR_TAG, BOOL_TAG):
            return self._choose(option, node, text, path)
        self._type_error(option, node, path)
        return FAILED

    def _count(self, node: yaml.ScalarNode, path: str) -> int | Failed:
        try:
            number = int(yaml.constructor.SafeConstructor().construct_yaml_int(node))
        except (ValueError, OverflowError):
            number = MAX_COUNT + 1
        if number < 0:
            self.error(node, path, f"must be 0 or more, not {number}")
            return FAILED
        if number > MAX_COUNT:
            self.error(node, path, f"must be at most {MAX_COUNT}")
            return FAILED
        return number

    def _duration(self, node: yaml.Node, text: str, path: str) -> dt.timedelta | Failed:
        try:
            value = schedule.parse_duration(text)
        except (ValueError, OverflowError) as exc:
            self.error(node, path, str(exc))
            return FAILED
        if value < dt.timedelta(0):
            self.error(node, path, f"{show(text)} is negative")
            return FAILED
        return value

    # -- typed access to values (the file's, or the schema's defaults)

    def get(self, path: str) -> object:
        if path in self.values:
            return self.values[path]
        return defaults(tuple(self.schema.values()))[path]

    def text(self, path: str) -> str:
        return cast(str, self.get(path))

    def opt_text(self, path: str) -> str | None:
        return cast("str | None", self.get(path))

    def flag(self, path: str) -> bool:
        return cast(bool, self.get(path))

    def count(self, path: str) -> int:
        return cast(int, self.get(path))

    def duration(self, path: str) -> dt.timedelta:
        return cast(dt.timedelta, self.get(path))

    def opt_duration(self, path: str) -> dt.timedelta | None:
        return cast("dt.timedelta | None", self.get(path))

    def command_lists(self, path: str) -> tuple[tuple[str, ...], ...]:
        return cast("tuple[tuple[str, ...], ...]", self.get(path))

    def texts(self, path: str) -> tuple[str, ...]:
        return cast("tuple[str, ...]", self.get(path))

    def pairs(self, path: str) -> tuple[tuple[str, str], ...]:
        return cast("tuple[tuple[str, str], ...]", self.get(path))

    def ok(self, *paths: str) -> bool:
        """Were all these options read (or defaulted) without error?"""
        return not any(p in self.failed for p in paths)

    def given(self, path: str) -> bool:
        return path in self.nodes


# --------------------------------------------------------------------------
# Defaults, read from the schema's YAML text by the same code as a file.

_DEFAULTS: dict[tuple[Option, ...], dict[str, object]] = {}


def defaults(schema: tuple[Option, ...]) -> dict[str, object]:
    """Each option's default value (None when it has none), read once per schema."""
    cached = _DEFAULTS.get(schema)
    if cached is not None:
        return cached
    values: dict[str, object] = {}
    reader = Reader("<schema>", schema)
    for option in schema:
        if option.kind is Kind.SECTION:
            continue
        if option.default is None:
            values[option.path] = None
            continue
        node = yaml.compose(option.default, Loader=yaml.SafeLoader)
        if node is None:
            raise AssertionError(f"{option.path}: empty default")
        values[option.path] = reader.convert(option, node, option.path)
    if reader.errors:  # a mistake in the schema itself
        raise AssertionError("; ".join(str(e) for e in reader.errors))
    _DEFAULTS[schema] = values
    return values
