"""Fault case 19: random policy documents never crash `snapshotd check`.

The real ``check`` code path runs in-process (``cli.main``): a policy directory on
disk, the config file, configfiles' reading checks, the loader, and the CLI's exit
codes.  Documents come in two kinds: structured (built from the schema's own keys, with
the documented examples, defaults and choices, sometimes mutated) and unstructured
(arbitrary text and bytes).
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapshotd import cli
from snapshotd.config.schema import POLICY_SCHEMA, Kind

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
OPTIONS = [o for o in POLICY_SCHEMA if o.kind is not Kind.SECTION]
SUMMARY = re.compile(r"snapshotd check: \d+ errors?")

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**20)
    | st.floats(allow_nan=True)
    | st.text(max_size=15)
    | st.sampled_from(["0s", "1h", "-5m", "1.5h", "0 * * * *", "@reboot", "{time:%Q}", "../x"])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@st.composite
def structured(draw: st.DrawFn) -> str:
    """A document whose keys come from the schema; values mostly the documented ones."""
    document: dict[str, Any] = {}
    for option in draw(st.lists(st.sampled_from(OPTIONS), max_size=len(OPTIONS), unique=True)):
        known = [t for t in (option.example, option.default) if t is not None]
        value: Any = draw(
            st.sampled_from([yaml.safe_load(t) for t in known] or [None])
            | st.sampled_from(list(option.choices) or ["x"])
            | _values
        )
        parent = document
        parts = option.path.split(".")
        for part in parts[:-1]:
            child = parent.setdefault(part, {})
            if not isinstance(child, dict):
                break
            parent = child
        else:
            parent[parts[-1]] = value
    if draw(st.booleans()):  # the usual valid core, so that many documents are accepted
        document.setdefault("schedule", {"every": "1h"})
    text = yaml.safe_dump(document, default_flow_style=draw(st.booleans()), allow_unicode=True)
    if draw(st.integers(0, 4)) == 0:  # a half-written or hand-mangled file
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", ":", "\t", "- ", "{", "'", "\x00"]))
    return text


def run_check(data: bytes, filename: str) -> tuple[int, str, str, Path]:
    """`snapshotd check --offline` on a directory holding one policy file with ``data``."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policies = root / "policies"
        policies.mkdir(mode=0o755)
        path = policies / filename
        path.write_bytes(data)
        path.chmod(0o644)
        config = root / "snapshotd.yaml"
        config.write_text("connect: [qemu:///system]\n")
        config.chmod(0o644)
        out, err = io.StringIO(), io.StringIO()
        argv = ["check", "--offline", "--config", str(config), "--policy-dir", str(policies)]
        argv += ["--state-dir", str(root / "state")]
        with contextlib.redirect_stderr(err):
            code = cli.main(argv, out=out)
        return code, out.getvalue(), err.getvalue(), path


def assert_accepted_or_located(data: bytes, filename: str = "fuzz.yaml") -> None:
    code, out, err, path = run_check(data, filename)
    assert code in {0, 2}, (code, err)
    if code == 0:
        assert "(1 policies)" in out, out
        assert err == ""
        return
    lines = err.splitlines()
    assert lines, "a rejection says why"
    assert SUMMARY.fullmatch(lines[-1]), lines[-1]
    located = re.compile(re.escape(str(path)) + r":[1-9][0-9]*:[1-9][0-9]*: \S")
    messages = [line for line in lines[:-1] if not line.startswith(" ")]
    assert messages, err
    for message in messages:  # every error names FILE:LINE:COLUMN and says something
        assert located.match(message), message
    count = int(lines[-1].split()[2])
    assert count == len(messages), err


@FUZZ
@given(structured())
def test_fault_19_structured_documents_never_crash_check(text: str) -> None:
    """19. Random policy documents (hypothesis) never crash `snapshotd check`: every
    one is either accepted or rejected with a located message."""
    assert_accepted_or_located(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_fault_19_unstructured_text_never_crashes_check(text: str) -> None:
    """19. Random policy documents (hypothesis) never crash `snapshotd check`: every
    one is either accepted or rejected with a located message."""
    assert_accepted_or_located(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.binary(max_size=300))
def test_fault_19_raw_bytes_never_crash_check(data: bytes) -> None:
    """19. Random policy documents (hypothesis) never crash `snapshotd check`: every
    one is either accepted or rejected with a located message (bytes that are not
    UTF-8 included)."""
    assert_accepted_or_located(data)


def test_fault_19_the_structured_strategy_reaches_both_outcomes() -> None:
    """The structured documents are not all rejected: the fuzzing above exercises
    the accepting path too (a generator that only made garbage would prove little)."""
    outcomes: set[int] = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(structured())
    def collect(text: str) -> None:
        outcomes.add(run_check(text.encode("utf-8", "surrogatepass"), "fuzz.yaml")[0])

    collect()
    assert outcomes == {0, 2}
