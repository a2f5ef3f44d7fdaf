"""Session-wide test settings.

As root (the integration and system tests run as root), pytest's temporary directories
go under the shared test directory (tests/integration/target.py's ROOT) instead of /tmp:
a libvirtd in another root, or on another host sharing that directory, must reach the
disk images, memory files and policy directories a test makes in tmp_path.  They are
removed when the session ends, pass or fail; the (empty) shared directory stays.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.target import ROOT

_OURS = pytest.StashKey[Path]()  # the temporary directory this session made


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0 or config.option.basetemp:
        return
    ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    config.option.basetemp = str(ROOT / f"tmp-{os.getpid()}")
    config.stash[_OURS] = Path(config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    ours = config.stash.get(_OURS, None)
    if ours is None:
        return
    shutil.rmtree(ours, ignore_errors=True)  # ROOT stays (tests/integration/conftest.py)


# scripts/test.sh runs pytest with several xdist workers (--dist loadgroup).  Tests that
# share one heavy thing run on one worker, one after another: the real guest (a kernel
# under plain emulation takes a CPU while it boots, and the tests' time bounds assume
# it gets one) and the booted systemd (one per worker otherwise).
_GROUPS = {
    Path("tests/integration/test_guest.py"): "guest",
    Path("tests/integration/test_guest_snapshots.py"): "guest",
    Path("tests/system"): "systemd",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        for where, group in _GROUPS.items():
            if item.path.is_relative_to(root / where):
                item.add_marker(pytest.mark.xdist_group(group))
