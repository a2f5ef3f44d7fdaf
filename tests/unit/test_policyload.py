"""Policy and config files: the examples in config/, the invalid corpus in
tests/policies/invalid/, hostile input, defaults, the schema and its docs."""

from __future__ import annotations

import datetime as dt
import inspect
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.config.load import check_set, parse_config, parse_policy
from snapshotd.config.reader import Failed, Reader
from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA, Kind, Option
from snapshotd.config.settings import DatabaseSettings, Settings
from snapshotd.config.values import sanitize_url
from snapshotd.config.yamlreader import MAX_BYTES, LocatedError
from snapshotd.core.model import DomainState, Request
from snapshotd.core.policy import Metadata, Policy, Quiesce, Selector, SnapshotSettings
from snapshotd.core.retention import Retention
from snapshotd.core.schedule import Schedule
from snapshotd.docgen.policies import schema_markdown

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
EXAMPLES = sorted((CONFIG / "policies.d").glob("*.yaml"))
INVALID = REPO / "tests" / "policies" / "invalid"
CASES = sorted(p.stem for p in INVALID.glob("*.yaml"))
HOUR = dt.timedelta(hours=1)


def policy(text: str, filename: str = "/etc/snapshotd/policies.d/p.yaml") -> Policy:
    result = parse_policy(text, filename)
    assert isinstance(result, Policy), "\n".join(str(e) for e in result)
    return result


def errors(text: str, filename: str = "p.yaml") -> list[str]:
    """Each error without its file name: LINE:COLUMN: path: message."""
    result = parse_policy(text, filename)
    assert isinstance(result, list), f"accepted: {result}"
    assert result
    return [str(e).removeprefix(f"{filename}:") for e in result]


# --- the examples -----------------------------------------------------------------------


def test_there_are_five_example_policies() -> None:
    assert [p.name for p in EXAMPLES] == [
        "catalog-backups.yaml",
        "hourly-internal.yaml",
        "nightly-external.yaml",
        "shop.yaml",
        "shutoff-only.yaml",
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_policy_is_valid(path: Path) -> None:
    result = policy(path.read_text(), str(path))
    assert result.name == path.stem
    assert result.source == str(path)


def test_example_daemon_settings_are_valid_and_the_defaults() -> None:
    path = CONFIG / "snapshotd.yaml"
    result = parse_config(path.read_text(), str(path))
    assert result == Settings(config=str(path), config_found=True)


def test_examples_say_what_they_promise() -> None:
    loaded = {p.stem: policy(p.read_text(), str(p)) for p in EXAMPLES}
    hourly = loaded["hourly-internal"].snapshot
    assert hourly.memory is Request.INTERNAL
    nightly = loaded["nightly-external"].snapshot
    assert (nightly.disks, nightly.disk_only, nightly.quiesce) == (
        Request.EXTERNAL,
        True,
        Quiesce.TRY,
    )
    catalog = loaded["catalog-backups"].snapshot
    assert (catalog.metadata, catalog.disks, catalog.disk_only) == (
        Metadata.CATALOG,
        Request.EXTERNAL,
        True,
    )
    assert loaded["shutoff-only"].selector.states == frozenset({DomainState.SHUTOFF})
    assert not check_set(loaded.values())


@pytest.mark.parametrize("path", [*EXAMPLES, CONFIG / "snapshotd.yaml"], ids=lambda p: p.name)
def test_every_option_in_the_examples_is_commented(path: Path) -> None:
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        option = re.match(r"[a-z_]+:", stripped)
        if option and not stripped.startswith("#"):
            assert previous.startswith("#") or " # " in line, f"{path.name}:{number}: {line}"
        previous = stripped if stripped else previous


def test_every_option_of_the_schema_appears_in_some_example() -> None:
    text = "\n".join(p.read_text() for p in EXAMPLES)
    for option in POLICY_SCHEMA:
        assert re.search(rf"^\s*{option.key}:", text, re.MULTILINE), option.path


# --- the invalid corpus -----------------------------------------------------------------


def test_the_invalid_corpus_is_complete() -> None:
    assert len(CASES) >= 25
    assert sorted(p.stem for p in INVALID.glob("*.expected")) == CASES


@pytest.mark.parametrize("case", CASES)
def test_invalid_policy(case: str) -> None:
    """Each file is refused; its .expected line (LINE:COLUMN: path: message) is one
    error exactly, or the start of one where the rest comes from another module."""
    filename = f"/etc/snapshotd/policies.d/{case}.yaml"
    result = parse_policy((INVALID / f"{case}.yaml").read_text(), filename)
    assert isinstance(result, list), f"{case} was accepted"
    expected = (INVALID / f"{case}.expected").read_text().strip()
    assert "\n" not in expected
    assert re.match(r"\d+:\d+: ", expected)
    lines = [str(e).removeprefix(f"{filename}:") for e in result]
    assert all(e.file == filename and e.line >= 1 and e.column >= 1 for e in result)
    assert any(line == expected or line.startswith(expected) for line in lines), "\n".join(lines)


def test_every_problem_is_reported_at_once() -> None:
    text = (INVALID / "many-errors.yaml").read_text()
    assert errors(text) == [
        "4:12: domains.include: expected a list of strings, got the string 'web-*'",
        "5:21: domains.states[1]: 'sleeping' is not one of running, paused, shutoff, blocked",
        "8:10: schedule.every: give cron or every, not both",
        "10:3: snapshot.memroy: unknown option 'memroy'; did you mean 'memory'?",
        "12:10: retention.daily: must be 0 or more, not -1",
    ]


def test_a_state_table_refusal_names_the_state_and_the_row() -> None:
    (message,) = errors((INVALID / "internal-memory-shutoff.yaml").read_text())
    assert "for shutoff domains [seed table row 6]" in message
    assert "no memory to save" in message


def test_error_format() -> None:
    error = LocatedError("/p/web.yaml", 3, 9, "schedule.cron", "bad")
    assert str(error) == "/p/web.yaml:3:9: schedule.cron: bad"
    assert str(LocatedError("/p/web.yaml", 1, 1, "", "empty")) == "/p/web.yaml:1:1: empty"
    assert str(LocatedError("/p/web.yaml", 0, 0, "", "mode")) == "/p/web.yaml: mode"


def test_control_characters_in_a_file_name_are_shown_escaped() -> None:
    error = LocatedError("/p/a\nFAKE: ok\x1b[2J.yaml", 2, 1, "", "bad")
    assert str(error) == "/p/a\\nFAKE: ok\\x1b[2J.yaml:2:1: bad"
    assert "\n" not in str(error)
    assert str(LocatedError("/p/h\u00e9.yaml", 1, 1, "", "x")) == "/p/h\u00e9.yaml:1:1: x"


def test_positions_are_one_based_like_an_editor() -> None:
    text = 'schedule:\n  every: 1h\nsnapshot:\n    memory:   "internl"\n'
    (message,) = errors(text)
    assert message.startswith("4:15: snapshot.memory: 'internl'")


# --- hostile input ----------------------------------------------------------------------


def test_a_python_tag_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for text in (
        f"schedule: !!python/object/apply:os.system ['touch {marker}']\n",
        f"!!python/object/apply:os.system ['touch {marker}']\n",
        f"schedule:\n  every: !!python/object/apply:os.system ['touch {marker}']\n",
        f"? !!python/object/apply:os.system ['touch {marker}']\n: 1\n",
    ):
        (message,) = errors(text)
        assert "YAML tags ('!!python/object/apply:os.system') are not allowed" in message
    assert not marker.exists()


def test_other_tags_are_refused_too() -> None:
    for tag in ("!!str", "!custom", "!!binary", "!<tag:yaml.org,2002:int>"):
        (message,) = errors(f"schedule:\n  every: {tag} 1h\n")
        assert "YAML tags" in message, message


def test_the_alias_bomb_is_refused_fast() -> None:
    text = (INVALID / "alias-bomb.yaml").read_text()
    start = time.perf_counter()
    (message,) = errors(text)
    assert time.perf_counter() - start < 1
    assert "anchors" in message


def test_a_bigger_alias_bomb_is_refused_fast() -> None:
    lines = ['l0: &l0 ["' + "x" * 100 + '"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 50) + "]" for i in range(1, 30)]
    text = "\n".join(lines) + "\n"
    start = time.perf_counter()
    assert errors(text)
    assert time.perf_counter() - start < 1


def test_aliases_without_anchors_are_refused() -> None:
    (message,) = errors("schedule: *nowhere\n")
    assert message.startswith("1:11: YAML aliases (*nowhere) are not allowed")


def test_a_huge_file_is_refused_before_it_is_parsed() -> None:
    text = "schedule:\n  every: 1h\n# " + "x" * MAX_BYTES + "\n"
    start = time.perf_counter()
    (message,) = errors(text)
    assert time.perf_counter() - start < 0.1
    assert message.startswith("1:1: the file is")
    assert "at most 262144" in message


def test_deep_nesting_is_refused_without_recursion() -> None:
    for text in (
        "a: " + "[" * 100_000 + "]" * 100_000,
        "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 200)),
    ):
        # Not a time bound (a loaded machine misses any): a recursion limit 100 frames
        # above this one, which a parser that recursed per level would hit.
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(len(inspect.stack(0)) + 100)
        try:
            (message,) = errors(text)
        finally:
            sys.setrecursionlimit(limit)
        assert "nested more than 10 levels deep" in message


def test_control_characters_are_located() -> None:
    (message,) = errors("schedule:\n  every: 1h\n  x: a\x00b\n")
    assert message == "3:7: character U+0000 is not allowed in a YAML file"


def test_a_merge_key_is_refused() -> None:
    assert "merge keys" in errors("schedule:\n  <<: {every: 1h}\n")[0]


def test_non_string_keys_are_refused_everywhere() -> None:
    for key in ("1", "true", "null", "1.5", "2024-01-01", "[a]", "{a: 1}"):
        text = f"schedule:\n  every: 1h\n? {key}\n: x\n"
        (message,) = errors(text)
        assert message.startswith("3:3: keys must be strings"), message


def test_huge_numbers_do_not_crash() -> None:
    (message,) = errors("schedule:\n  every: 1h\nretention:\n  daily: " + "9" * 5000 + "\n")
    assert message == "4:10: retention.daily: must be at most 100000"


@st.composite
def yamlish(draw: st.DrawFn) -> str:
    keys = st.sampled_from(
        [o.key for o in POLICY_SCHEMA] + ["vda", "/img/a.qcow2", "x", "every", "cron"]
    )
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(10**6), 10**30)
        | st.floats(allow_nan=True)
        | st.text(max_size=20)
        | st.sampled_from(["auto", "no", "internal", "external", "try", "15m", "0 * * * *"])
        | st.sampled_from(["{policy}-{time:%Y}", "{domain.x}", "/var/{domain}", "uuid:x"])
    )
    tree = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=12,
    )
    document = draw(st.dictionaries(keys, tree, max_size=6) | tree)
    text = yaml.safe_dump(document, default_flow_style=draw(st.booleans()))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=10)) + text[cut:]
    return text


def _never_crashes(text: str) -> None:
    result = parse_policy(text, "fuzz.yaml")
    if isinstance(result, Policy):
        return
    assert result
    for error in result:
        assert isinstance(error, LocatedError)
        assert error.line >= 1
        assert error.column >= 1
        assert error.file == "fuzz.yaml"


@settings(max_examples=200, deadline=None)
@given(yamlish())
def test_random_documents_never_crash(text: str) -> None:
    _never_crashes(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    _never_crashes(data.decode("utf-8", "surrogateescape"))
    _never_crashes(data.decode("latin-1"))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["schedule:\n  every: ", "snapshot:\n  memory: ", "name: "]),
    st.text(max_size=30),
)
def test_random_values_never_crash(prefix: str, value: str) -> None:
    _never_crashes(f"{prefix}{value}\n")


BASE: dict[str, dict[str, object]] = {
    "domains": {"include": ["web-*"], "states": ["running", "paused"]},
    "schedule": {"every": "1h", "jitter": "30s"},
    "snapshot": {
        "memory": "external",
        "disks": "external",
        "disk": {"vdb": "no"},
        "live": True,
        "directory": "/s/{domain}",
        "name": "{policy}-{time:%Y%m%dT%H%M%SZ}",
    },
    "retention": {"keep_last": 3, "min_age": "1h"},
    "hooks": {"before": [["/bin/true"]], "timeout": "10s", "before_failure": "skip"},
    "monitor": {"warn": "2h", "crit": "6h"},
}
VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "no", "internal", "external", "try", "catalog", "0s", "1m"])
    | st.sampled_from(["running", "shutoff", "crashed", "*/5 * * * *", "Europe/Berlin"])
    | st.lists(st.sampled_from(["running", "paused", "shutoff", "web-*", 1]), max_size=3)
    | st.dictionaries(st.sampled_from(["vda", "/a.img", "x y"]), st.sampled_from(["no", "ext"]))
)


def test_the_base_policy_is_valid() -> None:
    assert policy(yaml.safe_dump(BASE)).snapshot.live


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([o.path for o in POLICY_SCHEMA if o.parent]),
            VALUES,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_random_values_in_a_valid_policy_never_crash(changes: list[tuple[str, object]]) -> None:
    document = {section: dict(options) for section, options in BASE.items()}
    for path, value in changes:
        section, key = path.split(".")
        document.setdefault(section, {})[key] = value
    _never_crashes(yaml.safe_dump(document))


# --- values and defaults ----------------------------------------------------------------


def test_the_schemas_defaults_are_the_models_defaults() -> None:
    result = policy("schedule:\n  every: 1h\n", "/etc/snapshotd/policies.d/web.yml")
    assert result == Policy(
        name="web",
        source="/etc/snapshotd/policies.d/web.yml",
        selector=Selector(),
        schedule=Schedule(every=HOUR),
        snapshot=SnapshotSettings(),
        retention=None,
    )


def test_the_issue_example() -> None:
    text = """
name: web-hourly
domains:
  include: ["web-*", "uuid:6695eb01-f6a4-8304-79aa-97f2502e193f"]
  exclude: ["web-scratch"]
  states: [running, paused, shutoff]
schedule:
  cron: "0 * * * *"
  timezone: Europe/Berlin
  jitter: 30s
  catch_up: true
snapshot:
  memory: auto
  disks: auto
  disk:
    vdb: "no"
  disk_only: false
  quiesce: false
  live: false
  atomic: true
  name: "{policy}-{time:%Y%m%dT%H%M%SZ}"
  description: "taken by snapshotd"
  directory: /var/lib/libvirt/snapshots/{domain}
  metadata: libvirt
retention:
  keep_last: 3
  hourly: 24
  daily: 7
  weekly: 4
  monthly: 12
  yearly: 0
  min_age: 1h
"""
    result = policy(text)
    assert result.name == "web-hourly"
    assert result.selector.include == ("web-*", "uuid:6695eb01-f6a4-8304-79aa-97f2502e193f")
    assert result.schedule == Schedule(
        cron="0 * * * *",
        timezone="Europe/Berlin",
        jitter=dt.timedelta(seconds=30),
        catch_up=True,
    )
    assert result.snapshot.disk == (("vdb", Request.NO),)
    assert result.snapshot.directory == "/var/lib/libvirt/snapshots/{domain}"
    assert result.retention == Retention(
        keep_last=3, hourly=24, daily=7, weekly=4, monthly=12, yearly=0, min_age=HOUR
    )
    when = dt.datetime(2026, 11, 25, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert result.snapshot_name("web-1", when) == "web-hourly-20261125T120000Z"


def test_unquoted_no_is_the_word_no() -> None:
    result = policy(
        "schedule: {every: 1h}\n"
        "snapshot: {memory: no, disk_only: true, disks: external, disk: {vdb: no}}\n"
    )
    assert result.snapshot.memory is Request.NO
    assert result.snapshot.disk == (("vdb", Request.NO),)


def test_quiesce_takes_booleans_and_try() -> None:
    base = "domains: {states: [running]}\nschedule: {every: 1h}\nsnapshot: {disk_only: true, "
    assert policy(base + "quiesce: true}\n").snapshot.quiesce is Quiesce.YES
    assert policy(base + "quiesce: False}\n").snapshot.quiesce is Quiesce.NO
    assert policy(base + "quiesce: try}\n").snapshot.quiesce is Quiesce.TRY


def test_quiesce_try_is_fine_for_shut_off_domains() -> None:
    text = "schedule: {every: 1h}\nsnapshot: {disk_only: true, quiesce: try}\n"
    assert policy(text).selector.states == Selector().states


def test_empty_sections_are_absent_sections() -> None:
    result = policy("domains:\nschedule:\n  every: 1h\nsnapshot:\nretention:\n")
    assert result.retention is None
    assert result.snapshot == SnapshotSettings()


def test_retention_with_only_min_age_is_not_empty() -> None:
    assert policy("schedule: {every: 1h}\nretention: {min_age: 1d}\n").retention == Retention(
        min_age=dt.timedelta(days=1)
    )


def test_a_policy_name_from_a_bad_file_name() -> None:
    result = parse_policy("schedule: {every: 1h}\n", "/p/my policy.yaml")
    assert isinstance(result, list)
    assert str(result[0]).startswith("/p/my policy.yaml:1:1: name: the policy is named after")


def test_names_do_not_collide_between_runs() -> None:
    ok = "schedule: {every: 1d}\nsnapshot: {name: '{policy}-{time:%Y%m%d}'}\n"
    assert policy(ok).snapshot.name == "{policy}-{time:%Y%m%d}"
    daily = "schedule: {cron: '30 2 * * *', timezone: Europe/Berlin}\n"
    assert policy(daily + "snapshot: {name: '{policy}-{time:%Y%m%d}'}\n")
    often = "schedule: {cron: '*/30 * * * *'}\nsnapshot: {name: '{policy}-{time:%Y%m%d%H}'}\n"
    (message,) = errors(often)
    assert message == (
        "2:18: snapshot.name: the runs at 2001-02-03T05:00:00Z and 2001-02-03T05:30:00Z "
        "would both be named 'p-2001020305'; use a finer {time:...} format"
    )
    for spec in ("x", "%m%d%H%M", "%%Y%m%d"):
        text = f"schedule: {{every: 1d}}\nsnapshot: {{name: '{{policy}}-{{time:{spec}}}'}}\n"
        assert "must include the year" in errors(text)[0], spec


def test_external_memory_with_a_directory_is_fine() -> None:
    result = policy(
        "domains: {states: [running, paused]}\nschedule: {every: 1h}\n"
        "snapshot: {memory: external, disks: external, live: true, directory: '/s/{domain}'}\n"
    )
    assert result.snapshot.live


def test_blocked_is_an_online_state() -> None:
    text = "domains: {states: [blocked]}\nschedule: {every: 1h}\nsnapshot: {memory: internal}\n"
    assert policy(text).selector.states == frozenset({DomainState.BLOCKED})


# --- cross-file checks ------------------------------------------------------------------


def test_duplicate_names_across_files_name_both_files() -> None:
    a = policy("name: web\nschedule: {every: 1h}\n", "/p/a.yaml")
    b = policy("name: web\nschedule: {every: 2h}\n", "/p/b.yaml")
    c = policy("schedule: {every: 2h}\n", "/p/c.yaml")
    assert [str(e) for e in check_set([a, b, c])] == [
        "/p/a.yaml:1:1: name: policy name 'web' is also used by /p/b.yaml; policy names "
        "must be unique (set a different name: or rename the file)",
        "/p/b.yaml:1:1: name: policy name 'web' is also used by /p/a.yaml; policy names "
        "must be unique (set a different name: or rename the file)",
    ]


# --- daemon settings --------------------------------------------------------------------


def test_config_defaults_and_values() -> None:
    assert parse_config("", "c.yaml") == Settings(config="c.yaml", config_found=True)
    assert parse_config("# nothing\n", "c.yaml") == Settings(config="c.yaml", config_found=True)
    result = parse_config(
        "policy_dir: /srv/policies/\nstate_dir: /srv/state\n"
        "connect: [qemu:///system, 'qemu+ssh://root@b/system']\n",
        "c.yaml",
    )
    assert result == Settings(
        policy_dir="/srv/policies",
        state_dir="/srv/state",
        connect=("qemu:///system", "qemu+ssh://root@b/system"),
        config="c.yaml",
        config_found=True,
    )


def test_config_errors() -> None:
    result = parse_config(
        "policy_dri: /x\nstate_dir: relative\nconnect: []\nschedule: {}\n", "c.yaml"
    )
    assert isinstance(result, list)
    assert [str(e) for e in result] == [
        "c.yaml:1:1: policy_dri: unknown option 'policy_dri'; did you mean 'policy_dir'?",
        "c.yaml:2:12: state_dir: directory 'relative' must be an absolute path",
        "c.yaml:3:10: connect: lists no connection; snapshotd needs at least one (qemu:///system)",
        "c.yaml:4:1: schedule: unknown option 'schedule'; the options at the top level are "
        "policy_dir, state_dir, connect, workers, operation_timeout, metrics_address, catalog",
    ]


def test_config_refuses_a_bad_uri_and_a_list() -> None:
    assert isinstance(parse_config("connect: ['not a uri']\n", "c.yaml"), list)
    assert isinstance(parse_config("- a\n", "c.yaml"), list)


# --- the schema and its documentation ---------------------------------------------------


def test_every_option_is_documented() -> None:
    for schema in (POLICY_SCHEMA, CONFIG_SCHEMA):
        for option in schema:
            assert option.description.endswith("."), option.path
            if option.kind is not Kind.SECTION:
                assert option.example is not None, option.path
                has_default = (
                    option.default is not None or option.default_note is not None or option.required
                )
                assert has_default, option.path
            if option.parent:
                assert any(o.path == option.parent for o in schema), option.path


@pytest.mark.parametrize(
    "option",
    [o for o in (*POLICY_SCHEMA, *CONFIG_SCHEMA) if o.kind is not Kind.SECTION],
    ids=lambda o: o.path,
)
def test_every_example_value_is_valid(option: Option) -> None:
    reader = Reader("example", (option,))
    assert option.example is not None
    node = yaml.compose(option.example, Loader=yaml.SafeLoader)
    assert node is not None
    value = reader.convert(option, node, option.path)
    assert not reader.errors, reader.errors
    assert not isinstance(value, Failed)


BEGIN = "<!-- BEGIN schema_markdown() -->"
END = "<!-- END schema_markdown() -->"


def test_docs_hold_the_generated_reference() -> None:
    text = (REPO / "docs" / "policies.md").read_text()
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    generated = text.split(BEGIN)[1].split(END)[0]
    assert generated == "\n" + schema_markdown(), (
        "docs/policies.md is out of date: replace the text between the markers with the "
        "output of: python -c 'from snapshotd.docgen.policies import schema_markdown; "
        'print(schema_markdown(), end="")\''
    )


def test_schema_markdown_mentions_every_option() -> None:
    text = schema_markdown()
    for option in (*POLICY_SCHEMA, *CONFIG_SCHEMA):
        assert f"`{option.path}" in text


def test_config_workers() -> None:
    config = parse_config("workers: 2\n", "c.yaml")
    assert isinstance(config, Settings)
    assert config.workers == 2
    errors = parse_config("workers: 0\n", "c.yaml")
    assert isinstance(errors, list)
    assert [str(e) for e in errors] == ["c.yaml:1:10: workers: must be at least 1"]


def test_config_operation_timeout() -> None:
    assert Settings().operation_timeout == dt.timedelta(minutes=10)
    config = parse_config("operation_timeout: 90s\n", "c.yaml")
    assert isinstance(config, Settings)
    assert config.operation_timeout == dt.timedelta(seconds=90)
    errors = parse_config("operation_timeout: 0s\n", "c.yaml")
    assert isinstance(errors, list)
    assert [str(e) for e in errors] == ["c.yaml:1:20: operation_timeout: must be at least 1s"]


def test_the_catalog_section_names_a_shared_database() -> None:
    result = parse_config(
        "catalog:\n"
        "  url: postgresql://snapshotd@db.example/snapshotd?sslmode=verify-full\n"
        "  password_file: /etc/snapshotd/db.password\n"
        "  host_id: kvm-07\n",
        "c.yaml",
    )
    assert isinstance(result, Settings)
    assert result.catalog == DatabaseSettings(
        "postgresql://snapshotd@db.example/snapshotd?sslmode=verify-full",
        "/etc/snapshotd/db.password",
        "kvm-07",
    )
    assert parse_config("workers: 2\n", "c.yaml").catalog is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "catalog:\n  url: postgresql://snapshotd:hunter2@db/s\n",
            "c.yaml:2:8: catalog.url: 'postgresql://snapshotd@db/s' has a password in it: "
            "remove it and put it in catalog.password_file (a file only root can read)",
        ),
        (
            "catalog:\n  url: postgresql://snapshotd@db/s?password=hunter2\n",
            "c.yaml:2:8: catalog.url: 'postgresql://snapshotd@db/s?password=***' has a password",
        ),
        (
            "catalog:\n  url: mysql://db/s\n",
            "catalog.url: 'mysql://db/s' is not a postgresql:// URL",
        ),
        ("catalog:\n  host_id: kvm-07\n", "c.yaml:2:3: catalog.url: is required and missing."),
        (
            "catalog:\n  url: postgresql://db/s\n  password_file: db.password\n",
            "catalog.password_file: 'db.password' must be a plain absolute path",
        ),
        (
            "catalog:\n  url: postgresql://db/s\n  host_id: kvm 07\n",
            "catalog.host_id: 'kvm 07' is not a host id",
        ),
    ],
)
def test_a_bad_catalog_section_is_refused_without_its_password(text: str, error: str) -> None:
    result = parse_config(text, "c.yaml")
    assert isinstance(result, list)
    shown = "\n".join(str(e) for e in result)
    assert error in shown
    assert "hunter2" not in shown


def test_sanitize_url_removes_the_password_and_keeps_the_rest() -> None:
    assert sanitize_url("postgresql://u:pw@h:5432/d?sslmode=require&password=pw") == (
        "postgresql://u@h:5432/d?sslmode=require&password=***"
    )
    assert sanitize_url("postgresql://h/d") == "postgresql://h/d"
    assert sanitize_url("postgresql://u@h") == "postgresql://u@h"
