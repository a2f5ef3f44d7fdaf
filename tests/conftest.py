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
