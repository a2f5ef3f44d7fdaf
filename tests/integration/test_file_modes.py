"""Files snapshotd causes to exist are never more readable than the disk they copy
(libvirt before 11.10 creates a shut-off domain's overlay 0644: CVE-2025-13193)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.integration.cli import snapshotd
from tests.integration.domains import DomainFactory

# snapshotd narrows modes of files on this machine; for a remote libvirt host it cannot
# (docs/libvirt-versions.md says what to do there).
pytestmark = pytest.mark.local_only


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("state", ["shutoff", "running"])
def test_an_overlay_beside_its_image_is_as_closed_as_the_image(
    domain_factory: DomainFactory, state: str
) -> None:
    dom = domain_factory(state=state)
    image = dom.image("vda")
    image.chmod(0o600)
    result = snapshotd(
        "take", "--domain", dom.name, "--disks", "external", "--name", "m", "--disk-only"
    )
    assert result.code == 0, result.err
    overlay = dom.directory / f"{dom.name}.vda.m.qcow2"
    assert overlay.is_file()
    assert mode(overlay) & 0o077 == 0, f"{overlay} is {mode(overlay):04o}"


def test_a_memory_file_and_the_directory_made_for_it_are_the_owners_alone(
    domain_factory: DomainFactory,
) -> None:
    dom = domain_factory(state="running")
    target = dom.directory / "made" / "here"
    result = snapshotd(
        "take", "--domain", dom.name, "--memory", "external", "--directory", str(target),
        "--name", "full",
    )  # fmt: skip
    assert result.code == 0, result.err
    made = sorted(p for p in target.iterdir())
    assert made, "the snapshot wrote no file"
    for path in made:
        assert mode(path) & 0o077 == 0, f"{path} is {mode(path):04o}"
    for directory in (target, target.parent):
        assert mode(directory) == 0o700, f"{directory} is {mode(directory):04o}"
