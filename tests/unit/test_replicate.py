"""snapshotd.actions.metadata.replicate with two fakes: a snapshot whose domain needs a
machine type the target's QEMU lacks is refused before anything is defined there."""

from __future__ import annotations

import uuid as uuidlib
from pathlib import Path

import pytest

from snapshotd.actions.metadata import replicate
from snapshotd.core.model import CreateFlag, DomainState
from snapshotd.errors import RequestError
from tests.fakes.hypervisor import FakeHypervisor, domain_xml

SNAPSHOT = "<domainsnapshot><name>s1</name><memory snapshot='no'/></domainsnapshot>"


def hosts(tmp_path: Path, machine: str) -> tuple[FakeHypervisor, FakeHypervisor]:
    same = str(uuidlib.uuid4())
    disks = [("vda", str(tmp_path / "vda.qcow2"))]
    source = FakeHypervisor("test:///new", machines=("pc-i440fx-10.0", "pc-i440fx-7.2"))
    target = FakeHypervisor("test:///old", machines=("pc-i440fx-7.2", "pc-q35-7.2"))
    source.define(domain_xml("web", disks, uuid=same, machine=machine), state=DomainState.SHUTOFF)
    target.define(domain_xml("web", disks, uuid=same, machine="pc-i440fx-7.2"))
    source.create_snapshot_secure("web", SNAPSHOT, CreateFlag(0))
    return source, target


def test_a_machine_type_the_target_lacks_is_refused_naming_it(tmp_path: Path) -> None:
    source, target = hosts(tmp_path, "pc-i440fx-10.0")
    with pytest.raises(RequestError) as refused:
        replicate(source, target, "web", remove_source_metadata=False)
    text = str(refused.value)
    assert "machine type 'pc-i440fx-10.0' (x86_64) of snapshot(s) s1" in text
    assert "test:///old offers pc-i440fx-7.2" in text
    assert "nothing was replicated" in text
    assert target.list_snapshots("web") == []


def test_a_machine_type_the_target_offers_replicates(tmp_path: Path) -> None:
    source, target = hosts(tmp_path, "pc-i440fx-7.2")
    done = replicate(source, target, "web", remove_source_metadata=False)
    assert done.defined == ("s1",)
    assert [r.name for r in target.list_snapshots("web")] == ["s1"]
