"""Checking and ordering a snapshot hierarchy before it is redefined."""

from __future__ import annotations

from snapshotd.core.hierarchy import (
    ImportPlan,
    Item,
    Problem,
    order,
    plan_import,
    referenced_files,
)
from snapshotd.core.model import SnapshotDisk, SnapshotInfo

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def item(
    name: str,
    parent: str | None = None,
    *,
    created: int | None = 100,
    uuid: str | None = UUID,
    current: bool | None = None,
    source: str | None = None,
) -> Item:
    info = SnapshotInfo(
        name=name,
        state="running",
        creation_time=created,
        parent=parent,
        domain_uuid=uuid,
        current=current,
    )
    return Item(source or f"{name}.xml", info, "<domainsnapshot/>")


def problems(result: ImportPlan | list[Problem]) -> list[str]:
    assert isinstance(result, list), result
    return [str(p) for p in result]


def planned(result: ImportPlan | list[Problem]) -> ImportPlan:
    assert isinstance(result, ImportPlan), result
    return result


def test_children_come_after_parents_whatever_the_input_order() -> None:
    items = [item("c", "b", created=3), item("a", created=1), item("b", "a", created=2)]
    ordered, cycles = order(items)
    assert [i.name for i in ordered] == ["a", "b", "c"]
    assert cycles == []


def test_siblings_are_ordered_by_creation_time() -> None:
    items = [
        item("late", "root", created=9),
        item("root", created=1),
        item("early", "root", created=5),
    ]
    ordered, _ = order(items)
    assert [i.name for i in ordered] == ["root", "early", "late"]


def test_a_cycle_is_found_and_named() -> None:
    items = [item("a", "c"), item("b", "a"), item("c", "b"), item("free")]
    ordered, cycles = order(items)
    assert [i.name for i in ordered] == ["free"]
    assert cycles == [["a", "c", "b", "a"]]
    result = plan_import(items, domain="web", domain_uuid=UUID, existing={})
    assert problems(result) == ["a.xml: the parents form a cycle: a -> c -> b -> a"]


def test_a_plan_redefines_in_order_and_marks_the_current_one() -> None:
    items = [item("b", "a", created=2), item("a", created=1, current=True)]
    plan = planned(plan_import(items, domain="web", domain_uuid=UUID, existing={}))
    assert [(s.item.name, s.action) for s in plan.steps] == [
        ("a", "redefine as current"),
        ("b", "redefine"),
    ]
    assert plan.current == "a"
    # --current overrides what the documents say.
    plan = planned(plan_import(items, domain="web", domain_uuid=UUID, existing={}, current="b"))
    assert plan.current == "b"
    assert [s.action for s in plan.steps] == ["redefine", "redefine as current"]


def test_a_parent_defined_in_libvirt_is_enough() -> None:
    plan = planned(
        plan_import([item("b", "a")], domain="web", domain_uuid=UUID, existing={"a": 100})
    )
    assert [s.action for s in plan.steps] == ["redefine"]


def test_every_problem_is_reported_with_its_source() -> None:
    items = [
        item("wrong", uuid="11111111-2222-3333-4444-555555555555"),
        item("orphan", "gone"),
        item("bare", uuid=None),
        item("undated", created=None),
        item("clash", created=5),
        Item("nameless.xml", SnapshotInfo(name=None, state="running"), ""),
        item("wrong", source="again.xml"),
    ]
    result = plan_import(
        items,
        domain="web",
        domain_uuid=UUID,
        existing={"clash": 7},
        missing_files={"orphan": ["/images/gone.qcow2"]},
        current="nowhere",
    )
    assert problems(result) == [
        "wrong.xml: snapshot 'wrong' belongs to the domain with UUID "
        "11111111-2222-3333-4444-555555555555, not 'web' (" + UUID + ")",
        "orphan.xml: snapshot 'orphan' refers to /images/gone.qcow2, which does not exist "
        "on this host",
        "bare.xml: snapshot 'bare' has no <domain> definition, so it cannot be checked against "
        "domain 'web'; export it again with its domain XML",
        "undated.xml: snapshot 'undated' has no <creationTime>",
        "clash.xml: domain 'web' already has a different snapshot named 'clash' (created 7, "
        "this one 5); delete or rename one",
        "nameless.xml: has no <name>; libvirt needs one to redefine it",
        "again.xml: snapshot 'wrong' is also in wrong.xml",
        "orphan.xml: the parent of 'orphan', 'gone', is neither among the snapshots imported "
        "nor defined for domain 'web'; import it too",
        "--current: 'nowhere' is not among the snapshots imported or defined",
    ]


def test_the_same_snapshot_already_defined_is_skipped() -> None:
    plan = planned(
        plan_import(
            [item("a", created=1), item("b", "a", created=2)],
            domain="web",
            domain_uuid=UUID,
            existing={"a": 1},
        )
    )
    assert [(s.item.name, s.action) for s in plan.steps] == [
        ("a", "already defined"),
        ("b", "redefine"),
    ]
    assert [s.item.name for s in plan.to_define] == ["b"]


def test_validator_mode_checks_each_document_alone() -> None:
    items = [item("b", "not-here", uuid="other"), item("c", uuid=None)]
    plan = planned(plan_import(items, domain="", domain_uuid=None, existing={}))
    assert [s.item.name for s in plan.steps] == ["b", "c"]


def test_referenced_files() -> None:
    info = SnapshotInfo(
        name="s",
        memory="external",
        memory_file="/m/s.mem",
        disks=(
            SnapshotDisk("vda", snapshot="external", source_file="/i/vda.s.qcow2"),
            SnapshotDisk("vdb", snapshot="internal"),
            SnapshotDisk("vdc", snapshot="no"),
        ),
    )
    assert referenced_files(info) == ["/i/vda.s.qcow2", "/m/s.mem"]
