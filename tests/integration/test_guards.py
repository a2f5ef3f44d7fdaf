"""A policy's guard against the real libvirt: free space where the overlays go (statvfs
on this machine; the storage pool that holds the directory on a remote host), and a
disk's backing chain (the qcow2 headers here, libvirt's live XML on a remote host)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration import target
from tests.integration.cli import make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain


def write_policy(root: Path, dom: ScratchDomain, guard: str) -> None:
    path = root / "policies" / "guarded.yaml"
    path.write_text(
        f'domains: {{include: ["{dom.name}"]}}\n'
        "schedule: {every: 1h}\n"
        'snapshot: {disks: external, disk_only: true, directory: "'
        f'{dom.directory}/{{domain}}", name: "{{policy}}-{{time:%Y%m%dT%H%M%S%fZ}}"}}\n'
        f"guard: {guard}\n"
    )
    path.chmod(0o644)


def take(root: Path) -> tuple[int, dict[str, object], str]:
    result = snapshotd("take", "--policy", "guarded", "--json", *settings_args(root))
    (shown,) = json.loads(result.out) if result.out.strip() else [{}]
    return result.code, shown, result.err


@pytest.fixture
def pool(session_prefix: str, domain_factory: DomainFactory) -> Iterator[ScratchDomain]:
    """A shut-off domain; on a remote host, a transient dir pool over its directory (the
    guard's measure there), destroyed after."""
    dom = domain_factory(state="shutoff")
    if not target.URI.startswith("qemu+"):
        yield dom
        return
    conn = dom.dom.connect()
    made = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{session_prefix}-guard</name>"
        f"<target><path>{dom.directory}</path></target></pool>",
        0,
    )
    try:
        yield dom
    finally:
        made.destroy()


def test_too_little_free_space_skips_the_snapshot_and_says_where(
    pool: ScratchDomain, tmp_path: Path
) -> None:
    """min_free one percent above what the file system has free: skipped before libvirt,
    exit 1 with the measure; one percent: taken."""
    dom = pool
    make_settings(tmp_path)
    found = os.statvfs(dom.directory)
    free = math.ceil(found.f_bfree * 100 / found.f_blocks)
    assert free < 99, "the test directory's file system is nearly empty"
    write_policy(tmp_path, dom, f"{{min_free: {free + 1}%}}")
    code, shown, err = take(tmp_path)
    assert code == 1, (shown, err)
    assert shown["outcome"] == "guarded"
    assert f"below guard.min_free ({free + 1}%)" in str(shown["reason"])
    assert str(dom.directory) in str(shown["reason"])
    assert dom.dom.listAllSnapshots(0) == []
    assert not any(dom.directory.glob("*.guarded-*"))  # no overlay either
    write_policy(tmp_path, dom, "{min_free: 1%}")
    code, shown, err = take(tmp_path)
    assert code == 0, (shown, err)
    assert shown["outcome"] == "created"
    assert len(dom.dom.listAllSnapshots(0)) == 1


def test_a_chain_at_max_chain_skips_the_external_snapshot(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    """A running domain whose disk already has a chain of three (image, two overlays):
    max_chain 3 skips the snapshot that would make it four, with the merge to do;
    max_chain 4 takes it."""
    dom = domain_factory(state="shutoff")
    base = dom.image("vda")
    chain = [base]
    for n in (1, 2):
        top = dom.directory / f"chain{n}.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(chain[-1]),
                str(top),
            ],
            check=True,
        )
        top.chmod(0o600)
        chain.append(top)
    xml = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(str(base), str(chain[-1]))
    dom.dom.connect().defineXML(xml)
    dom.dom.create()
    make_settings(tmp_path)
    write_policy(tmp_path, dom, "{max_chain: 3}")
    code, shown, err = take(tmp_path)
    assert code == 1, (shown, err)
    assert shown["outcome"] == "guarded"
    assert "disk vda's backing chain would be 4 images long, more than guard.max_chain (3)" in (
        str(shown["reason"])
    )
    assert f"virsh blockcommit {dom.name} vda --active --pivot" in str(shown["reason"])
    assert dom.dom.listAllSnapshots(0) == []
    write_policy(tmp_path, dom, "{max_chain: 4}")
    code, shown, err = take(tmp_path)
    assert code == 0, (shown, err)
    assert len(dom.dom.listAllSnapshots(0)) == 1
