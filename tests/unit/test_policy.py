"""The policy model's own decisions (pure)."""

from __future__ import annotations

import pytest

from snapshotd.core.model import DomainInfo, DomainState
from snapshotd.core.policy import Policy, Quiesce, SnapshotSettings


@pytest.mark.parametrize(
    ("mode", "state", "expected"),
    [
        (Quiesce.NO, DomainState.RUNNING, False),
        (Quiesce.YES, DomainState.RUNNING, True),
        (Quiesce.YES, DomainState.PAUSED, True),  # asked for; the planner refuses it
        (Quiesce.YES, DomainState.SHUTOFF, False),  # nothing in use to freeze
        (Quiesce.TRY, DomainState.RUNNING, True),
        (Quiesce.TRY, DomainState.PAUSED, False),
        (Quiesce.TRY, DomainState.SHUTOFF, False),
    ],
)
def test_quiesces(mode: Quiesce, state: DomainState, expected: bool) -> None:
    policy = Policy("p", "p.yaml", snapshot=SnapshotSettings(quiesce=mode))
    assert policy.quiesces(DomainInfo("web", "u", state)) is expected
