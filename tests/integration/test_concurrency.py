"""Two snapshotd processes at once, and a snapshot name that is already taken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lxml import etree

from tests.integration.cli import REPO, files_under, make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory


def test_a_taken_name_is_refused_and_the_existing_snapshot_untouched(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory(state="running")
    dom.dom.snapshotCreateXML(
        "<domainsnapshot><name>mine</name><description>by hand</description></domainsnapshot>", 0
    )
    before = dom.dom.snapshotLookupByName("mine", 0).getXMLDesc(0)
    files = files_under(dom.directory)
    result = snapshotd(
        "take",
        "--domain",
        dom.name,
        "--name",
        "mine",
        "--disk-only",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.code == 2, result
    assert f"domain {dom.name!r} already has a snapshot named 'mine' in libvirt" in result.err
    assert "choose another name" in result.err
    assert dom.dom.snapshotLookupByName("mine", 0).getXMLDesc(0) == before
    assert files_under(dom.directory) == files  # no overlay was made
    assert [s.getName() for s in dom.dom.listAllSnapshots(0)] == ["mine"]


def test_two_processes_on_one_domain_take_turns(
    domain_factory: DomainFactory, tmp_path: Path
) -> None:
    dom = domain_factory(state="running", memory_mib=256)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    make_settings(tmp_path)
    command = [
        sys.executable,
        "-m",
        "snapshotd",
        "take",
        "--domain",
        dom.name,
        "--name",
        "same",
        "--memory",
        "external",
        "--directory",
        str(dom.directory / "snaps"),
        *settings_args(tmp_path),  # the tested URI, for both processes
    ]
    procs = [
        subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 2], results
    loser = next(err for code, _out, err in results if code == 2)
    # The second waited for the first, then saw its snapshot: a clear refusal, not a
    # failure half-way inside libvirt.
    assert "already has a snapshot named 'same' in libvirt" in loser
    assert [s.getName() for s in dom.dom.listAllSnapshots(0)] == ["same"]
    root = etree.fromstring(dom.dom.snapshotLookupByName("same", 0).getXMLDesc(0).encode())
    memory = root.find("memory")
    assert memory is not None
    made = sorted(p.name for p in (dom.directory / "snaps").iterdir())
    assert made == sorted({Path(memory.get("file", "")).name, *made})  # one snapshot's files
    assert len([m for m in made if m.endswith(".memory")]) == 1
