"""The strict YAML reader: one document's node tree from a file's text, or a located error.

PyYAML's SafeLoader composes the tree and is refused each event before it becomes a
node: anchors and aliases (the billion-laughs bomb), tags (``!!python/object``),
nesting deeper than ``MAX_DEPTH``; a second document, and a file over ``MAX_BYTES``.
Every mapping key must then be a string, given once.

Values are never built by a YAML constructor: the result is the composed node tree,
text and resolved tags only.  So a snapshotd file cannot run code, whatever it
contains.  ``LocatedError`` is how every problem in a file is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import yaml

MAX_BYTES = 256 * 1024  # a policy file is a few hundred bytes; anything this big is wrong
MAX_DEPTH = 10  # mappings and lists inside each other; a policy needs 3

_YAML_TAG = "tag:yaml.org,2002:"  # the standard tags' prefix: !!str is tag:yaml.org,2002:str
STR_TAG = _YAML_TAG + "str"
INT_TAG = _YAML_TAG + "int"
BOOL_TAG = _YAML_TAG + "bool"
NULL_TAG = _YAML_TAG + "null"
_FLOAT_TAG = _YAML_TAG + "float"
_TIMESTAMP_TAG = _YAML_TAG + "timestamp"
_MERGE_TAG = _YAML_TAG + "merge"


@dataclass(frozen=True, slots=True)
class LocatedError:
    """One problem in one file, where an editor would show it.

    ``line`` and ``column`` are 1-based; both are 0 when the problem is the file
    as a whole (its owner or mode, say).  ``path`` is the option's dotted path
    (``schedule.cron``, ``domains.include[1]``); empty for the document itself.
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        # A file name is untrusted: a newline in it must not start a fake log line.
        name = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in self.file)
        where = f"{name}:{self.line}:{self.column}" if self.line > 0 else name
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"


class Mark(Protocol):
    """A position in a YAML stream (PyYAML's pure and libyaml marks both have it)."""

    line: int  # 0-based
    column: int  # 0-based


def located(filename: str, mark: Mark | None, path: str, message: str) -> LocatedError:
    """The error at ``mark`` (the file's start when there is none)."""
    if mark is None:
        return LocatedError(filename, 1, 1, path, message)
    return LocatedError(filename, mark.line + 1, mark.column + 1, path, message)


# --------------------------------------------------------------------------
# Nodes, in words


def show(text: str, limit: int = 60) -> str:
    """A value quoted for a message, cut short when long."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def describe(node: yaml.Node) -> str:
    """What a node is, in words: "a list", "the number 5", "the string 'x'"."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = str(node.value)
    words = {
        NULL_TAG: "an empty value",
        BOOL_TAG: f"the boolean {value}",
        INT_TAG: f"the number {value[:40]}",
        _FLOAT_TAG: f"the number {value[:40]}",
        _TIMESTAMP_TAG: f"the date {value[:40]}",
    }
    return words.get(node.tag, f"the string {show(value, 40)}")


def is_str(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == STR_TAG


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


def _code_point(character: object) -> str:
    """PyYAML reports a bad character as an int (text) or a byte string."""
    if isinstance(character, int):
        return f"U+{character:04X}"
    if isinstance(character, str) and len(character) == 1:
        return f"U+{ord(character):04X}"
    return repr(character)


def _tag_as_written(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


# --------------------------------------------------------------------------
# Composing one document


class _Refused(Exception):
    """YAML that snapshotd files never need, found while composing."""

    def __init__(self, mark: Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _StrictLoader(yaml.SafeLoader):
    """The SafeLoader's composer, refusing as it goes, before any node is built from
    them: aliases and anchors (the billion-laughs bomb), tags (``!!python/object``)
    and collections nested deeper than ``MAX_DEPTH``.  No constructor ever runs:
    the result is the node tree, text and resolved tags only."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                mark,
                f"YAML aliases (*{event.anchor}) are not allowed in snapshotd files; "
                "write the value out",
            )
        if event.anchor is not None:
            raise _Refused(
                mark,
                f"YAML anchors (&{event.anchor}) are not allowed in snapshotd files; "
                "write the value out",
            )
        if event.tag is not None:
            raise _Refused(
                mark,
                f"YAML tags ({show(_tag_as_written(event.tag))}) are not allowed in "
                "snapshotd files; they hold plain values only (quote a value to make it "
                "a string)",
            )
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(mark, f"the document is nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str) -> yaml.Node | None:
    """The one document's node tree (None for an empty stream), in one pass."""
    loader = _StrictLoader(text)
    try:
        loader.get_event()  # type: ignore[no-untyped-call]  # the stream's start
        node = None
        try:
            if not loader.check_event(yaml.StreamEndEvent):
                node = loader.compose_document()
        except (ValueError, OverflowError):
            # PyYAML's scanner turns "\U80001000" into chr() of a number past U+10FFFF
            # and fails with a bare ValueError or OverflowError, not a YAMLError.
            raise _Refused(
                loader.get_mark(),
                "an escape in a double-quoted string names no Unicode character (the "
                "largest is \\U0010FFFF); write the character itself or a valid escape",
            ) from None
        if not loader.check_event(yaml.StreamEndEvent):
            event: Any = loader.peek_event()  # type: ignore[no-untyped-call]
            raise _Refused(
                event.start_mark,
                "a second YAML document; a snapshotd file holds exactly one "
                "(remove this '---' and what follows, or put it in its own file)",
            )
        return node
    finally:
        loader.dispose()


def read_document(text: str, filename: str) -> yaml.Node | LocatedError | None:
    """The file's one document (None when it has none), or why it cannot be read."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        return located(
            filename,
            None,
            "",
            f"the file is {size} bytes long; at most {MAX_BYTES} ({MAX_BYTES // 1024} KiB) "
            "are read",
        )
    try:
        return _compose(text)
    except _Refused as refused:
        return located(filename, refused.mark, "", refused.message)
    except yaml.MarkedYAMLError as exc:
        return _syntax_error(exc, filename)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        message = f"character {_code_point(exc.character)} is not allowed in a YAML file"
        return LocatedError(filename, line, column, "", message)
    except yaml.YAMLError as exc:
        return located(filename, None, "", f"not valid YAML: {exc}")


def _syntax_error(exc: yaml.MarkedYAMLError, filename: str) -> LocatedError:
    message = f"not valid YAML: {exc.problem or exc.context or 'unreadable'}"
    context = exc.context_mark
    if exc.problem and exc.context and context is not None:
        if exc.problem_mark is not None and context.line != exc.problem_mark.line:
            message += f" ({exc.context} that starts at line {context.line + 1})"
        else:
            message += f" ({exc.context})"
    return located(filename, exc.problem_mark or context, "", message)


# --------------------------------------------------------------------------
# Keys


def key_errors(node: yaml.Node, filename: str, path: str = "") -> list[LocatedError]:
    """Every mapping key anywhere under ``node`` is a string, and no key appears twice."""
    if isinstance(node, yaml.SequenceNode):
        return [
            error
            for index, item in enumerate(node.value)
            for error in key_errors(item, filename, f"{path}[{index}]")
        ]
    if not isinstance(node, yaml.MappingNode):
        return []
    errors: list[LocatedError] = []
    seen: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if not is_str(key):
            errors.append(located(filename, key.start_mark, path, _key_problem(key)))
            continue
        name = str(key.value)
        child = f"{path}.{name}" if path else name
        if name in seen:
            first = seen[name].start_mark.line + 1
            message = (
                f"{show(name)} is given twice (first on line {first}); YAML would "
                "silently keep only the last one, so remove one of them"
            )
            errors.append(located(filename, key.start_mark, child, message))
            continue
        seen[name] = key
        errors.extend(key_errors(value, filename, child))
    return errors


def _key_problem(key: yaml.Node) -> str:
    if key.tag == _MERGE_TAG:
        return "YAML merge keys (<<) are not allowed; write the options out"
    return (
        f"keys must be strings, and this key is {describe(key)}; quote it if it is meant as a name"
    )
