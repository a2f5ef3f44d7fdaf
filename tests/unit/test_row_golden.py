"""What snapshotd sends libvirt for each valid row of the state table.

For every concrete combination of every valid row, the planner's XML must pass
libvirt's own RelaxNG schema; and for one combination per row (a running or shut
off domain with one qcow2 disk) the XML is held in a golden file,
tests/golden/rows/rowNN.xml, together with the flags.  SNAPSHOTD_REGEN_GOLDEN=1
rewrites the files; otherwise a difference fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from snapshotd.core.model import DomainState
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.snapxml import load_schema, render_spec, validate
from tests.tablerows import Expected, load_rows
from tests.unit.test_table import one_disk_domain, request

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rows"
REGEN = os.environ.get("SNAPSHOTD_REGEN_GOLDEN") == "1"
VALID = [row for row in load_rows() if row.outcome == "ok"]


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return load_schema()


def _render(online: bool, memory: str, disk: str, flag: bool) -> tuple[str, str]:
    state = DomainState.RUNNING if online else DomainState.SHUTOFF
    spec = plan_snapshot(one_disk_domain(state), request(memory, disk, flag)).spec
    flags = "|".join(spec.flags.names())
    return render_spec(spec), flags


@pytest.mark.parametrize("row", VALID, ids=lambda r: f"row{r.number}")
def test_every_combination_validates_against_libvirts_schema(
    row: Expected, schema: etree.RelaxNG
) -> None:
    for memory, disk, flag in row.combinations():
        xml, _flags = _render(row.online, memory, disk, flag)
        assert validate(xml, schema) == [], (memory, disk, flag)


@pytest.mark.parametrize("row", VALID, ids=lambda r: f"row{r.number}")
def test_golden_xml_per_row(row: Expected) -> None:
    memory, disk, flag = row.first
    xml, flags = _render(row.online, memory, disk, flag)
    text = f"<!-- {row.line.strip()} -->\n<!-- flags: {flags} -->\n{xml}"
    path = GOLDEN / f"row{row.number:02d}.xml"
    if REGEN:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing: run with SNAPSHOTD_REGEN_GOLDEN=1"
    assert text == path.read_text()


def test_no_stale_golden_files() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.xml")) == sorted(
        f"row{r.number:02d}.xml" for r in VALID
    )
