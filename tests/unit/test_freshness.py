"""The freshness verdict: codes, the status line and perfdata, as Nagios reads them."""

from __future__ import annotations

from snapshotd.core.freshness import Check, Code, unknown, verdict


def check(age: int | None, warn: int | None = 7200, crit: int | None = 21600) -> Check:
    return Check("hourly", "web", age, warn, crit)


def test_each_code() -> None:
    assert check(60).code is Code.OK
    assert check(7201).code is Code.WARNING
    assert check(21601).code is Code.CRITICAL
    assert check(None).code is Code.CRITICAL
    assert check(7201, warn=None).code is Code.OK
    assert check(99999, crit=None).code is Code.WARNING


def test_the_worst_stream_decides_and_is_named_first() -> None:
    code, line = verdict(
        [check(60), Check("nightly", "db", 30000, 7200, 21600), Check("x", "app", 8000, 7200, None)]
    )
    assert code is Code.CRITICAL
    status, perf = line.split(" | ")
    assert status == (
        "SNAPSHOTD CRITICAL - db/nightly: newest is 8h20m old (limit 6h), "
        "app/x: newest is 2h13m old (limit 2h)"
    )
    assert perf == (
        "'web/hourly'=60s;7200;21600;0; 'db/nightly'=30000s;7200;21600;0; 'app/x'=8000s;7200;;0;"
    )


def test_all_fresh_and_nothing_monitored() -> None:
    assert verdict([check(5)]) == (
        Code.OK,
        "SNAPSHOTD OK - 1 snapshot streams fresh | 'web/hourly'=5s;7200;21600;0;",
    )
    code, line = verdict([])
    assert code is Code.UNKNOWN
    assert line.startswith("SNAPSHOTD UNKNOWN - ")
    assert unknown("why") == (Code.UNKNOWN, "SNAPSHOTD UNKNOWN - why")


def test_a_missing_snapshot_has_unknown_perfdata() -> None:
    code, line = verdict([check(None)])
    assert code is Code.CRITICAL
    assert "web/hourly: no snapshot" in line
    assert line.endswith("'web/hourly'=U;7200;21600;0;")
