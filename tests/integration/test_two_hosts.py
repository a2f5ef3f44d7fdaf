"""Two libvirt hosts: the tested one (target.URI, over the network) and a peer
(target.PEER_URI).  scripts/test.sh runs these with the second host of scripts/host2.sh
(libvirt 11, reached over qemu+ssh) as the tested host and this machine's libvirtd
(9.0) as the peer; both see the test directory at the same path, as hosts sharing
storage do.  Without a peer they are deselected.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from snapshotd.adapters.logs import sanitize_uri
from tests.integration import target
from tests.integration.cli import make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain, remove_domain
from tests.integration.test_daemon import Daemon, policy, snapshots, write_policy

pytestmark = pytest.mark.two_hosts


@contextlib.contextmanager
def twin(conn: Any, dom: ScratchDomain, prefix: str) -> Iterator[Any]:
    """The same domain (same UUID, same disk files) defined on ``conn`` too, shut off,
    with the machine type left for that host's QEMU to choose; undefined after."""
    xml = dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = re.sub(r" machine='[^']*'", "", xml)
    there = conn.defineXML(xml)
    try:
        yield there
    finally:
        remove_domain(conn, dom.name, prefix)


def test_replicate_over_the_network_both_ways(
    domain_factory: DomainFactory, peer_conn: Any, session_prefix: str, tmp_path: Path
) -> None:
    """Snapshot metadata goes to the other host (the same domain by UUID) over the real
    transport; a snapshot whose domain names a machine type the other host's QEMU lacks
    (pc-i440fx-10.0 from QEMU 10 to QEMU 7.2) is refused up front, nothing defined."""
    dom = domain_factory(state="shutoff")
    make_settings(tmp_path)
    args = settings_args(tmp_path)
    assert snapshotd("take", "--domain", dom.name, "--name", "here", *args).code == 0
    with twin(peer_conn, dom, session_prefix) as there:
        machine = re.search(r"machine='([^']*)'", dom.dom.XMLDesc(0))
        offered = peer_conn.getCapabilities()
        assert machine is not None
        result = snapshotd(
            "replicate",
            "--connect",
            target.URI,
            "--domain",
            dom.name,
            "--to",
            str(target.PEER_URI),
        )
        if f">{machine.group(1)}<" in offered:
            assert result.code == 0, result
            assert [s.getName() for s in there.listAllSnapshots(0)] == ["here"]
        else:
            assert result.code == 2, result
            assert f"machine type '{machine.group(1)}'" in result.err
            assert there.listAllSnapshots(0) == []
        # The other way: the peer's snapshot of the same domain comes here.
        there.snapshotCreateXML("<domainsnapshot><name>there</name></domainsnapshot>", 0)
        back = snapshotd(
            "replicate",
            "--connect",
            str(target.PEER_URI),
            "--domain",
            dom.name,
            "--to",
            target.URI,
        )
        assert back.code == 0, back
        assert "there" in {s.getName() for s in dom.dom.listAllSnapshots(0)}
        for snap in there.listAllSnapshots(0):  # internal snapshots live in the shared image
            snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)


def link(action: str) -> None:
    assert target.LINK, "SNAPSHOTD_TEST_LINK names the command that cuts the link"
    subprocess.run([*target.LINK, action], check=True, capture_output=True, timeout=30)


@pytest.mark.disruptive  # the cut reaches every test of the tested host
def test_one_daemon_on_both_hosts_through_a_network_cut(
    domain_factory: DomainFactory, peer_factory: DomainFactory, daemon: Daemon, libvirt_conn: Any
) -> None:
    """One daemon, both URIs.  The link to the tested host is cut while it runs: the
    peer's schedule goes on undelayed; after the link is back, the tested host's missed
    slots give one catch-up snapshot, not one per slot, and no name twice."""
    remote = domain_factory(state="shutoff")
    local = peer_factory(state="shutoff")
    config = daemon.root / "snapshotd.yaml"
    config.write_text(target.connect_line(str(target.PEER_URI)))
    config.chmod(0o644)
    prefix = remote.name.rsplit("-", 1)[0]
    body = policy(remote, every="3s", keep=50).replace(f'["{remote.name}"]', f'["{prefix}-*"]')
    write_policy(daemon, "both", body)
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(lambda: len(snapshots(remote)) >= 1, 30, "a snapshot on the tested host")
    daemon.wait_for(lambda: len(snapshots(local)) >= 1, 30, "a snapshot on the peer")
    link("down")
    try:
        cut = time.time()
        time.sleep(20)
        during = [t for t, _, _ in snapshots(local) if t >= cut]
        # Every 3 s on the peer while the other host is unreachable: none missed.
        assert len(during) >= 5, (during, daemon.log.read_text())
        gaps = [b - a for a, b in zip([int(cut), *during], during, strict=False)]
        assert max(gaps) <= 7, (gaps, daemon.log.read_text())
    finally:
        link("up")
    back = time.time()
    # The test's own handle died with the cut; the session's connection reconnects.
    remote.dom = libvirt_conn.lookupByUUIDString(remote.uuid)
    before = {n for _, n, _ in snapshots(remote)}
    daemon.wait_for(
        lambda: any(t >= back - 1 for t, _, _ in snapshots(remote)),
        90,
        "the tested host's first snapshot after the link came back",
    )
    time.sleep(1)
    after = [(t, n) for t, n, _ in snapshots(remote) if n not in before]
    # One catch-up for the missed slots, then the schedule: no two in one 3-second slot
    # (a catch-up per missed slot would all fall in one).  The catch-up may come just
    # before the next slot's own snapshot, so the two can be under a second apart.
    slots = [t // 3 for t, _ in after]
    assert len(slots) == len(set(slots)), after
    names = [n for _, n, _ in snapshots(remote)]
    assert len(names) == len(set(names))
    assert daemon.stop() == 0


def test_a_group_with_a_member_on_each_host_is_taken_at_one_instant(
    domain_factory: DomainFactory, peer_factory: DomainFactory, tmp_path: Path
) -> None:
    """`take --policy` of a group whose members live on the two hosts of snapshotd.yaml:
    one run holds both, each host makes its member's snapshot under the group's name,
    and the catalog's group names each member with its own URI."""
    from tests.integration.test_groups import group_policy, group_rows  # noqa: PLC0415

    remote = domain_factory(state="running", suffix="gx0")
    local = peer_factory(state="running", suffix="gx1")
    make_settings(tmp_path)
    (tmp_path / "snapshotd.yaml").write_text(target.connect_line(str(target.PEER_URI)))
    snaps = tmp_path / "snaps"
    (tmp_path / "policies" / "shop.yaml").write_text(group_policy(remote.name[:-1], snaps))
    (tmp_path / "policies" / "shop.yaml").chmod(0o644)

    result = snapshotd("take", "--policy", "shop", "--json", *settings_args(tmp_path))

    assert result.code == 0, result
    shown = json.loads(result.out)
    assert shown["outcome"] == "created"
    uris = {m["domain"]: m["uri"] for m in shown["members"]}
    assert uris == {
        remote.name: sanitize_uri(target.URI),
        local.name: sanitize_uri(str(target.PEER_URI)),
    }
    assert 0 < shown["pause_seconds"] < 10
    for dom in (remote, local):
        assert [n for _, n, _ in snapshots(dom)] == [shown["snapshot"]], dom.name
        assert dom.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert (snaps / dom.name / f"{dom.name}.vda.{shown['snapshot']}.qcow2").is_file()
    assert group_rows(tmp_path / "state") == sorted(
        (shown["snapshot"], d.name) for d in (remote, local)
    )
