"""Fault cases 10 and 11 (issue 7), the pure core's part: the schedule's catch-up
decision and retention after a long gap, and a clock stepped backward or forward.

The daemon and real libvirt are in tests/integration/test_faults_time.py.
"""

from __future__ import annotations

import datetime as dt

from snapshotd.core.retention import Candidate, Retention, to_delete
from snapshotd.core.schedule import Schedule, decide

UTC = dt.UTC
DAILY = Schedule(cron="0 3 * * *", catch_up=True)
NOW = dt.datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


def test_fault_10_thirty_days_down_is_one_catch_up_serving_the_latest_slot() -> None:
    """10. "Host down for 30 days (simulated clock): one catch-up snapshot"."""
    last = dt.datetime(2026, 10, 27, 3, tzinfo=UTC)
    decision = decide(DAILY, last, NOW)
    assert decision.due
    assert decision.slot == dt.datetime(2026, 11, 26, 3, tzinfo=UTC)
    assert decision.missed == 29
    # Once that slot is served, nothing more is due until tomorrow's slot.
    after = decide(DAILY, decision.slot, NOW + dt.timedelta(seconds=5))
    assert not after.due
    assert after.next_slot == dt.datetime(2026, 11, 27, 3, tzinfo=UTC)


def test_fault_10_retention_after_thirty_days_keeps_the_counted_history() -> None:
    """10. "retention does not wipe the history on return": every period rule counts
    the periods that have a snapshot, so a history that is all older than the rules'
    windows keeps as many snapshots as the counts say."""
    history = [
        Candidate(f"s{i:02d}", dt.datetime(2026, 9, 1, 3, tzinfo=UTC) + dt.timedelta(days=i), True)
        for i in range(56)  # daily snapshots up to 2026-10-26, a month before NOW
    ]
    newest = [c.name for c in history]
    assert to_delete(Retention(daily=7), history, NOW, "UTC") == newest[:-7]
    assert to_delete(Retention(keep_last=3), history, NOW, "UTC") == newest[:-3]
    weekly = to_delete(Retention(weekly=4), history, NOW, "UTC")
    assert len(history) - len(weekly) == 4
    hourly = to_delete(Retention(hourly=24), history, NOW, "UTC")
    assert len(history) - len(hourly) == 24
    # With the one catch-up snapshot, the old ones still fill the rest of the counts.
    caught_up = [*history, Candidate("catch-up", NOW, True)]
    assert to_delete(Retention(daily=7), caught_up, NOW, "UTC") == newest[:-6]


def test_fault_11_clock_stepped_forward_then_back_serves_each_slot_once() -> None:
    """11. "Clock stepped backward and forward by hours: no duplicate snapshots, no
    burst."  The core's half: forward by hours is one decision serving the latest
    slot; backward past served slots is never due until the next new slot."""
    hourly = Schedule(cron="0 * * * *", catch_up=True)
    served = dt.datetime(2026, 11, 26, 11, tzinfo=UTC)
    forward = decide(hourly, served, served + dt.timedelta(hours=5, minutes=10))
    assert forward.due
    assert forward.slot == served + dt.timedelta(hours=5)
    assert forward.missed == 4
    assert forward.slot is not None
    served = forward.slot
    for back in range(1, 240):  # stepped back: every minute of four hours
        now = served + dt.timedelta(minutes=10) - dt.timedelta(minutes=back)
        decision = decide(hourly, served, now)
        assert not decision.due, now
        assert decision.next_slot == served + dt.timedelta(hours=1)
