"""JSON Schemas of policy files and snapshotd.yaml, made from the same options as the
reader and the reference (``snapshotd.config.schema``): ``snapshotd schema --json``.

An editor with a YAML language server (yaml-language-server: VS Code, Neovim, Emacs)
checks a file against them as it is typed and completes option names, with each
option's description, default and example.  They hold the shape of a file (which
options exist where, each value's type, the choices, the duration syntax); what needs
more than one option or the host (cron with every, a jitter shorter than every, a
time zone that exists, the snapshot name template) is left to ``snapshotd check``.

The values are as a YAML 1.2 reader sees them (editors' language servers are such
readers): ``true`` and ``false`` are booleans, ``no`` is a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from snapshotd.config.schema import CONFIG_SCHEMA, MAX_COUNT, POLICY_SCHEMA, Kind, Option

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Whole numbers with units w, d, h, m, s, largest first, each at most once (as
# snapshotd.core.schedule.parse_duration reads them); at least one of them.
DURATION_PATTERN = (
    r"^\s*(?=[0-9])(?:[0-9]+w)?\s*(?:[0-9]+d)?\s*(?:[0-9]+h)?\s*(?:[0-9]+m)?\s*(?:[0-9]+s)?\s*$"
)


def _word(text: str) -> object:
    """A choice as YAML 1.2 reads it: a boolean for true and false, else the string."""
    return {"true": True, "false": False}.get(text, text)


def _choices(option: Option) -> list[object]:
    return [_word(choice) for choice in option.choices]


def _value(option: Option, text: str) -> object:
    """A default's or an example's YAML text as the value a file would hold."""
    if option.kind in (Kind.CHOICE, Kind.DURATION):
        return _word(text.strip().strip('"'))
    loaded = yaml.safe_load(text)
    if option.kind is Kind.CHOICES and isinstance(loaded, list):
        return [_word(str(item)) for item in loaded]
    return loaded


_PLAIN: dict[Kind, dict[str, Any]] = {
    Kind.STRING: {"type": "string"},
    Kind.BOOLEAN: {"type": "boolean"},
    Kind.COUNT: {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
    Kind.DURATION: {"type": "string", "pattern": DURATION_PATTERN},
    Kind.STRINGS: {"type": "array", "items": {"type": "string"}},
    Kind.COMMANDS: {
        "type": "array",
        "items": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    Kind.SECTION: {"type": "object", "additionalProperties": False},
}


def _type(option: Option) -> dict[str, Any]:
    """The JSON Schema of one option's value (a section's properties come later)."""
    kind = option.kind
    if kind is Kind.CHOICE:
        return {"enum": _choices(option)}
    if kind is Kind.CHOICES:
        return {"type": "array", "items": {"enum": _choices(option)}}
    if kind is Kind.CHOICE_MAP:
        return {"type": "object", "additionalProperties": {"enum": _choices(option)}}
    made = dict(_PLAIN[kind])
    if kind is Kind.SECTION:
        made["properties"] = {}
    return made


def _node(option: Option) -> dict[str, Any]:
    node = {"description": option.description, **_type(option)}
    if option.default is not None:
        node["default"] = _value(option, option.default)
    if option.example is not None:
        node["examples"] = [_value(option, option.example)]
    return node


def _document(schema: Sequence[Option], title: str, ident: str) -> dict[str, Any]:
    root: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": ident,
        "title": title,
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }
    objects = {"": root}
    for option in schema:  # a section comes before its options
        node = _node(option)
        parent = objects[option.parent]
        parent["properties"][option.key] = node
        if option.required:
            parent.setdefault("required", []).append(option.key)
        if option.kind is Kind.SECTION:
            objects[option.path] = node
    return root


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file (policies.d/*.yaml)."""
    return _document(
        POLICY_SCHEMA,
        "snapshotd policy file",
        "urn:snapshotd:schema:policy",
    )


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the daemon's settings (snapshotd.yaml)."""
    return _document(
        CONFIG_SCHEMA,
        "snapshotd settings (snapshotd.yaml)",
        "urn:snapshotd:schema:config",
    )
