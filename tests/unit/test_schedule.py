"""Schedules: cron and intervals in a time zone, DST, catch-up, jitter, validation.

Counts are exact, in the manner of sanoid's tests: a simulated clock is walked through
2026 calling decide() the way the daemon does, and every run is counted.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.core.schedule import (
    GRACE,
    Decision,
    Schedule,
    check_cron,
    check_interval,
    check_schedule,
    check_timezone,
    decide,
    due_times,
    jitter_for,
    latest_slot,
    next_due,
    parse_duration,
)

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
ZONES = ("UTC", "Europe/Berlin", "America/New_York")


def z(text: str) -> dt.datetime:
    """An instant written as ISO 8601 in UTC: ``"2026-03-29T01:00"``."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(
    zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone))


NO_JITTER = dt.timedelta(0)


def cron(
    expr: str, zone: str = "UTC", *, jitter: dt.timedelta = NO_JITTER, catch_up: bool = True
) -> Schedule:
    return Schedule(cron=expr, timezone=zone, jitter=jitter, catch_up=catch_up)


def every(minutes: int, *, jitter: dt.timedelta = NO_JITTER, catch_up: bool = True) -> Schedule:
    return Schedule(every=dt.timedelta(minutes=minutes), jitter=jitter, catch_up=catch_up)


# --- the simulated daemon ---------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    now: dt.datetime
    decision: Decision


def simulate(
    schedule: Schedule, clock: Iterable[dt.datetime], last_slot: dt.datetime | None
) -> list[Run]:
    """Call decide() at each clock reading, recording each run's slot as the last one.

    Asserts what must hold whatever the clock does: a run serves a slot that is not
    in the future, and never one served before (slots only ever increase).
    """
    runs: list[Run] = []
    served: set[dt.datetime] = set()
    for now in clock:
        decision = decide(schedule, last_slot, now)
        assert decision.next_slot > now or (last_slot is not None and now < last_slot)
        if not decision.due:
            assert decision.slot is None
            continue
        slot = decision.slot
        assert slot is not None
        assert slot <= now
        assert slot not in served, f"slot {slot} served twice"
        assert last_slot is None or slot > last_slot
        served.add(slot)
        runs.append(Run(now, decision))
        last_slot = slot
    return runs


def ticks(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> Iterator[dt.datetime]:
    """Clock readings start, start + step, ... while before end (real time, UTC)."""
    now = start.astimezone(UTC)
    while now < end:
        yield now
        now += step


def wakeups(schedule: Schedule, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
    """Clock readings of a daemon that sleeps until each next slot (event to event)."""
    now = next_due(schedule, after)
    while now <= until:
        yield now
        now = next_due(schedule, now)


def slots(runs: list[Run]) -> list[dt.datetime]:
    return [run.decision.slot for run in runs if run.decision.slot is not None]


def year_2026(zone: str) -> tuple[dt.datetime, dt.datetime]:
    """Local 2026 as ``(after, until]``: from 2026-01-01 00:00 to 2026-12-31 23:59:59."""
    second = dt.timedelta(seconds=1)
    return local(zone, 2026, 1, 1) - second, local(zone, 2027, 1, 1) - second


# --- a whole year, counted -------------------------------------------------------------

Q = dt.timedelta(minutes=15)
DAYS = 365
YEAR = [
    # schedule, zone, clock step (None: wake at each next slot), slots in 2026, runs
    *[("0 * * * *", zone, HOUR, 8760, 8760) for zone in ZONES],
    *[("30 2 * * *", zone, HOUR, DAYS, DAYS) for zone in ZONES],
    *[("0 3 * * 0", zone, HOUR, 52, 52) for zone in ZONES],  # 2026 has 52 Sundays
    ("*/15 * * * *", "Europe/Berlin", Q, 96 * DAYS, 96 * DAYS),
    ("*/15 * * * *", "America/New_York", Q, 96 * DAYS, 96 * DAYS),
    ("*/15 * * * *", "UTC", HOUR, 96 * DAYS, 8760),  # woken hourly: latest of 4
    *[("0 0 1 * *", zone, HOUR, 12, 12) for zone in ZONES],
    # woken hourly, a 15-minute interval runs once an hour, for the latest of 4 slots
    *[("every 15m", zone, HOUR, 96 * DAYS, 8760) for zone in ZONES],
    *[("every 1h", zone, HOUR, 8760, 8760) for zone in ZONES],
    # wildcard hour: one run per real hour, the gap hour has none, the repeated one two
    ("30 * * * *", "Europe/Berlin", None, 8760, 8760),
    # fixed time: first occurrence on fall-back night, 01:30 exists twice in New York
    ("30 1 * * *", "America/New_York", HOUR, DAYS, DAYS),
    # named hour, several minutes: 3 fewer in the gap (4 -> 1), 4 more on the repeat
    ("*/15 2 * * *", "Europe/Berlin", None, 4 * DAYS - 3 + 4, 4 * DAYS - 3 + 4),
    ("*/15 1 * * *", "America/New_York", None, 4 * DAYS + 4, 4 * DAYS + 4),  # no gap
    ("0,30 2 * * *", "Europe/Berlin", None, 2 * DAYS - 1 + 2, 2 * DAYS - 1 + 2),
]


def _schedule(spec: str, zone: str, *, catch_up: bool = True) -> Schedule:
    """``"every 15m"`` or a cron expression."""
    if spec.startswith("every "):
        return Schedule(every=parse_duration(spec[6:]), timezone=zone, catch_up=catch_up)
    return cron(spec, zone, catch_up=catch_up)


@pytest.mark.parametrize(("spec", "zone", "step", "expected", "expected_runs"), YEAR)
def test_a_year_of_runs(
    spec: str, zone: str, step: dt.timedelta | None, expected: int, expected_runs: int
) -> None:
    schedule = _schedule(spec, zone)
    after, until = year_2026(zone)
    due = list(due_times(schedule, after, until))
    assert len(due) == expected
    assert due == sorted(set(due))
    if step is None:
        clock = wakeups(schedule, after, until)
    else:
        clock = ticks(after + dt.timedelta(seconds=1), until, step)
    runs = simulate(schedule, clock, after)
    assert len(runs) == expected_runs
    if expected_runs == expected:
        assert slots(runs) == due
        assert all(run.decision.missed == 0 for run in runs)
    else:  # each run serves the latest slot, the others count as missed: no burst
        assert set(slots(runs)) <= set(due)
        last_reading = until - step if step is not None else until
        seen = [t for t in due if t <= runs[-1].now]  # later ones: served in 2027
        assert runs[-1].now > last_reading
        assert sum(run.decision.missed + 1 for run in runs) == len(seen) == expected - 3
        assert all(run.decision.slot == run.now for run in runs)


@pytest.mark.parametrize("zone", ZONES)
def test_a_year_with_catch_up_off_and_a_daemon_that_wakes_at_each_slot(zone: str) -> None:
    schedule = cron("30 2 * * *", zone, catch_up=False)
    after, until = year_2026(zone)
    runs = simulate(schedule, wakeups(schedule, after, until), after)
    assert len(runs) == 365
    assert slots(runs) == list(due_times(schedule, after, until))


# --- DST: the exact instants around each 2026 transition -------------------------------

DST = [
    # Europe/Berlin, 2026-03-29 01:00Z: 02:00 CET -> 03:00 CEST
    ("0 * * * *", "Europe/Berlin", "2026-03-28T22:30", "2026-03-29T03:00",
     ["2026-03-28T23:00", "2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00",
      "2026-03-29T03:00"]),
    ("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:30", "2026-03-29T01:30",
     ["2026-03-29T00:45", "2026-03-29T01:00", "2026-03-29T01:15", "2026-03-29T01:30"]),
    ("30 * * * *", "Europe/Berlin", "2026-03-28T23:00", "2026-03-29T02:00",
     ["2026-03-28T23:30", "2026-03-29T00:30", "2026-03-29T01:30"]),  # no 02:30, no 03:00
    ("30 2 * * *", "Europe/Berlin", "2026-03-27T00:00", "2026-03-31T00:00",
     ["2026-03-27T01:30", "2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"]),
    ("0 2 * * *", "Europe/Berlin", "2026-03-28T00:00", "2026-03-30T12:00",
     ["2026-03-28T01:00", "2026-03-29T01:00", "2026-03-30T00:00"]),
    ("0 3 * * 0", "Europe/Berlin", "2026-03-28T12:00", "2026-03-29T12:00",
     ["2026-03-29T01:00"]),
    ("*/15 2 * * *", "Europe/Berlin", "2026-03-28T00:00", "2026-03-30T12:00",
     ["2026-03-28T01:00", "2026-03-28T01:15", "2026-03-28T01:30", "2026-03-28T01:45",
      "2026-03-29T01:00",
      "2026-03-30T00:00", "2026-03-30T00:15", "2026-03-30T00:30", "2026-03-30T00:45"]),
    ("0,30 2 * * *", "Europe/Berlin", "2026-03-28T00:00", "2026-03-30T12:00",
     ["2026-03-28T01:00", "2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:00",
      "2026-03-30T00:30"]),
    ("every 90m", "Europe/Berlin", "2026-03-28T22:00", "2026-03-29T04:00",
     ["2026-03-28T22:30", "2026-03-29T00:00", "2026-03-29T01:30", "2026-03-29T03:00"]),
    # Europe/Berlin, 2026-10-25 01:00Z: 03:00 CEST -> 02:00 CET
    ("0 * * * *", "Europe/Berlin", "2026-10-24T22:30", "2026-10-25T02:30",
     ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"]),
    ("*/15 * * * *", "Europe/Berlin", "2026-10-25T00:30", "2026-10-25T01:30",
     ["2026-10-25T00:45", "2026-10-25T01:00", "2026-10-25T01:15", "2026-10-25T01:30"]),
    ("30 * * * *", "Europe/Berlin", "2026-10-24T23:00", "2026-10-25T02:00",
     ["2026-10-24T23:30", "2026-10-25T00:30", "2026-10-25T01:30"]),  # 02:30 twice
    ("30 2 * * *", "Europe/Berlin", "2026-10-23T00:00", "2026-10-27T00:00",
     ["2026-10-23T00:30", "2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"]),
    ("0 3 * * 0", "Europe/Berlin", "2026-10-24T12:00", "2026-10-25T12:00",
     ["2026-10-25T02:00"]),
    ("*/15 2 * * *", "Europe/Berlin", "2026-10-24T23:00", "2026-10-25T03:00",
     ["2026-10-25T00:00", "2026-10-25T00:15", "2026-10-25T00:30", "2026-10-25T00:45",
      "2026-10-25T01:00", "2026-10-25T01:15", "2026-10-25T01:30", "2026-10-25T01:45"]),
    ("0,30 2 * * *", "Europe/Berlin", "2026-10-24T23:00", "2026-10-25T03:00",
     ["2026-10-25T00:00", "2026-10-25T00:30", "2026-10-25T01:00", "2026-10-25T01:30"]),
    # America/New_York, 2026-03-08 07:00Z: 02:00 EST -> 03:00 EDT
    ("0 * * * *", "America/New_York", "2026-03-08T05:30", "2026-03-08T09:00",
     ["2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00", "2026-03-08T09:00"]),
    ("*/15 * * * *", "America/New_York", "2026-03-08T06:30", "2026-03-08T07:30",
     ["2026-03-08T06:45", "2026-03-08T07:00", "2026-03-08T07:15", "2026-03-08T07:30"]),
    ("30 2 * * *", "America/New_York", "2026-03-06T00:00", "2026-03-10T00:00",
     ["2026-03-06T07:30", "2026-03-07T07:30", "2026-03-08T07:00", "2026-03-09T06:30"]),
    ("0 3 * * 0", "America/New_York", "2026-03-07T12:00", "2026-03-08T12:00",
     ["2026-03-08T07:00"]),
    # America/New_York, 2026-11-01 06:00Z: 02:00 EDT -> 01:00 EST
    ("0 * * * *", "America/New_York", "2026-11-01T04:30", "2026-11-01T07:30",
     ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"]),  # 01:00 twice
    ("*/15 * * * *", "America/New_York", "2026-11-01T05:30", "2026-11-01T06:30",
     ["2026-11-01T05:45", "2026-11-01T06:00", "2026-11-01T06:15", "2026-11-01T06:30"]),
    ("30 1 * * *", "America/New_York", "2026-10-31T00:00", "2026-11-03T00:00",
     ["2026-10-31T05:30", "2026-11-01T05:30", "2026-11-02T06:30"]),  # once, EDT
    ("30 2 * * *", "America/New_York", "2026-10-31T00:00", "2026-11-03T00:00",
     ["2026-10-31T06:30", "2026-11-01T07:30", "2026-11-02T07:30"]),
    ("0 3 * * 0", "America/New_York", "2026-10-31T12:00", "2026-11-01T12:00",
     ["2026-11-01T08:00"]),
    ("*/30 1 * * *", "America/New_York", "2026-11-01T04:00", "2026-11-01T08:00",
     ["2026-11-01T05:00", "2026-11-01T05:30", "2026-11-01T06:00", "2026-11-01T06:30"]),
    ("every 1h", "America/New_York", "2026-11-01T04:30", "2026-11-01T07:30",
     ["2026-11-01T05:00", "2026-11-01T06:00", "2026-11-01T07:00"]),
    # Australia/Lord_Howe moves by 30 minutes: 2026-10-04 02:00 -> 02:30 (+10:30 -> +11)
    ("15 2 * * *", "Australia/Lord_Howe", "2026-10-02T12:00", "2026-10-05T12:00",
     ["2026-10-02T15:45", "2026-10-03T15:30", "2026-10-04T15:15"]),
    # America/Sao_Paulo, 2018-11-04: 00:00 -> 01:00 (a gap at midnight)
    ("0 0 * * *", "America/Sao_Paulo", "2018-11-02T12:00", "2018-11-05T12:00",
     ["2018-11-03T03:00", "2018-11-04T03:00", "2018-11-05T02:00"]),
    # America/Sao_Paulo, 2019-02-17: 00:00 -> 23:00 the day before (23:xx twice)
    ("30 23 * * *", "America/Sao_Paulo", "2019-02-15T12:00", "2019-02-18T12:00",
     ["2019-02-16T01:30", "2019-02-17T01:30", "2019-02-18T02:30"]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "zone", "after", "until", "expected"), DST)
def test_dst_instants(spec: str, zone: str, after: str, until: str, expected: list[str]) -> None:
    schedule = _schedule(spec, zone)
    assert list(due_times(schedule, z(after), z(until))) == [z(t) for t in expected]


@pytest.mark.parametrize(("spec", "zone", "after", "until", "expected"), DST)
def test_dst_minute_by_minute(
    spec: str, zone: str, after: str, until: str, expected: list[str]
) -> None:
    """Woken every minute, a daemon with catch_up off serves exactly those instants."""
    schedule = _schedule(spec, zone, catch_up=False)
    runs = simulate(schedule, ticks(z(after) + MINUTE, z(until) + MINUTE, MINUTE), z(after))
    assert slots(runs) == [z(t) for t in expected]
    assert [run.now for run in runs] == [z(t) for t in expected]  # each on the minute


def test_the_gap_is_named_by_its_local_times() -> None:
    """02:30 on 2026-03-29 in Berlin runs at 03:00 CEST, the first instant after the gap."""
    schedule = cron("30 2 * * *", "Europe/Berlin")
    slot = next_due(schedule, z("2026-03-28T12:00"))
    assert slot.astimezone(ZoneInfo("Europe/Berlin")).isoformat() == "2026-03-29T03:00:00+02:00"


# --- next_due, due_times ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        (cron("0 * * * *"), "2026-05-01T10:00", "2026-05-01T11:00"),  # strictly after
        (cron("0 * * * *"), "2026-05-01T10:59:59.999999", "2026-05-01T11:00"),
        (cron("@hourly"), "2026-05-01T10:00", "2026-05-01T11:00"),
        (cron("@daily", "Europe/Berlin"), "2026-05-01T10:00", "2026-05-01T22:00"),
        (cron("@weekly"), "2026-05-01T10:00", "2026-05-03T00:00"),  # a Sunday
        (cron("@monthly"), "2026-05-01T10:00", "2026-06-01T00:00"),
        (cron("@yearly"), "2026-05-01T10:00", "2027-01-01T00:00"),
        (cron("@ANNUALLY"), "2026-05-01T10:00", "2027-01-01T00:00"),
        (cron("0 0 29 feb *"), "2026-05-01T10:00", "2028-02-29T00:00"),
        (cron("0 9 * * mon-fri"), "2026-05-01T10:00", "2026-05-04T09:00"),  # Fri -> Mon
        (cron("0 9 * * MON-FRI"), "2026-05-01T08:00", "2026-05-01T09:00"),
        (cron("0 0 * * 7"), "2026-05-01T10:00", "2026-05-03T00:00"),  # 7 is Sunday
        (cron("0 0 13 * fri"), "2026-05-01T10:00", "2026-05-08T00:00"),  # either day
        (cron("0 0 */10 * *"), "2026-05-01T10:00", "2026-05-11T00:00"),  # 1, 11, 21, 31
        (cron("0 0 1 jan-mar/2 *"), "2026-01-01T10:00", "2026-03-01T00:00"),
        (cron("5/20 * * * *"), "2026-05-01T10:30", "2026-05-01T10:45"),  # 5, 25, 45
        (every(60), "2026-05-01T10:00", "2026-05-01T11:00"),
        (every(60 * 24 * 7), "2026-05-01T10:00", "2026-05-07T00:00"),  # epoch: a Thursday
        (every(7), "1970-01-01T00:00", "1970-01-01T00:07"),
    ],
)
def test_next_due(schedule: Schedule, after: str, expected: str) -> None:
    assert next_due(schedule, z(after)) == z(expected)
    assert next_due(schedule, z(after)).tzinfo is UTC


def test_next_due_takes_any_zone_and_answers_in_utc() -> None:
    after = local("Asia/Tokyo", 2026, 5, 1, 19, 0)  # 10:00Z
    assert next_due(cron("0 * * * *"), after) == z("2026-05-01T11:00")


def test_due_times_window_edges() -> None:
    schedule = cron("0 * * * *")
    assert list(due_times(schedule, z("2026-05-01T10:00"), z("2026-05-01T12:00"))) == [
        z("2026-05-01T11:00"),
        z("2026-05-01T12:00"),
    ]
    assert list(due_times(schedule, z("2026-05-01T12:00"), z("2026-05-01T10:00"))) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: next_due(cron("0 * * * *"), dt.datetime(2026, 5, 1)),
        lambda: due_times(cron("0 * * * *"), dt.datetime(2026, 5, 1), z("2026-05-02T00:00")),
        lambda: due_times(every(5), z("2026-05-01T00:00"), dt.datetime(2026, 5, 2)),
        lambda: decide(cron("0 * * * *"), None, dt.datetime(2026, 5, 1)),
        lambda: decide(cron("0 * * * *"), dt.datetime(2026, 5, 1), z("2026-05-01T00:00")),
        lambda: jitter_for(cron("0 * * * *", jitter=HOUR), "k", dt.datetime(2026, 5, 1)),
    ],
)
def test_naive_datetimes_are_refused(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match="aware"):
        call()


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (Schedule(), "exactly one of cron and every"),
        (Schedule(cron="0 * * * *", every=HOUR), "exactly one of cron and every"),
        (every(0), "shortest interval is 1 second"),
        (Schedule(every=dt.timedelta(milliseconds=999)), "shortest interval is 1 second"),
        (cron("61 * * * *"), "minute field '61': 61 is out of range 0-59"),
        (cron("0 * * * *", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (cron("0 * * * *", jitter=-MINUTE), "jitter must not be negative"),
        (every(15, jitter=Q), "jitter 0:15:00 must be shorter than every: 0:15:00"),
    ],
)
def test_invalid_schedules(schedule: Schedule, message: str) -> None:
    problem = check_schedule(schedule)
    assert problem is not None
    assert message in problem
    with pytest.raises(ValueError, match=message):
        next_due(schedule, z("2026-05-01T00:00"))
    with pytest.raises(ValueError, match=message):
        decide(schedule, None, z("2026-05-01T00:00"))


def test_valid_schedules_pass_check_schedule() -> None:
    assert check_schedule(cron("*/5 * * * *", "Europe/Berlin", jitter=HOUR)) is None
    assert check_schedule(every(15, jitter=Q - MINUTE)) is None


# --- decide ----------------------------------------------------------------------------

HOURLY = cron("0 * * * *")
NO_CATCH_UP = cron("0 * * * *", catch_up=False)

DECIDE = [
    # schedule, last_slot, now -> due, slot, missed, next_slot, reason starts with
    (HOURLY, None, "10:30", False, None, 0, "11:00", "never run"),
    (HOURLY, "10:00", "10:00", False, None, 0, "11:00", "next slot"),
    (HOURLY, "10:00", "10:59:59", False, None, 0, "11:00", "next slot"),
    (HOURLY, "10:00", "11:00", True, "11:00", 0, "12:00", "slot 2026-05-01T11:00:00Z is due"),
    (HOURLY, "10:00", "11:01", True, "11:00", 0, "12:00", "slot"),  # within GRACE
    (HOURLY, "10:00", "11:20", True, "11:00", 0, "12:00", "catching up slot"),
    (HOURLY, "10:00", "15:20", True, "15:00", 4, "16:00", "catching up slot"),
    (HOURLY, "10:00", "07:00", False, None, 0, "11:00", "clock is 3:00:00 behind"),
    (NO_CATCH_UP, "10:00", "11:01", True, "11:00", 0, "12:00", "slot"),
    (NO_CATCH_UP, "10:00", "11:01:01", False, None, 1, "12:00",
     "missed 1 runs while down; catch_up is off"),
    (NO_CATCH_UP, "10:00", "15:20", False, None, 5, "16:00",
     "missed 5 runs while down; catch_up is off"),
    (NO_CATCH_UP, "10:00", "15:00:30", True, "15:00", 4, "16:00", "slot"),  # stepped forward
    (cron("0 * * * *", catch_up=False, jitter=Q), "10:00", "11:15:59", True, "11:00", 0,
     "12:00", "slot"),  # jitter widens the grace: a jittered run is still on time
    (cron("0 * * * *", catch_up=False, jitter=Q), "10:00", "11:16:01", False, None, 1,
     "12:00", "missed"),
    (every(60), "10:00", "12:30", True, "12:00", 1, "13:00", "catching up"),
    (every(60, catch_up=False), "10:00", "12:30", False, None, 2, "13:00", "missed 2 runs"),
    (every(60), "10:17", "11:00", True, "11:00", 0, "12:00", "slot"),  # last_slot off-grid
]  # fmt: skip


def _at(time: str | None) -> dt.datetime | None:
    return None if time is None else z(f"2026-05-01T{time}")


@pytest.mark.parametrize(
    ("schedule", "last", "now", "due", "slot", "missed", "upcoming", "reason"), DECIDE
)
def test_decide(
    schedule: Schedule,
    last: str | None,
    now: str,
    due: bool,
    slot: str | None,
    missed: int,
    upcoming: str,
    reason: str,
) -> None:
    decision = decide(schedule, _at(last), z(f"2026-05-01T{now}"))
    assert decision == Decision(
        due, _at(slot), missed, z(f"2026-05-01T{upcoming}"), decision.reason
    )
    assert decision.reason.startswith(reason), decision.reason


def test_grace_is_a_minute() -> None:
    assert dt.timedelta(seconds=60) == GRACE


def test_daemon_down_30_days_catches_up_once_then_runs_normally() -> None:
    schedule = cron("30 2 * * *", "Europe/Berlin")
    start, stop = z("2026-06-01T00:00"), z("2026-06-03T00:00")
    back, end = stop + 30 * DAY, stop + 32 * DAY
    clock = [*ticks(start, stop, HOUR), *ticks(back + 10 * MINUTE, end, HOUR)]
    runs = simulate(schedule, clock, start)
    assert len(runs) == 2 + 1 + 2
    catch_up = runs[2]
    assert catch_up.now == back + 10 * MINUTE  # at once, when the daemon is back
    # the latest missed slot: 02:30 CEST on 2026-07-02; 06-03 .. 07-01 are not served
    assert catch_up.decision.slot == z("2026-07-02T00:30")
    assert catch_up.decision.missed == 29
    assert catch_up.decision.reason.endswith("29 earlier slots missed")
    assert slots(runs)[3:] == [z("2026-07-03T00:30"), z("2026-07-04T00:30")]


def test_daemon_down_30_days_without_catch_up_skips_them() -> None:
    schedule = cron("30 2 * * *", "Europe/Berlin", catch_up=False)
    start, stop = z("2026-06-01T00:00"), z("2026-06-03T00:00")
    back, end = stop + 30 * DAY, stop + 32 * DAY
    decision = decide(schedule, z("2026-06-02T00:30"), back + 10 * MINUTE)
    assert not decision.due
    assert decision.missed == 30  # 2026-06-03 .. 2026-07-02
    assert decision.reason.startswith("missed 30 runs while down; catch_up is off")
    assert decision.next_slot == z("2026-07-03T00:30")
    # a daemon waking each minute: on-time runs only, none for the days it was down
    clock = [*ticks(start, stop, MINUTE), *ticks(back + 10 * MINUTE, end, MINUTE)]
    runs = simulate(schedule, clock, start)
    assert slots(runs) == [
        z("2026-06-01T00:30"),
        z("2026-06-02T00:30"),
        z("2026-07-03T00:30"),
        z("2026-07-04T00:30"),
    ]


@pytest.mark.parametrize("catch_up", [True, False])
def test_clock_stepped_back_3h_neither_repeats_nor_skips(catch_up: bool) -> None:
    schedule = cron("0 * * * *", catch_up=catch_up)
    start = z("2026-05-01T00:00")
    # at 05:30 the clock is set back to 02:30; real time goes on for 7 more hours
    clock = [*ticks(start, start + 5.5 * HOUR, MINUTE)]
    clock += [*ticks(start + 2.5 * HOUR, start + 9.5 * HOUR, MINUTE)]
    runs = simulate(schedule, clock, start)
    assert slots(runs) == [start + h * HOUR for h in range(1, 10)]
    assert all(run.decision.missed == 0 for run in runs)
    # while the clock re-lives 02:30 .. 05:30 nothing runs, and it says why
    relived = decide(schedule, start + 5 * HOUR, start + 3 * HOUR)
    assert not relived.due
    assert relived.next_slot == start + 6 * HOUR
    assert relived.reason.startswith("clock is 2:00:00 behind the last served slot")


@pytest.mark.parametrize(("catch_up", "served"), [(True, [10]), (False, [])])
def test_clock_stepped_forward_5h_runs_once_without_a_burst(
    catch_up: bool, served: list[int]
) -> None:
    schedule = cron("0 * * * *", catch_up=catch_up)
    start = z("2026-05-01T00:00")
    # at 05:30 the clock jumps to 10:30, then goes on minute by minute
    clock = [*ticks(start, start + 5.5 * HOUR, MINUTE)]
    clock += [*ticks(start + 10.5 * HOUR, start + 13 * HOUR, MINUTE)]
    runs = simulate(schedule, clock, start)
    expected = [1, 2, 3, 4, 5, *served, 11, 12]
    assert slots(runs) == [start + h * HOUR for h in expected]
    jumped = [run for run in runs if run.now == start + 10.5 * HOUR]
    assert len(jumped) == len(served)
    if catch_up:
        assert jumped[0].decision.missed == 4


def test_clock_stepped_forward_onto_a_slot_runs_that_slot_even_without_catch_up() -> None:
    schedule = cron("0 * * * *", catch_up=False)
    decision = decide(schedule, z("2026-05-01T05:00"), z("2026-05-01T10:00:20"))
    assert (decision.due, decision.slot, decision.missed) == (True, z("2026-05-01T10:00"), 4)


# --- jitter ----------------------------------------------------------------------------


def test_jitter_is_stable_bounded_and_spread() -> None:
    schedule = cron("0 * * * *", jitter=dt.timedelta(minutes=10))
    slot = z("2026-05-01T10:00")
    assert jitter_for(schedule, "nightly/web1", slot) == jitter_for(schedule, "nightly/web1", slot)
    values = [jitter_for(schedule, f"nightly/vm{i}", slot) for i in range(500)]
    assert all(dt.timedelta(0) <= v < schedule.jitter for v in values)
    assert len(set(values)) == 500  # every key its own delay
    assert min(values) < dt.timedelta(minutes=1)
    assert max(values) > dt.timedelta(minutes=9)
    per_slot = {jitter_for(schedule, "nightly/web1", slot + h * HOUR) for h in range(100)}
    assert len(per_slot) == 100  # and every slot


def test_jitter_differs_between_keys_and_depends_on_the_instant_only() -> None:
    schedule = cron("0 * * * *", jitter=HOUR)
    slot = z("2026-05-01T10:00")
    assert jitter_for(schedule, "a/web1", slot) != jitter_for(schedule, "a/web2", slot)
    assert jitter_for(schedule, "a/web1", slot) != jitter_for(schedule, "b/web1", slot)
    same_instant = slot.astimezone(ZoneInfo("Europe/Berlin"))
    assert jitter_for(schedule, "a/web1", same_instant) == jitter_for(schedule, "a/web1", slot)


def test_no_jitter_is_zero() -> None:
    assert jitter_for(cron("0 * * * *"), "a/web1", z("2026-05-01T10:00")) == dt.timedelta(0)


def test_tiny_jitter_stays_below_it() -> None:
    schedule = cron("0 * * * *", jitter=dt.timedelta(microseconds=1))
    assert jitter_for(schedule, "a/web1", z("2026-05-01T10:00")) == dt.timedelta(0)


# --- validation helpers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "0 * * * *",
        "*/15 * * * *",
        "0 0-23/2 * * *",
        "0,15,30,45 9-17 * * 1-5",
        "30 2 * * *",
        "0 3 * * 0",
        "0 3 * * 7",
        "0 0 1 * *",
        "0 0 1 jan *",
        "0 0 1 JAN,Jul *",
        "0 0 * * mon-fri",
        "0 0 * * Sat,sun",
        "0 0 1 */3 *",
        "5/10 * * * *",
        "0 0 29 2 *",
        "0 0 31 * *",
        "  0  *  *  *  *  ",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@Daily",
    ],
)
def test_good_cron(expr: str) -> None:
    assert check_cron(expr) is None
    assert next_due(cron(expr), z("2026-05-01T00:00")) > z("2026-05-01T00:00")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "the cron expression is empty"),
        ("   ", "the cron expression is empty"),
        ("* * * *", "has 4 fields; it needs 5"),
        ("0 0 * * * *", "has 6 fields; it needs 5"),
        ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
        ("* 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month field '0': 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month field '32': 32 is out of range 1-31"),
        ("0 0 * 13 *", "month field '13': 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field '8': 8 is out of range 0-7"),
        ("*/0 * * * *", "minute field '*/0': step '0' must be a whole number of at least 1"),
        ("*/x * * * *", "step 'x' must be a whole number"),
        ("5-1 * * * *", "minute field '5-1': range '5-1' runs backwards"),
        ("1,,2 * * * *", "empty item in the list"),
        ("-5 * * * *", "a number is missing"),
        ("x * * * *", "minute field 'x': 'x' is not a number"),
        ("0 0 * foo *", "'foo' is neither a number nor a name (jan..dec)"),
        ("0 0 * mon *", "month field 'mon'"),
        ("0 0 * * jan", "day-of-week field 'jan'"),
        ("0 0 L * *", "day-of-month field 'L'"),
        ("0 0 * * 5L", "day-of-week field '5L'"),
        ("0 0 * * mon#2", "day-of-week field 'mon#2'"),
        ("0 0 ? * *", "day-of-month field '?'"),
        ("0 0 30 2 *", "no month in the month field '2' has that day"),
        ("0 0 31 4,6 *", "no month in the month field '4,6' has that day"),
        ("@reboot", "unknown cron alias '@reboot'"),
        ("@often", "unknown cron alias '@often'"),
        ("٣ * * * *", "minute field '٣'"),  # a non-ASCII digit
    ],
)
def test_bad_cron(expr: str, message: str) -> None:
    problem = check_cron(expr)
    assert problem is not None
    assert message in problem, problem


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("UTC", None),
        ("Europe/Berlin", None),
        ("America/New_York", None),
        ("Etc/GMT+5", None),
        ("", "the time zone name is empty"),
        ("Europe/Berlin ", "unknown time zone"),
        ("europe/berlin", "unknown time zone"),
        ("Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("/etc/localtime", "is not a time zone name"),
        ("../etc/passwd", "is not a time zone name"),
        ("localtime", "depends on the host"),
    ],
)
def test_check_timezone(name: str, problem: str | None) -> None:
    found = check_timezone(name)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("2d", 172800),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        (" 90m ", 5400),
        ("1w2d3h4m5s", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("0s", 0),
        ("36h", 129600),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("  ", "empty duration"),
        ("3600", "has no unit; write '3600s' for seconds or '3600m' for minutes"),
        ("1.5h", "invalid duration"),
        ("-5m", "invalid duration"),
        ("5", "has no unit"),
        ("m", "invalid duration"),
        ("5x", "invalid duration"),
        ("5M", "invalid duration"),
        ("1H", "invalid duration"),
        ("30m1h", "invalid duration"),  # largest unit first
        ("1h1h", "invalid duration"),
        ("1 h", "invalid duration"),
        ("\u0661h", "invalid duration"),  # ARABIC-INDIC DIGIT ONE
        ("99999999999999w", "too long"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_check_interval() -> None:
    assert check_interval(MINUTE) is None
    assert check_interval(dt.timedelta(seconds=1)) is None
    assert check_interval(dt.timedelta(milliseconds=999)) is not None


# --- properties ------------------------------------------------------------------------

PROPERTY_ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Sao_Paulo",  # DST at midnight until 2019
    "Asia/Kolkata",
    "Pacific/Chatham",  # +12:45 / +13:45
    "America/Santiago",
]
minute_fields = st.sampled_from(["*", "0", "*/15", "5,35", "0-10/5", "59", "30"])
hour_fields = st.sampled_from(["*", "2", "1-3", "*/6", "0,12", "23", "0"])
dom_fields = st.sampled_from(["*", "*", "1", "15", "1-7", "31", "29"])
month_fields = st.sampled_from(["*", "*", "jan", "3-11", "*/2", "feb", "oct,nov,mar"])
dow_fields = st.sampled_from(["*", "*", "0", "mon-fri", "sat,sun", "7"])
crons = st.builds(
    lambda *fields: " ".join(fields),
    minute_fields,
    hour_fields,
    dom_fields,
    month_fields,
    dow_fields,
) | st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"])
schedules = (
    st.builds(
        lambda expr, zone, catch_up: Schedule(cron=expr, timezone=zone, catch_up=catch_up),
        crons,
        st.sampled_from(PROPERTY_ZONES),
        st.booleans(),
    )
    | st.builds(
        lambda minutes, catch_up: Schedule(every=dt.timedelta(minutes=minutes), catch_up=catch_up),
        st.integers(min_value=1, max_value=60 * 24 * 10),
        st.booleans(),
    )
).filter(lambda schedule: check_schedule(schedule) is None)
instants = st.datetimes(
    min_value=dt.datetime(1995, 1, 1),  # hypothesis wants naive bounds
    max_value=dt.datetime(2045, 1, 1),
    timezones=st.just(UTC),
)


@settings(max_examples=150, deadline=None)
@given(schedules, instants, st.integers(min_value=1, max_value=3 * 24 * 60))
def test_next_due_is_after_and_due_times_has_no_duplicates(
    schedule: Schedule, now: dt.datetime, minutes: int
) -> None:
    first = next_due(schedule, now)
    assert first > now
    until = now + dt.timedelta(minutes=minutes)
    due = list(due_times(schedule, now, until))
    assert due == sorted(set(due))
    assert all(now < t <= until for t in due)
    assert all(t.tzinfo is UTC for t in due)
    if due:
        assert due[0] == first
    else:
        assert first > until
    # the same instants whichever instant the window is split at
    middle = now + dt.timedelta(minutes=minutes // 2)
    assert list(due_times(schedule, now, middle)) + list(due_times(schedule, middle, until)) == due
    # and each one's successor is the next
    for earlier, later in itertools.pairwise(due):
        assert next_due(schedule, earlier) == later


@settings(max_examples=100, deadline=None)
@given(schedules, instants, st.integers(min_value=0, max_value=40 * 24 * 60))
def test_decide_serves_the_latest_slot_and_never_a_future_one(
    schedule: Schedule, last: dt.datetime, minutes: int
) -> None:
    now = last + dt.timedelta(minutes=minutes)
    decision = decide(schedule, last, now)
    assert decision.next_slot == next_due(schedule, now)
    if decision.slot is not None:
        assert last < decision.slot <= now
        assert decision.next_slot == next_due(schedule, decision.slot)
    if decision.due:
        assert decision.slot is not None
    else:
        assert decision.slot is None


def test_latest_slot_is_the_newest_instant_in_the_half_open_window() -> None:
    at = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    hourly = cron("0 * * * *")
    assert latest_slot(hourly, at, at + dt.timedelta(hours=2, minutes=30)) == at.replace(hour=12)
    assert latest_slot(hourly, at, at + dt.timedelta(minutes=59)) is None
    assert latest_slot(hourly, at, at) is None
    assert latest_slot(hourly, at, at - dt.timedelta(hours=3)) is None  # clock went back
    assert latest_slot(every(15), at, at + dt.timedelta(minutes=31)) == at.replace(minute=30)
