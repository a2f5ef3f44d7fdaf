"""Names, templates and lexical path checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapshotd.core import naming
from snapshotd.errors import RequestError


@pytest.mark.parametrize("name", ["s1", "web-hourly-20261125T120000Z", "a.b_c+d:e@f-1"])
def test_good_names(name: str) -> None:
    naming.check_snapshot_name(name)


@pytest.mark.parametrize("name", ["", ".x", "-x", "a/b", "a b", "a\x00b", "a\nb", "x" * 201, "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(RequestError):
        naming.check_snapshot_name(name)


@given(st.text(max_size=40))
def test_any_accepted_file_component_is_one_plain_path_part(text: str) -> None:
    try:
        naming.check_file_component(text, "x")
    except RequestError:
        return
    assert "/" not in text
    assert text not in {".", ".."}
    assert "\x00" not in text
    assert not text.startswith(".")


def test_literal_root() -> None:
    assert naming.literal_root("/var/lib/snap/{domain}") == "/var/lib/snap"
    assert naming.literal_root("/var/lib/snap") == "/var/lib/snap"
    assert naming.literal_root("/{domain}/x") == "/"


def test_is_inside() -> None:
    assert naming.is_inside("/a/b", "/a")
    assert naming.is_inside("/a", "/a")
    assert not naming.is_inside("/ab", "/a")
    assert naming.is_inside("/x", "/")


def test_template_refuses_attribute_and_index_access() -> None:
    for template in ["{domain.__init__}", "{domain[0]}", "{domain!r}", "{nope}"]:
        with pytest.raises(RequestError):
            naming.render_template(template, {"domain": "d"}, "t")
