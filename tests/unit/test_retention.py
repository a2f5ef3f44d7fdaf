"""Retention: which snapshots the rules keep, and why.  Pure, no libvirt.

The tables give hand-computed keep/delete sets for realistic histories; the property
tests check the promises that must hold for any history (nothing foreign, pinned,
young or from the future is ever deleted; pruning twice prunes nothing more; ...) and
compare the keep sets with a brute-force model of the rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import zoneinfo
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapshotd.core.retention import (
    FOREIGN,
    FUTURE,
    NEWEST,
    NO_RULE,
    PERIODS,
    Candidate,
    Retention,
    Verdict,
    describe,
    evaluate,
    format_duration,
    to_delete,
)

UTC = dt.UTC
BERLIN = "Europe/Berlin"
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


def utc(text: str) -> dt.datetime:
    """An aware UTC datetime from "2026-11-24T13:00"."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def owned(*times: str) -> list[Candidate]:
    """Owned snapshots named after their creation time (UTC)."""
    return [Candidate(t, utc(t), owned=True) for t in times]


def every(start: str, step: dt.timedelta, count: int) -> list[str]:
    first = utc(start)
    return [(first + k * step).strftime("%Y-%m-%dT%H:%M") for k in range(count)]


def deleted(
    retention: Retention, candidates: Sequence[Candidate], now: str, timezone: str = "UTC"
) -> set[str]:
    return {v.name for v in evaluate(retention, candidates, utc(now), timezone) if not v.keep}


def reasons(
    retention: Retention, candidates: Sequence[Candidate], now: str, timezone: str = "UTC"
) -> dict[str, tuple[str, ...]]:
    return {v.name: v.reasons for v in evaluate(retention, candidates, utc(now), timezone)}


# --- hand-computed tables --------------------------------------------------------------

TEN_DAYS_HOURLY = every("2026-11-14T00:00", HOUR, 240)  # up to 2026-11-23T23:00Z
HOURLY_24_DAILY_7 = Retention(hourly=24, daily=7)

TABLE = [
    # hourly snapshots over 10 days: the last 24 hours, plus the last one of each of the
    # 6 days before (the day of the newest is the 7th)
    pytest.param(
        HOURLY_24_DAILY_7,
        TEN_DAYS_HOURLY,
        "2026-11-24T00:10",
        "UTC",
        {f"2026-11-23T{h:02d}:00" for h in range(24)}
        | {f"2026-11-{d}T23:00" for d in range(17, 23)},
        id="hourly-10-days-utc",
    ),
    # the same history in Berlin (UTC+1): local days end at 23:00Z, so the last of each
    # day is the 22:00Z one; the newest (23:00Z) already starts the local 24th
    pytest.param(
        HOURLY_24_DAILY_7,
        TEN_DAYS_HOURLY,
        "2026-11-24T00:10",
        BERLIN,
        {f"2026-11-23T{h:02d}:00" for h in range(24)}
        | {f"2026-11-{d}T22:00" for d in range(18, 23)},
        id="hourly-10-days-berlin",
    ),
    # gaps do not eat the budget: a week with no snapshots, then the 3 days that have one
    pytest.param(
        Retention(daily=3),
        [
            "2026-11-01T08:00",
            "2026-11-01T20:00",
            "2026-11-02T09:00",
            "2026-11-10T07:00",
            "2026-11-10T19:00",
        ],
        "2026-11-10T20:00",
        "UTC",
        {"2026-11-10T19:00", "2026-11-02T09:00", "2026-11-01T20:00"},
        id="daily-gap",
    ),
    pytest.param(
        Retention(hourly=3),
        [
            "2026-11-10T10:05",
            "2026-11-10T10:35",
            "2026-11-10T13:20",
            "2026-11-10T18:45",
            "2026-11-10T18:50",
        ],
        "2026-11-10T19:00",
        "UTC",
        {"2026-11-10T18:50", "2026-11-10T13:20", "2026-11-10T10:35"},
        id="hourly-gap",
    ),
    pytest.param(
        Retention(keep_last=3),
        every("2026-11-01T00:00", 6 * HOUR, 10),
        "2026-11-04T00:00",
        "UTC",
        {"2026-11-02T18:00", "2026-11-03T00:00", "2026-11-03T06:00"},  # the last of 10
        id="keep-last-only",
    ),
    pytest.param(
        Retention(keep_last=5),
        ["2026-11-01T00:00", "2026-11-02T00:00"],
        "2026-11-04T00:00",
        "UTC",
        {"2026-11-01T00:00", "2026-11-02T00:00"},
        id="keep-last-more-than-there-are",
    ),
    # younger than 1h at 12:05 means created after 11:05; exactly 1h old is not protected
    pytest.param(
        Retention(min_age=HOUR),
        [*every("2026-11-10T09:00", 15 * MINUTE, 13), "2026-11-10T11:05"],
        "2026-11-10T12:05",
        "UTC",
        {"2026-11-10T11:15", "2026-11-10T11:30", "2026-11-10T11:45", "2026-11-10T12:00"},
        id="min-age-only",
    ),
    pytest.param(
        Retention(min_age=HOUR),
        ["2026-11-09T00:00", "2026-11-10T00:00"],
        "2026-11-10T12:05",
        "UTC",
        {"2026-11-10T00:00"},
        id="min-age-only-keeps-the-newest",
    ),
    # Berlin, DST ends on 2026-10-25 (03:00 CEST -> 02:00 CET): the local 25th has 25
    # hours, from 2026-10-24T22:00Z to 2026-10-25T23:00Z
    pytest.param(
        Retention(daily=3),
        every("2026-10-23T20:00", HOUR, 54),  # up to 2026-10-26T01:00Z
        "2026-10-26T01:30",
        BERLIN,
        {"2026-10-26T01:00", "2026-10-25T22:00", "2026-10-24T21:00"},
        id="daily-25-hour-day-berlin",
    ),
    pytest.param(
        Retention(daily=3),
        every("2026-10-23T20:00", HOUR, 54),
        "2026-10-26T01:30",
        "UTC",
        {"2026-10-26T01:00", "2026-10-25T23:00", "2026-10-24T23:00"},
        id="daily-same-history-utc",
    ),
    # the repeated hour 02:00-03:00 local is two hourly periods (CEST, then CET)
    pytest.param(
        Retention(hourly=2),
        ["2026-10-25T00:10", "2026-10-25T00:40", "2026-10-25T01:10", "2026-10-25T01:40"],
        "2026-10-25T02:00",
        BERLIN,
        {"2026-10-25T00:40", "2026-10-25T01:40"},
        id="hourly-repeated-hour-berlin",
    ),
    # DST starts on 2026-03-29 (02:00 CET -> 03:00 CEST): the local 29th has 23 hours,
    # from 2026-03-28T23:00Z to 2026-03-29T22:00Z
    pytest.param(
        Retention(daily=2),
        ["2026-03-28T22:30", "2026-03-28T23:30", "2026-03-29T21:30", "2026-03-29T22:30"],
        "2026-03-29T23:00",
        BERLIN,
        {"2026-03-29T21:30", "2026-03-29T22:30"},
        id="daily-23-hour-day-berlin",
    ),
    # 01:30 CET, 01:50 CET, then 03:30 CEST: the skipped hour is no period
    pytest.param(
        Retention(hourly=2),
        ["2026-03-29T00:30", "2026-03-29T00:50", "2026-03-29T01:30"],
        "2026-03-29T02:00",
        BERLIN,
        {"2026-03-29T00:50", "2026-03-29T01:30"},
        id="hourly-skipped-hour-berlin",
    ),
    # Sunday 23:30 CET and Monday 00:30 CET (still Sunday in UTC) are different weeks
    pytest.param(
        Retention(weekly=2),
        ["2026-11-15T20:00", "2026-11-22T11:00", "2026-11-22T22:30", "2026-11-22T23:30"],
        "2026-11-23T08:00",
        BERLIN,
        {"2026-11-22T22:30", "2026-11-22T23:30"},
        id="week-boundary-berlin",
    ),
    pytest.param(
        Retention(weekly=2),
        ["2026-11-15T20:00", "2026-11-22T11:00", "2026-11-22T22:30", "2026-11-22T23:30"],
        "2026-11-23T08:00",
        "UTC",
        {"2026-11-15T20:00", "2026-11-22T23:30"},
        id="week-boundary-utc",
    ),
    # 23:30 and 00:30 local at the ends of November and December
    pytest.param(
        Retention(monthly=3),
        [
            "2026-10-31T12:00",
            "2026-11-30T22:30",
            "2026-11-30T23:30",
            "2026-12-31T22:30",
            "2026-12-31T23:30",
        ],
        "2027-01-01T08:00",
        BERLIN,
        {"2026-11-30T22:30", "2026-12-31T22:30", "2026-12-31T23:30"},
        id="month-ends-berlin",
    ),
    pytest.param(
        Retention(yearly=2),
        ["2025-06-01T12:00", "2026-11-30T22:30", "2026-12-31T22:30", "2026-12-31T23:30"],
        "2027-01-01T08:00",
        BERLIN,
        {"2026-12-31T22:30", "2026-12-31T23:30"},
        id="year-end-berlin",
    ),
    pytest.param(
        Retention(monthly=2),
        ["2028-02-28T12:00", "2028-02-29T23:59", "2028-03-01T00:00"],
        "2028-03-01T08:00",
        "UTC",
        {"2028-02-29T23:59", "2028-03-01T00:00"},
        id="leap-february-utc",
    ),
    pytest.param(
        Retention(),
        every("2026-11-01T00:00", HOUR, 5),
        "2026-11-02T00:00",
        "UTC",
        {"2026-11-01T04:00"},
        id="all-zero-keeps-the-newest",
    ),
]


@pytest.mark.parametrize(("retention", "times", "now", "timezone", "kept"), TABLE)
def test_table(
    retention: Retention, times: list[str], now: str, timezone: str, kept: set[str]
) -> None:
    candidates = owned(*times)
    assert deleted(retention, candidates, now, timezone) == set(times) - kept
    # the order of the input does not matter
    shuffled = sorted(candidates, key=lambda c: c.name[::-1])
    assert deleted(retention, shuffled, now, timezone) == set(times) - kept


def test_hourly_10_days_reasons() -> None:
    got = reasons(HOURLY_24_DAILY_7, owned(*TEN_DAYS_HOURLY), "2026-11-24T00:10", BERLIN)
    assert got["2026-11-23T23:00"] == (
        NEWEST,
        "hourly: newest of 2026-11-24 00:00+01:00",
        "daily: newest of 2026-11-24",
    )
    assert got["2026-11-23T22:00"] == (
        "hourly: newest of 2026-11-23 23:00+01:00",
        "daily: newest of 2026-11-23",
    )
    assert got["2026-11-23T00:00"] == ("hourly: newest of 2026-11-23 01:00+01:00",)
    assert got["2026-11-18T22:00"] == ("daily: newest of 2026-11-18",)
    assert got["2026-11-18T21:00"] == (NO_RULE,)


def test_verdicts_in_input_order_with_reasons() -> None:
    times = every("2026-11-01T00:00", 6 * HOUR, 4)
    candidates = owned(*reversed(times))
    verdicts = evaluate(Retention(keep_last=2), candidates, utc("2026-11-02T00:00"), "UTC")
    assert verdicts == [
        Verdict("2026-11-01T18:00", True, (NEWEST, "keep_last 2 (newest)")),
        Verdict("2026-11-01T12:00", True, ("keep_last 2 (2nd newest)",)),
        Verdict("2026-11-01T06:00", False, (NO_RULE,)),
        Verdict("2026-11-01T00:00", False, (NO_RULE,)),
    ]
    assert verdicts[0].name == "2026-11-01T18:00"
    assert verdicts[0].keep
    assert verdicts[2].reasons == ("no rule keeps it",)


def test_keep_last_ordinals() -> None:
    got = reasons(
        Retention(keep_last=23), owned(*every("2026-11-01T00:00", HOUR, 23)), "2026-11-02"
    )
    wanted = {2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th", 13: "13th", 21: "21st"}
    wanted |= {22: "22nd", 23: "23rd"}
    for rank, word in wanted.items():
        name = (utc("2026-11-01T23:00") - rank * HOUR).strftime("%Y-%m-%dT%H:%M")
        assert got[name] == (f"keep_last 23 ({word} newest)",)


def test_dst_hour_and_day_labels() -> None:
    fall = owned("2026-10-25T00:40", "2026-10-25T01:40")
    got = reasons(Retention(hourly=2, daily=1), fall, "2026-10-25T02:00", BERLIN)
    assert got["2026-10-25T00:40"] == ("hourly: newest of 2026-10-25 02:00+02:00",)
    assert got["2026-10-25T01:40"] == (
        NEWEST,
        "hourly: newest of 2026-10-25 02:00+01:00",
        "daily: newest of 2026-10-25",
    )
    spring = owned("2026-03-28T23:30", "2026-03-29T21:30", "2026-03-29T22:30")
    got = reasons(Retention(daily=3), spring, "2026-03-29T23:00", BERLIN)
    assert got["2026-03-29T21:30"] == ("daily: newest of 2026-03-29",)
    assert got["2026-03-29T22:30"] == (NEWEST, "daily: newest of 2026-03-30")
    assert got["2026-03-28T23:30"] == (NO_RULE,)  # the same local day as 21:30Z


def test_iso_week_and_month_labels() -> None:
    got = reasons(
        Retention(weekly=3, monthly=2, yearly=2),
        owned("2026-12-27T12:00", "2027-01-02T12:00", "2027-01-04T12:00"),
        "2027-01-05T00:00",
        BERLIN,
    )
    assert got["2027-01-04T12:00"] == (
        NEWEST,
        "weekly: newest of 2027-W01",
        "monthly: newest of 2027-01",
        "yearly: newest of 2027",
    )
    # Saturday 2027-01-02 still belongs to ISO week 53 of 2026
    assert got["2027-01-02T12:00"] == ("weekly: newest of 2026-W53",)
    assert got["2026-12-27T12:00"] == (
        "weekly: newest of 2026-W52",
        "monthly: newest of 2026-12",
        "yearly: newest of 2026",
    )


def test_half_hour_zone_periods() -> None:
    # Kathmandu is UTC+05:45: its hours start at :15 UTC, its days at 18:15Z
    times = ["2026-11-10T18:10", "2026-11-10T18:20", "2026-11-10T19:10", "2026-11-10T19:20"]
    got = reasons(Retention(hourly=3, daily=2), owned(*times), "2026-11-10T20:00", "Asia/Kathmandu")
    assert got["2026-11-10T19:20"] == (
        NEWEST,
        "hourly: newest of 2026-11-11 01:00+05:45",
        "daily: newest of 2026-11-11",
    )
    assert got["2026-11-10T19:10"] == ("hourly: newest of 2026-11-11 00:00+05:45",)
    assert got["2026-11-10T18:20"] == (NO_RULE,)
    assert got["2026-11-10T18:10"] == (
        "hourly: newest of 2026-11-10 23:00+05:45",
        "daily: newest of 2026-11-10",
    )


def test_foreign_snapshots_interleaved() -> None:
    mine = owned("2026-11-10T01:00", "2026-11-10T02:00", "2026-11-10T03:00", "2026-11-10T04:00")
    theirs = [
        Candidate("manual-before-upgrade", utc("2026-11-10T02:30"), owned=False),
        Candidate("other-policy", utc("2026-11-10T04:30"), owned=False),
        Candidate("old-manual", utc("2020-01-01T00:00"), owned=False),
    ]
    candidates = [mine[0], theirs[0], mine[1], theirs[2], mine[2], mine[3], theirs[1]]
    got = reasons(Retention(keep_last=2, daily=1), candidates, "2026-11-10T05:00")
    assert got == {
        "2026-11-10T01:00": (NO_RULE,),
        "manual-before-upgrade": (FOREIGN,),
        "2026-11-10T02:00": (NO_RULE,),
        "old-manual": (FOREIGN,),
        "2026-11-10T03:00": ("keep_last 2 (2nd newest)",),
        "2026-11-10T04:00": (NEWEST, "keep_last 2 (newest)", "daily: newest of 2026-11-10"),
        "other-policy": (FOREIGN,),
    }
    assert to_delete(Retention(keep_last=2), candidates, utc("2026-11-10T05:00"), "UTC") == [
        "2026-11-10T01:00",
        "2026-11-10T02:00",
    ]


def test_only_foreign_snapshots() -> None:
    theirs = [Candidate(f"x{k}", utc("2026-11-10T00:00") + k * HOUR, owned=False) for k in range(3)]
    verdicts = evaluate(Retention(keep_last=1), theirs, utc("2026-11-11T00:00"), "UTC")
    assert [v.reasons for v in verdicts] == [(FOREIGN,)] * 3
    assert evaluate(Retention(keep_last=1), [], utc("2026-11-11T00:00"), "UTC") == []


def test_pinned() -> None:
    chain = "part of the domain's current backing chain"
    a, b, c, d = owned(
        "2026-11-01T00:00", "2026-11-02T00:00", "2026-11-03T00:00", "2026-11-04T00:00"
    )
    candidates = [
        Candidate(a.name, a.created, True, pinned="has children that still need it"),
        b,
        c,
        Candidate(d.name, d.created, True, pinned=chain),
        Candidate("foreign-pinned", a.created, False, pinned="has children"),
    ]
    got = reasons(Retention(keep_last=2), candidates, "2026-11-05T00:00")
    assert got == {
        a.name: ("pinned: has children that still need it",),
        b.name: (NO_RULE,),
        # a pinned snapshot counts for keep_last like any other of the policy's
        c.name: ("keep_last 2 (2nd newest)",),
        d.name: (f"pinned: {chain}", NEWEST, "keep_last 2 (newest)"),
        "foreign-pinned": (FOREIGN, "pinned: has children"),
    }


def test_future_snapshots_are_kept_and_not_counted() -> None:
    candidates = owned("2026-11-10T10:00", "2026-11-10T11:00", "2026-11-10T13:00")
    candidates.append(Candidate("future-pinned", utc("2026-11-11T00:00"), True, pinned="x"))
    got = reasons(Retention(keep_last=1), candidates, "2026-11-10T12:00")
    assert got == {
        "2026-11-10T10:00": (NO_RULE,),
        "2026-11-10T11:00": (NEWEST, "keep_last 1 (newest)"),
        "2026-11-10T13:00": (FUTURE,),
        "future-pinned": (FUTURE, "pinned: x"),
    }
    # all in the future: nothing is deleted, and nothing counts as the newest
    got = reasons(Retention(keep_last=1), candidates, "2026-11-01T00:00")
    assert set(got.values()) == {(FUTURE,), (FUTURE, "pinned: x")}


def test_min_age_reason_and_other_rules_together() -> None:
    candidates = owned(*every("2026-11-10T09:00", 30 * MINUTE, 7))  # 09:00 .. 12:00
    got = reasons(Retention(keep_last=1, min_age=90 * MINUTE), candidates, "2026-11-10T12:10")
    assert got["2026-11-10T12:00"] == (NEWEST, "keep_last 1 (newest)", "younger than min_age 1h30m")
    assert got["2026-11-10T11:00"] == ("younger than min_age 1h30m",)
    assert got["2026-11-10T10:30"] == (NO_RULE,)  # created 10:30 is not after 10:40


def test_equal_timestamps_greater_name_is_newer() -> None:
    when = utc("2026-11-10T10:00")
    pair = [Candidate("b", when, True), Candidate("a", when, True)]
    for candidates in (pair, pair[::-1]):
        got = reasons(Retention(keep_last=1, daily=1), candidates, "2026-11-11T00:00")
        assert got == {
            "a": (NO_RULE,),
            "b": (NEWEST, "keep_last 1 (newest)", "daily: newest of 2026-11-10"),
        }
    # the same instant written in another zone is the same instant
    berlin = when.astimezone(zoneinfo.ZoneInfo(BERLIN))
    mixed = [
        Candidate("z", berlin, True),
        Candidate("y", when, True),
        Candidate("x", when - MINUTE, True),
    ]
    assert deleted(Retention(keep_last=1), mixed, "2026-11-11T00:00") == {"y", "x"}
    # ... also in the repeated hour, where Python's == says a UTC and a Berlin time differ
    repeated = utc("2026-10-25T00:30")  # 02:30 CEST, the first of two 02:30s
    for a, b in ((UTC, zoneinfo.ZoneInfo(BERLIN)), (zoneinfo.ZoneInfo(BERLIN), UTC)):
        pair = [
            Candidate("m", repeated.astimezone(a), True),
            Candidate("n", repeated.astimezone(b), True),
        ]
        assert pair[0].created != pair[1].created
        assert deleted(Retention(keep_last=1), pair, "2026-10-25T03:00") == {"m"}


def test_identical_names_and_times_later_position_is_newer() -> None:
    when = utc("2026-11-10T10:00")
    twins = [Candidate("s", when, True), Candidate("s", when, True)]
    verdicts = evaluate(Retention(keep_last=1), twins, utc("2026-11-11T00:00"), "UTC")
    assert [v.keep for v in verdicts] == [False, True]


def test_to_delete_oldest_first() -> None:
    times = every("2026-11-01T00:00", HOUR, 6)
    candidates = owned(*times)
    candidates += [Candidate("b-tie", utc(times[0]), True), Candidate("a-tie", utc(times[0]), True)]
    candidates.sort(key=lambda c: c.name[::-1])
    assert to_delete(Retention(keep_last=2), candidates, utc("2026-11-02T00:00"), "UTC") == [
        "2026-11-01T00:00",
        "a-tie",
        "b-tie",
        "2026-11-01T01:00",
        "2026-11-01T02:00",
        "2026-11-01T03:00",
    ]


def test_aware_datetimes_only() -> None:
    naive = dt.datetime(2026, 11, 10, 10, 0)
    good = owned("2026-11-10T09:00")
    with pytest.raises(ValueError, match="no time zone"):
        evaluate(Retention(keep_last=1), good, naive, "UTC")
    with pytest.raises(ValueError, match="no time zone"):
        evaluate(
            Retention(keep_last=1), [*good, Candidate("n", naive, True)], utc("2026-11-11"), "UTC"
        )
    with pytest.raises(ValueError, match="no time zone"):
        evaluate(
            Retention(keep_last=1), [*good, Candidate("n", naive, False)], utc("2026-11-11"), "UTC"
        )


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd"])
def test_unknown_time_zone(zone: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        evaluate(Retention(keep_last=1), [], utc("2026-11-11"), zone)


# --- Retention, describe ---------------------------------------------------------------


def test_retention_validation() -> None:
    with pytest.raises(ValueError, match="daily must be a whole number"):
        Retention(daily=-1)
    with pytest.raises(ValueError, match="hourly must be a whole number"):
        Retention(hourly=True)
    with pytest.raises(ValueError, match="keep_last must be a whole number"):
        Retention(keep_last=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_age must not be negative"):
        Retention(min_age=-MINUTE)


def test_is_empty() -> None:
    assert Retention().is_empty
    assert not Retention(keep_last=1).is_empty
    assert not Retention(yearly=1).is_empty
    assert not Retention(min_age=HOUR).is_empty


@pytest.mark.parametrize(
    ("retention", "summary"),
    [
        (
            Retention(keep_last=3, hourly=24, daily=7, min_age=HOUR),
            "keep_last 3, hourly 24, daily 7, min_age 1h",
        ),
        (
            Retention(1, 2, 3, 4, 5, 6, dt.timedelta(days=1, hours=12)),
            "keep_last 1, hourly 2, daily 3, weekly 4, monthly 5, yearly 6, min_age 1d12h",
        ),
        (Retention(weekly=4), "weekly 4"),
        (Retention(min_age=90 * dt.timedelta(seconds=1)), "min_age 1m30s"),
        (Retention(), "newest only"),
    ],
)
def test_describe(retention: Retention, summary: str) -> None:
    assert describe(retention) == summary


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "0s"),
        (dt.timedelta(seconds=45), "45s"),
        (dt.timedelta(minutes=30), "30m"),
        (dt.timedelta(hours=1), "1h"),
        (dt.timedelta(days=7), "7d"),
        (dt.timedelta(days=1, seconds=1), "1d1s"),
        (dt.timedelta(milliseconds=500), "0.5s"),
        (dt.timedelta(minutes=1, microseconds=250000), "1m0.25s"),
        (-dt.timedelta(hours=2), "-2h"),
    ],
)
def test_format_duration(delta: dt.timedelta, text: str) -> None:
    assert format_duration(delta) == text


# --- properties ------------------------------------------------------------------------

# Zones with DST, with offsets that are not whole hours, and Lord Howe's half-hour DST.
ZONES = [
    "UTC",
    BERLIN,
    "America/New_York",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Australia/Lord_Howe",
]
# Zones whose periods are plain intervals (no half-hour DST shift), for the model.
MODEL_ZONES = ZONES[:5]
BASE = dt.datetime(2026, 10, 1, tzinfo=UTC)  # two months around the DST changes
SPAN = 70 * 24 * 60  # minutes
WRITTEN_IN = [UTC, zoneinfo.ZoneInfo(BERLIN), dt.timezone(dt.timedelta(hours=-3, minutes=-30))]

retentions = st.builds(
    Retention,
    keep_last=st.integers(0, 5),
    hourly=st.integers(0, 8),
    daily=st.integers(0, 6),
    weekly=st.integers(0, 4),
    monthly=st.integers(0, 3),
    yearly=st.integers(0, 2),
    min_age=st.integers(0, 3 * 24 * 60).map(lambda m: m * MINUTE),
)


# minutes after BASE: anywhere, or on a few instants that make ties and DST changes likely
# (Lord Howe 2026-10-03T15:30Z, Berlin 2026-10-25T01:00Z, New York 2026-11-01T06:00Z)
SPECIAL = [0, 60, 1440, 3810, 34620 - 30, 34620, 34620 + 30, 45000 - 30, 45000, 45000 + 30]
specs = st.tuples(
    st.integers(0, SPAN) | st.sampled_from(SPECIAL),
    st.sampled_from(WRITTEN_IN),
    st.sampled_from([True, True, True, False]),  # owned
    st.sampled_from([None, None, None, None, None, "kids", ""]),  # pinned
)


def make(name: str, spec: tuple[int, dt.tzinfo, bool, str | None]) -> Candidate:
    minute, written_in, own, pinned = spec
    return Candidate(name, (BASE + minute * MINUTE).astimezone(written_in), own, pinned)


histories = (st.lists(specs, max_size=8) | st.lists(specs, min_size=20, max_size=45)).map(
    lambda specs: [make(f"s{k:02d}", spec) for k, spec in enumerate(specs)]
)
nows = st.integers(0, SPAN).map(lambda m: BASE + m * MINUTE)


def by_name(verdicts: Sequence[Verdict]) -> dict[str, Verdict]:
    return {v.name: v for v in verdicts}


@settings(max_examples=150, deadline=None)
@given(retentions, histories, nows, st.sampled_from(ZONES))
def test_never_deletes_what_must_stay(
    retention: Retention, candidates: list[Candidate], now: dt.datetime, zone: str
) -> None:
    verdicts = evaluate(retention, candidates, now, zone)
    assert [v.name for v in verdicts] == [c.name for c in candidates]
    mine = [c for c in candidates if c.owned]
    newest = max(mine, key=lambda c: (c.created.astimezone(UTC), c.name)) if mine else None
    for c, v in zip(candidates, verdicts, strict=True):
        if not v.keep:
            assert v.reasons == (NO_RULE,)
            assert c.owned
            assert c.pinned is None
            assert c.created <= now - retention.min_age  # not younger, not in the future
            assert c is not newest  # the newest owned snapshot, future or not, stays
        else:
            assert v.reasons
            assert NO_RULE not in v.reasons
        if not c.owned:
            assert v.reasons[0] == FOREIGN
        if c.created > now:
            assert v.keep
        if c.pinned is not None:
            assert (f"pinned: {c.pinned}" if c.pinned else "pinned") in v.reasons


@settings(max_examples=150, deadline=None)
@given(retentions, histories, nows, st.sampled_from(ZONES))
def test_idempotent(
    retention: Retention, candidates: list[Candidate], now: dt.datetime, zone: str
) -> None:
    verdicts = evaluate(retention, candidates, now, zone)
    survivors = [c for c, v in zip(candidates, verdicts, strict=True) if v.keep]
    again = evaluate(retention, survivors, now, zone)
    assert all(v.keep for v in again)
    # and for the same reasons
    assert again == [v for v in verdicts if v.keep]


@settings(max_examples=100, deadline=None)
@given(
    retentions,
    histories,
    nows,
    st.sampled_from(ZONES),
    specs.map(lambda spec: make("intruder", spec)),
    st.data(),
)
def test_foreign_snapshot_changes_nothing(
    retention: Retention,
    candidates: list[Candidate],
    now: dt.datetime,
    zone: str,
    intruder: Candidate,
    data: st.DataObject,
) -> None:
    foreign = Candidate(intruder.name, intruder.created, False, intruder.pinned)
    where = data.draw(st.integers(0, len(candidates)))
    before = evaluate(retention, candidates, now, zone)
    after = evaluate(retention, [*candidates[:where], foreign, *candidates[where:]], now, zone)
    assert after.pop(where) == Verdict("intruder", True, foreign_reasons(foreign))
    assert after == before


def foreign_reasons(foreign: Candidate) -> tuple[str, ...]:
    if foreign.pinned is None:
        return (FOREIGN,)
    return (FOREIGN, f"pinned: {foreign.pinned}" if foreign.pinned else "pinned")


@settings(max_examples=75, deadline=None)
@given(retentions, histories, nows, st.sampled_from(ZONES), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(
    retention: Retention,
    candidates: list[Candidate],
    now: dt.datetime,
    zone: str,
    rnd: random.Random,
) -> None:
    shuffled = list(candidates)
    rnd.shuffle(shuffled)
    assert by_name(evaluate(retention, shuffled, now, zone)) == by_name(
        evaluate(retention, candidates, now, zone)
    )


@settings(max_examples=100, deadline=None)
@given(
    retentions,
    histories,
    nows,
    st.sampled_from(ZONES),
    st.sampled_from([*PERIODS, "keep_last", "min_age"]),
)
def test_a_larger_rule_keeps_at_least_as_much(
    retention: Retention, candidates: list[Candidate], now: dt.datetime, zone: str, field: str
) -> None:
    bigger = getattr(retention, field) + (HOUR if field == "min_age" else 1)
    larger = dataclasses.replace(retention, **{field: bigger})
    fewer = set(to_delete(larger, candidates, now, zone))
    assert fewer <= set(to_delete(retention, candidates, now, zone))


def model_kept(
    retention: Retention, candidates: Sequence[Candidate], now: dt.datetime, zone_name: str
) -> set[int]:
    """The rules written the slow, obvious way: label every snapshot with its period."""
    zone = zoneinfo.ZoneInfo(zone_name)
    kept = {
        i
        for i, c in enumerate(candidates)
        if not c.owned
        or c.pinned is not None
        or c.created > now - retention.min_age
        or c.created > now
    }
    # sorted in UTC: Python never finds datetimes of two zones equal in a repeated hour
    history = sorted(
        (
            (c.created.astimezone(UTC), c.name, i)
            for i, c in enumerate(candidates)
            if c.owned and c.created <= now
        ),
        reverse=True,
    )
    kept.update(i for _, _, i in history[: max(retention.keep_last, 1)])
    for kind in PERIODS:
        newest_of: dict[Any, int] = {}
        for created, _, i in history:
            local = created.astimezone(zone)
            key: Any
            if kind == "hourly":  # the instant the local hour began
                key = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
            elif kind == "daily":
                key = local.date()
            elif kind == "weekly":
                key = local.isocalendar()[:2]
            elif kind == "monthly":
                key = (local.year, local.month)
            else:
                key = local.year
            newest_of.setdefault(key, i)
        periods = sorted(newest_of, reverse=True)
        kept.update(newest_of[p] for p in periods[: getattr(retention, kind)])
    return kept


@settings(max_examples=250, deadline=None)
@given(retentions, histories, nows, st.sampled_from(MODEL_ZONES))
def test_matches_the_model(
    retention: Retention, candidates: list[Candidate], now: dt.datetime, zone: str
) -> None:
    verdicts = evaluate(retention, candidates, now, zone)
    assert {i for i, v in enumerate(verdicts) if v.keep} == model_kept(
        retention, candidates, now, zone
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 400 * 24), min_size=50, max_size=300),
    st.sampled_from(MODEL_ZONES),
    st.integers(1, 48),
)
def test_dense_hourly_histories_match_the_model(hours: list[int], zone: str, count: int) -> None:
    """Long histories, where the memoised period boundaries are reused a lot."""
    candidates = [
        Candidate(f"h{k}", BASE + h * HOUR + (k % 7) * 7 * MINUTE, True)
        for k, h in enumerate(hours)
    ]
    retention = Retention(hourly=count, daily=count, weekly=count // 4, monthly=count // 8)
    now = BASE + 401 * 24 * HOUR
    verdicts = evaluate(retention, candidates, now, zone)
    assert {i for i, v in enumerate(verdicts) if v.keep} == model_kept(
        retention, candidates, now, zone
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 40 * 24 * 4), min_size=1, max_size=120),
    retentions,
    st.sampled_from(ZONES),
    st.sampled_from(["oldest first", "newest first", "shuffled"]),
    st.randoms(use_true_random=False),
)
def test_plain_histories_in_any_listing_order_match_the_general_path(
    quarters: list[int], retention: Retention, zone: str, listing: str, rnd: random.Random
) -> None:
    """Owned, unpinned UTC histories skip the general passes (and, listed oldest or
    newest first with no ties, the sort): their verdicts and reasons must be exactly
    those of the same instants written in another zone, which take the general path."""
    names = [f"s{k:03d}" for k in range(len(quarters))]
    rnd.shuffle(names)  # equal instants get their names in any order
    candidates = [
        Candidate(name, BASE + q * 15 * MINUTE, True)
        for name, q in zip(names, quarters, strict=True)
    ]
    if listing == "shuffled":
        rnd.shuffle(candidates)
    else:
        candidates.sort(key=lambda c: c.created, reverse=listing == "newest first")
    now = BASE + 30 * 24 * HOUR  # some snapshots lie in the future
    elsewhere = [
        Candidate(c.name, c.created.astimezone(zoneinfo.ZoneInfo(BERLIN)), True) for c in candidates
    ]
    assert evaluate(retention, candidates, now, zone) == evaluate(retention, elsewhere, now, zone)
