"""FakeClock: time that moves only when a test says so, for a run's ``now`` and ``clock``
and for FakeHypervisor's creation times alike."""

from __future__ import annotations

import datetime as dt

START = dt.datetime(2026, 1, 5, 3, 0, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self, start: dt.datetime = START) -> None:
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def timestamp(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
