"""The seed's state table, row by row, against the planner (pure, no libvirt)."""

from __future__ import annotations

import itertools

import pytest

from snapshotd.core.model import (
    CreateFlag,
    DiskInfo,
    DomainInfo,
    DomainState,
    Location,
    Request,
    SnapshotRequest,
)
from snapshotd.core.plan import plan_snapshot
from snapshotd.core.table import TABLE, lookup
from snapshotd.errors import PlanError
from tests.tablerows import Expected, load_rows

ROWS = load_rows()
STATES = {True: (DomainState.RUNNING, DomainState.PAUSED), False: (DomainState.SHUTOFF,)}


def one_disk_domain(state: DomainState) -> DomainInfo:
    disk = DiskInfo("vda", format="qcow2", path="/var/lib/libvirt/images/guest.qcow2")
    return DomainInfo("guest", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", state, (disk,))


def request(memory: str, disk: str, disk_only: bool) -> SnapshotRequest:
    return SnapshotRequest(
        name="s1",
        memory=Request(memory),
        disks=Request(disk),
        disk_only=disk_only,
        directory="/var/lib/snapshotd/{domain}",
    )


def test_the_data_file_holds_all_25_rows() -> None:
    assert len(ROWS) == 25
    assert sum(r.outcome == "ok" for r in ROWS) == 15
    assert sum(r.outcome == "invalid" for r in ROWS) == 5
    assert sum(r.outcome == "unsupported" for r in ROWS) == 5


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("memory", list(Request))
@pytest.mark.parametrize("disk", list(Request))
@pytest.mark.parametrize("disk_only", [False, True])
def test_every_combination_has_exactly_one_row(
    online: bool, memory: Request, disk: Request, disk_only: bool
) -> None:
    in_data = [
        r
        for r in ROWS
        if r.online == online and (memory.value, disk.value, disk_only) in r.combinations()
    ]
    in_code = [r for r in TABLE if r.matches(online, memory, disk, disk_only)]
    assert len(in_data) == 1
    assert len(in_code) == 1
    assert in_code[0].number == in_data[0].number
    assert lookup(online, memory, disk, disk_only).number == in_data[0].number


def _cases() -> list[tuple[Expected, DomainState, str, str, bool]]:
    cases = []
    for row in ROWS:
        for state in STATES[row.online]:
            for memory, disk, flag in row.combinations():
                cases.append((row, state, memory, disk, flag))
    return cases


def _id(case: tuple[Expected, DomainState, str, str, bool]) -> str:
    row, state, memory, disk, flag = case
    return f"row{row.number}-{state.value}-mem_{memory}-disk_{disk}-{'on' if flag else 'off'}"


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_row_result_is_what_the_planner_does(
    case: tuple[Expected, DomainState, str, str, bool],
) -> None:
    row, state, memory, disk, flag = case
    domain = one_disk_domain(state)
    if row.outcome != "ok":
        with pytest.raises(PlanError) as caught:
            plan_snapshot(domain, request(memory, disk, flag))
        err = caught.value
        assert err.row == row.number
        assert err.kind == row.outcome
        if row.outcome == "invalid":
            assert f"invalid combination ({row.reason})" in str(err)
        else:
            assert "unsupported for now" in str(err)
        assert "guest" in str(err)
        return

    plan = plan_snapshot(domain, request(memory, disk, flag))
    spec = plan.spec
    assert spec.row == row.number
    assert spec.method.value == row.method
    assert spec.memory.value == row.memory_result
    expected_disk = "external" if row.disk_result == "default" else row.disk_result
    assert [d.location.value for d in spec.disks] == [expected_disk]
    # Files: external memory and disks get a file, internal ones none.
    assert (spec.memory_file is not None) == (spec.memory is Location.EXTERNAL)
    vda = spec.disks[0]
    assert (vda.new_file is not None) == (vda.location is Location.EXTERNAL)
    # Flags: DISK_ONLY exactly for snapshots without memory that libvirt must not
    # treat as a system checkpoint; never for offline internal ones.
    disk_only_flag = CreateFlag.DISK_ONLY in spec.flags
    if row.online:
        assert disk_only_flag == (spec.memory is Location.NO)
    else:
        assert disk_only_flag == (vda.location is Location.EXTERNAL)
    assert CreateFlag.ATOMIC in spec.flags
    assert CreateFlag.QUIESCE not in spec.flags
    assert CreateFlag.LIVE not in spec.flags
    assert CreateFlag.REDEFINE not in spec.flags


def test_table_text_matches_the_seed_line_by_line() -> None:
    def norm(line: str) -> str:
        left, right = line.split("|")
        right = right.strip().lstrip("+*").replace("migrate+transaction", "migrate+trans")
        return " ".join(left.split()) + " | " + " ".join(right.split())

    for code_row, data_row in itertools.zip_longest(TABLE, ROWS):
        assert code_row is not None
        assert data_row is not None
        assert norm(code_row.text) == norm(data_row.line)
