"""The JSON Schemas for editors (snapshotd/config/jsonschema.py, `snapshotd schema`):
valid schemas, made from the options the reader uses, accepting every example the
project ships and rejecting every corpus file that is invalid by its shape."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from snapshotd.cli.app import main
from snapshotd.config import jsonschema as made
from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA, Kind, Option

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "policies" / "invalid"
# The reader's messages for a file whose shape is wrong: an unknown option, a value of the
# wrong type, a choice that is none of them, a duration that is not one, a count out of
# range, a missing required option, a file that is no mapping.  The corpus's other files
# break rules that take more than one value or the host (check's work), or YAML features
# snapshotd refuses (anchors, tags, merge keys, duplicate keys).
SHAPE = re.compile(
    r"unknown option|expected (?:a |an |true or false)|is not one of|invalid duration|"
    r"must be 0 or more|must be at most|is required and missing|the file must be a mapping|"
    r"the file is empty|"
    r"are never snapshotted|nested more than"
)


class Yaml12Loader(yaml.SafeLoader):
    """YAML as an editor's language server reads it (1.2): only true and false are
    booleans (PyYAML's 1.1 also takes yes, no, on and off)."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Yaml12Loader)  # noqa: S506 - a SafeLoader


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def nodes(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Each option's node in a made schema, by its dotted path."""
    for key, node in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path, node
        yield from nodes(node, f"{path}.")


@pytest.mark.parametrize("schema", [made.policy_schema(), made.config_schema()])
def test_each_is_a_valid_json_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == made.DIALECT


@pytest.mark.parametrize(
    ("schema", "options"),
    [(made.policy_schema(), POLICY_SCHEMA), (made.config_schema(), CONFIG_SCHEMA)],
)
def test_every_option_is_there_with_its_description(
    schema: dict[str, Any], options: tuple[Option, ...]
) -> None:
    found = dict(nodes(schema))
    assert list(found) == [o.path for o in options]
    for option in options:
        assert found[option.path]["description"] == option.description
    required = [o.path for o in options if o.required and not o.parent]
    assert schema.get("required", []) == required


@pytest.mark.parametrize(
    ("schema", "options"),
    [(made.policy_schema(), POLICY_SCHEMA), (made.config_schema(), CONFIG_SCHEMA)],
)
def test_each_option_s_default_and_example_fit_its_own_type(
    schema: dict[str, Any], options: tuple[Option, ...]
) -> None:
    found = dict(nodes(schema))
    for option in options:
        node = found[option.path]
        check = validator({k: v for k, v in node.items() if k != "properties"})
        for value in [*node.get("examples", []), *([node["default"]] if "default" in node else [])]:
            if option.kind is not Kind.SECTION:
                assert check.is_valid(value), (option.path, value)


def test_every_example_the_project_ships_validates() -> None:
    policies = sorted((REPO / "config" / "policies.d").glob("*.yaml"))
    assert len(policies) >= 3
    for path in policies:
        errors = [e.message for e in validator(made.policy_schema()).iter_errors(load(path))]
        assert errors == [], path
    config = load(REPO / "config" / "snapshotd.yaml") or {}
    assert list(validator(made.config_schema()).iter_errors(config)) == []


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def test_every_corpus_file_invalid_by_its_shape_fails_the_schema() -> None:
    policy = validator(made.policy_schema())
    shaped = []
    for path in _corpus():
        expected = path.with_suffix(".expected").read_text(encoding="utf-8")
        if not SHAPE.search(expected):
            continue
        shaped.append(path.name)
        assert not policy.is_valid(load(path)), f"{path.name} passes: {expected}"
    assert len(shaped) >= 20, shaped  # the corpus's shape errors are most of its files


def test_the_schema_rejects_what_a_yaml_1_1_reader_would_take_for_a_boolean() -> None:
    """`atomic: yes` is a string to an editor: not the boolean the option wants."""
    body = "schedule: {every: 1h}\nsnapshot: {atomic: yes, memory: no}\n"
    errors = list(validator(made.policy_schema()).iter_errors(yaml.load(body, Loader=Yaml12Loader)))  # noqa: S506 - a SafeLoader
    assert [list(e.path) for e in errors] == [["snapshot", "atomic"]]


@pytest.mark.parametrize(
    ("text", "valid"),
    [("30s", True), ("1h30m", True), ("1w 2d", True), ("0s", True), ("15", False),
     ("", False), ("1m1h", False), ("-5m", False), ("15 parsecs", False)],
)  # fmt: skip
def test_the_duration_pattern_reads_as_the_reader_does(text: str, valid: bool) -> None:
    assert bool(re.search(made.DURATION_PATTERN, text)) is valid


@pytest.mark.parametrize(
    ("args", "expected"), [((), made.policy_schema()), (("--config",), made.config_schema())]
)
def test_snapshotd_schema_prints_it(args: tuple[str, ...], expected: dict[str, Any]) -> None:
    out = io.StringIO()
    assert main(["schema", "--json", *args], out=out) == 0
    assert json.loads(out.getvalue()) == expected
    out = io.StringIO()
    assert main(["schema", *args], out=out) == 0
    listed = [line.strip().split(":")[0] for line in out.getvalue().splitlines()]
    options = CONFIG_SCHEMA if args else POLICY_SCHEMA
    assert listed == [o.path for o in options]
