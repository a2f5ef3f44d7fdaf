"""When snapshots are due: cron expressions and intervals in a policy's time zone.

Pure: no clock reads, no randomness, no I/O of its own (zoneinfo reads the IANA
database once per zone).  "Now" is always an argument, every datetime taken must be
aware (a naive one raises ValueError) and every datetime returned is in UTC.

A schedule is either ``cron`` or ``every``:

``cron``
    Five fields, ``minute hour day-of-month month day-of-week``, with Debian cron's
    syntax: numbers, ``*``, ranges ``a-b``, steps ``*/n`` ``a-b/n`` ``a/n``, lists
    ``a,b``, month and weekday names (``jan``..``dec``, ``sun``..``sat``, any case;
    weekday 0 and 7 are Sunday), and the aliases ``@hourly``, ``@daily``
    (``@midnight``), ``@weekly``, ``@monthly``, ``@yearly`` (``@annually``).  When
    both day fields are restricted a day matches either; when either starts with
    ``*`` both must match (as in Debian cron).  ``@reboot``, seconds fields and
    non-standard extensions (``L``, ``W``, ``#``, ``?``) are rejected.  Parsing and
    day matching are done by cronsim; the expression is evaluated in local wall time
    of the schedule's IANA ``timezone`` and each wall time is then mapped to real
    instants by the DST rules below.

``every``
    A fixed interval of at least one second (minutes or more in practice).  Slots are the instants
    ``1970-01-01T00:00:00Z + k * every``: anchored on the Unix epoch in UTC, so they
    are the same on every host and DST never moves them (``timezone`` is ignored).

DST rules (those of Vixie/Debian cron, stated for the schedule's own zone):

(a) A wall time that does not exist (02:30 on a spring-forward night) still runs
    once that day, at the first instant after the gap (03:00 new time).  Several
    such wall times, and a wall time that exists right at the end of the gap,
    collapse into that one run.  This holds for every expression whose hour field
    names hours (does not start with ``*``).
(b) A *fixed-time* job -- one minute per hour (the minute field matches exactly one
    minute) and named hours -- whose wall time occurs twice (fall back) runs once,
    at the first occurrence.
(c) Jobs that run more often than hourly (the minute field matches several minutes)
    or have a wildcard hour (the hour field starts with ``*``: ``0 * * * *``,
    ``*/15 * * * *``, ``0 */2 * * *``) follow real elapsed time: on fall-back
    nights the repeated wall times run again (they are different real instants),
    and a wildcard-hour job simply has no runs inside the spring-forward gap (the
    clock never shows them; the real hour that replaced them has its own run).

So ``0 * * * *`` runs once per real hour all year (8760 times in 2026 in any zone
with whole-hour offsets), ``30 2 * * *`` once per local day (365 times), and no
instant is ever produced twice.  Differences from Debian's code, on purpose: it
decides "fixed-time" by the minute field not starting with ``*``, this module by the
minute field matching a single minute (``0,30 2 * * *`` therefore runs four times on
a fall-back night, as rule (c) asks); and Debian skips a named-hour job with a
wildcard minute (``*/15 2 * * *``) on spring-forward day, where rule (a) runs it once.

Catch-up (``decide``): a slot is on time when it is at most ``GRACE`` (60 s) plus
the schedule's ``jitter`` old, since the caller deliberately starts runs up to
``jitter`` after their slot.  Older slots are "missed": with ``catch_up`` one run
serves the latest of them (never a burst); without it they are skipped.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

from cronsim import CronSim, CronSimError

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MIN_EVERY = dt.timedelta(seconds=1)  # the daemon's tests fire every few seconds
GRACE = dt.timedelta(seconds=60)  # how old a slot may be and still be "now"

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_ONE_DAY = dt.timedelta(days=1)
_ONE_SECOND = dt.timedelta(seconds=1)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# name, lowest, highest, names, value of the first name
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...], int], ...] = (
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("day-of-month", 1, 31, (), 0),
    ("month", 1, 12, _MONTHS, 1),
    ("day-of-week", 0, 7, _DAYS, 0),
)
_DURATION = re.compile(
    r"(?:([0-9]+)w)?\s*(?:([0-9]+)d)?\s*(?:([0-9]+)h)?\s*(?:([0-9]+)m)?\s*(?:([0-9]+)s)?"
)
_DURATION_UNITS = (604800, 86400, 3600, 60, 1)
_DURATION_HELP = (
    "write whole numbers with units w, d, h, m, s (largest first), "
    "e.g. '30s', '15m', '1h', '1h30m', '2d', '1w'"
)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A policy's ``schedule:`` block.  Exactly one of ``cron`` and ``every`` is set."""

    cron: str | None = None
    every: dt.timedelta | None = None
    timezone: str = "UTC"
    jitter: dt.timedelta = dt.timedelta(0)
    catch_up: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``decide`` concluded at one moment.

    ``due``: take a snapshot now.  ``slot``: the scheduled instant the run serves (the
    latest slot in ``(last_slot, now]``), None when not due.  ``missed``: slots in
    ``(last_slot, now]`` that this decision does not serve (0 for an on-time run).
    ``next_slot``: the first scheduled instant after ``now`` (after ``last_slot``
    when the clock went backwards).  ``reason``: a sentence for logs.
    """

    due: bool
    slot: dt.datetime | None
    missed: int
    next_slot: dt.datetime
    reason: str


# --- validation helpers for the policy loader ---------------------------------------


def check_cron(expr: str) -> str | None:
    """None when ``expr`` is a valid cron expression, else what is wrong with it."""
    text = expr.strip()
    if not text:
        return "the cron expression is empty"
    if text.startswith("@"):
        if text.lower() in ALIASES:
            return None
        known = ", ".join(ALIASES)
        return f"unknown cron alias {text!r}; known aliases: {known}"
    return _check_fields(expr, text.split()) or _check_matches(expr, text)


def _check_matches(expr: str, text: str) -> str | None:
    """Let cronsim judge what the field checks cannot: a day no month has."""
    try:
        next(CronSim(text, dt.datetime(2000, 1, 1)))  # naive: cronsim walks wall time
    except CronSimError as exc:
        if "day-of-month" in str(exc):
            fields = text.split()
            return (
                f"cron expression {expr!r}: day-of-month field {fields[2]!r}: no month "
                f"in the month field {fields[3]!r} has that day"
            )
        return f"cron expression {expr!r}: {exc}"
    except StopIteration:
        return f"cron expression {expr!r} never matches"
    return None


def _check_fields(expr: str, fields: list[str]) -> str | None:
    if len(fields) != len(_FIELDS):
        return (
            f"cron expression {expr!r} has {len(fields)} fields; it needs 5: "
            "minute hour day-of-month month day-of-week"
        )
    for value, (name, low, high, names, first) in zip(fields, _FIELDS, strict=True):
        problem = _check_field(value, low, high, names, first)
        if problem is not None:
            return f"cron expression {expr!r}: {name} field {value!r}: {problem}"
    return None


def _check_field(text: str, low: int, high: int, names: tuple[str, ...], first: int) -> str | None:
    for item in text.split(","):
        if not item:
            return "empty item in the list"
        span, slash, step = item.partition("/")
        if slash and not (step.isascii() and step.isdigit() and int(step) > 0):
            return f"step {step!r} must be a whole number of at least 1"
        if span == "*":
            continue
        start, dash, end = span.partition("-")
        values: list[int] = []
        for part in (start, end) if dash else (start,):
            value = _field_value(part, low, high, names, first)
            if isinstance(value, str):
                return value
            values.append(value)
        if len(values) == 2 and values[0] > values[1]:
            return f"range {span!r} runs backwards"
    return None


def _field_value(part: str, low: int, high: int, names: tuple[str, ...], first: int) -> int | str:
    if part.isascii() and part.isdigit():
        number = int(part)
        if low <= number <= high:
            return number
        return f"{number} is out of range {low}-{high}"
    if part.lower() in names:
        return names.index(part.lower()) + first
    if not part:
        return "a number is missing"
    if names:
        return f"{part!r} is neither a number nor a name ({names[0]}..{names[-1]})"
    return f"{part!r} is not a number"


def check_timezone(name: str) -> str | None:
    """None when ``name`` is an IANA time zone this host knows, else what is wrong."""
    if not name.strip():
        return "the time zone name is empty"
    if name == "localtime":
        return "'localtime' depends on the host; name the zone, e.g. 'Europe/Berlin'"
    try:
        zoneinfo.ZoneInfo(name)
    except zoneinfo.ZoneInfoNotFoundError:
        return f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
    except (ValueError, OSError):
        return f"{name!r} is not a time zone name; use one such as 'Europe/Berlin' or 'UTC'"
    return None


def utc_text(epoch: int) -> str:
    """An instant as people read it in logs and tables: 2026-11-25 03:00:00Z."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: int) -> str:
    """A short human duration: 45s, 12m, 2h, 2h13m, 3d, 3d4h."""
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 172800:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(seconds // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def parse_duration(text: str) -> dt.timedelta:
    """``"30s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1w"``, ``"1h30m"`` as a timedelta.

    Units are w, d, h, m, s (lower case), each at most once, largest first; spaces
    between parts are allowed.  A bare number is rejected (seconds? minutes?), and so
    are signs and fractions.  Zero ("0s") is a valid duration.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty duration; {_DURATION_HELP}")
    if stripped.isascii() and stripped.isdigit():
        raise ValueError(
            f"duration {text!r} has no unit; write '{stripped}s' for seconds or "
            f"'{stripped}m' for minutes"
        )
    match = _DURATION.fullmatch(stripped)
    if match is None:
        raise ValueError(f"invalid duration {text!r}; {_DURATION_HELP}")
    seconds = sum(
        int(count) * unit
        for count, unit in zip(match.groups(), _DURATION_UNITS, strict=True)
        if count is not None
    )
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def check_interval(every: dt.timedelta) -> str | None:
    """None when ``every`` is a usable interval (at least one second), else why not."""
    if every < MIN_EVERY:
        return f"every: {every} is too short; the shortest interval is 1 second"
    return None


def check_schedule(schedule: Schedule) -> str | None:
    """None when the functions below accept ``schedule``, else the first problem."""
    cron, every = schedule.cron, schedule.every
    if cron is not None and every is None:
        problem = check_cron(cron)
    elif every is not None and cron is None:
        problem = check_interval(every)
        if problem is None and schedule.jitter >= every:
            problem = f"jitter {schedule.jitter} must be shorter than every: {every}"
    else:
        problem = "a schedule needs exactly one of cron and every"
    if problem is None and schedule.jitter < dt.timedelta(0):
        problem = "jitter must not be negative"
    return problem or check_timezone(schedule.timezone)


# --- compiled schedules ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Every:
    every: dt.timedelta


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a cheap cache key
class _Cron:
    expr: str  # five fields, aliases expanded
    zone: zoneinfo.ZoneInfo
    times: tuple[dt.time, ...]  # the wall times of every matching day
    first_only: bool  # rule (b): an ambiguous wall time runs at its first occurrence only
    gap_runs: bool  # rule (a): a nonexistent wall time runs at the end of the gap


@functools.lru_cache(maxsize=256)
def _compile(schedule: Schedule) -> _Every | _Cron:
    problem = check_schedule(schedule)
    if problem is not None:
        raise ValueError(problem)
    if schedule.every is not None:
        return _Every(schedule.every)
    text = (schedule.cron or "").strip()  # check_schedule saw that it is set
    expr = ALIASES.get(text.lower(), text)
    times = _times_of_day(expr)
    wildcard_hour = expr.split()[1].startswith("*")
    several_per_hour = len(times) > len({t.hour for t in times})
    return _Cron(
        expr=expr,
        zone=zoneinfo.ZoneInfo(schedule.timezone),
        times=times,
        first_only=not wildcard_hour and not several_per_hour,
        gap_runs=not wildcard_hour,
    )


def _times_of_day(expr: str) -> tuple[dt.time, ...]:
    """The wall times of day of a matching day: the same on every day that matches."""
    walls = CronSim(expr, dt.datetime(1999, 12, 31, 23, 59, 59))  # naive: wall time
    wall = next(walls)
    day = wall.date()
    times: list[dt.time] = []
    while wall.date() == day:
        times.append(wall.time())
        wall = next(walls)
    return tuple(times)


# A day of a minute-by-minute cron is 1440 datetimes (about 80 KB): keep few days.
@functools.lru_cache(maxsize=128)
def _day(cron: _Cron, day: dt.date) -> tuple[dt.date, tuple[dt.datetime, ...]] | None:
    """The first local date >= ``day`` that matches, with its instants (UTC, sorted).

    None when nothing matches for the next 50 years (cronsim's horizon).
    """
    try:
        start = dt.datetime.combine(day, dt.time()) - _ONE_SECOND
        match = next(CronSim(cron.expr, start)).date()
    except (StopIteration, OverflowError):
        return None
    zone = cron.zone
    instants: set[dt.datetime] = set()
    for time in cron.times:
        instants.update(_resolve(dt.datetime.combine(match, time), zone, cron))
    return match, tuple(sorted(instants))


def _resolve(wall: dt.datetime, zone: zoneinfo.ZoneInfo, cron: _Cron) -> list[dt.datetime]:
    """The instants at which a naive local wall time runs, by the DST rules."""
    first = wall.replace(tzinfo=zone).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:  # exists once
        return [first]
    if first < second:  # fall back: fold=0 is the earlier occurrence
        return [first] if cron.first_only else [first, second]
    # Spring forward: the wall time does not exist.  fold=1 read it with the new
    # offset (an instant before the change), fold=0 with the old (one at or after it).
    return [_gap_end(zone, second, first)] if cron.gap_runs else []


def _gap_end(zone: zoneinfo.ZoneInfo, before: dt.datetime, after: dt.datetime) -> dt.datetime:
    """The instant the clock jumped, between ``before`` and ``after`` (whole seconds)."""
    new_offset = after.astimezone(zone).utcoffset()
    while after - before > _ONE_SECOND:
        middle = (before + (after - before) / 2).replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == new_offset:
            after = middle
        else:
            before = middle
    return after


# --- iterating scheduled instants ------------------------------------------------------


def _instants(compiled: _Every | _Cron, after: dt.datetime) -> Iterator[dt.datetime]:
    """Every scheduled instant > ``after`` (UTC), ascending, without end."""
    if isinstance(compiled, _Every):
        every = compiled.every
        slot = EPOCH + ((after - EPOCH) // every + 1) * every
        while True:
            yield slot
            slot += every
    zone = compiled.zone
    # The day before too: a wall time of that day may still lie ahead in odd zones.
    day = after.astimezone(zone).date()
    if day > dt.date.min:
        day -= _ONE_DAY
    last = after
    while True:
        found = _day(compiled, day)
        if found is None:
            return
        match, instants = found
        for instant in instants[bisect.bisect_right(instants, last) :]:
            yield instant
            last = instant
        if match == dt.date.max:
            return
        day = match + _ONE_DAY


def _window(
    compiled: _Every | _Cron, after: dt.datetime, until: dt.datetime
) -> tuple[int, dt.datetime | None, dt.datetime]:
    """How many instants lie in ``(after, until]``, the latest of them, the first after.

    Works a day at a time (or by arithmetic), so a long window costs little.
    """
    if isinstance(compiled, _Every):
        every = compiled.every
        low = (after - EPOCH) // every
        high = max(low, (until - EPOCH) // every)
        latest = EPOCH + high * every if high > low else None
        return high - low, latest, EPOCH + (high + 1) * every
    zone = compiled.zone
    day = after.astimezone(zone).date()
    if day > dt.date.min:
        day -= _ONE_DAY  # as in _instants
    floor, count, newest = after, 0, None
    while True:
        found = _day(compiled, day)
        if found is None:
            raise ValueError(f"the schedule has no time after {_iso(max(after, until))}")
        match, instants = found
        start = bisect.bisect_right(instants, floor)
        end = max(start, bisect.bisect_right(instants, until, lo=start))
        if end > start:
            count += end - start
            newest = instants[end - 1]
        if end < len(instants):
            return count, newest, instants[end]
        if instants:
            floor = max(floor, instants[-1])
        if match == dt.date.max:
            raise ValueError(f"the schedule has no time after {_iso(max(after, until))}")
        day = match + _ONE_DAY


def _next(compiled: _Every | _Cron, after: dt.datetime) -> dt.datetime:
    return _window(compiled, after, after)[2]


def _between(
    compiled: _Every | _Cron, after: dt.datetime, until: dt.datetime
) -> Iterator[dt.datetime]:
    for instant in _instants(compiled, after):
        if instant > until:
            return
        yield instant


def _utc(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _iso(instant: dt.datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- public API ------------------------------------------------------------------------


def due_times(schedule: Schedule, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
    """Every scheduled instant t with ``after < t <= until``, in UTC, ascending, unique.

    Raises ValueError (at the call, not on iteration) for an invalid schedule or a
    naive datetime.
    """
    compiled = _compile(schedule)
    return _between(compiled, _utc(after, "after"), _utc(until, "until"))


def latest_slot(schedule: Schedule, after: dt.datetime, until: dt.datetime) -> dt.datetime | None:
    """The latest scheduled instant t with ``after < t <= until``, or None if there is none."""
    if until <= after:
        return None
    return _window(_compile(schedule), _utc(after, "after"), _utc(until, "until"))[1]


def next_due(schedule: Schedule, after: dt.datetime) -> dt.datetime:
    """The first scheduled instant strictly after ``after``, in UTC."""
    return _next(_compile(schedule), _utc(after, "after"))


def jitter_for(schedule: Schedule, key: str, slot: dt.datetime) -> dt.timedelta:
    """A stable delay in ``[0, schedule.jitter)`` for one run (zero without jitter).

    Derived from SHA-256 of ``key`` (e.g. "policy/domain") and the slot's UTC instant,
    so each (policy, domain, slot) gets its own spread-out delay, the same every time.
    """
    instant = _utc(slot, "slot")
    if schedule.jitter < dt.timedelta(0):
        raise ValueError("jitter must not be negative")
    span = schedule.jitter // dt.timedelta(microseconds=1)
    if span == 0:
        return dt.timedelta(0)
    digest = hashlib.sha256(f"{key}\x00{instant.isoformat()}".encode()).digest()
    return dt.timedelta(microseconds=int.from_bytes(digest[:8], "big") % span)


def decide(schedule: Schedule, last_slot: dt.datetime | None, now: dt.datetime) -> Decision:
    """Whether to take a snapshot at ``now``, given the slot the last run served.

    * ``last_slot`` None (never run): not due; ``next_slot`` is the first slot after now.
    * ``now`` before ``last_slot`` (the clock went back): not due; ``next_slot`` is
      the first slot after ``last_slot``, so no slot is served twice.
    * No slot in ``(last_slot, now]``: not due.
    * Otherwise let S be the latest slot in ``(last_slot, now]``.  Due, serving S, when
      S is on time (at most ``GRACE`` + jitter old) or ``catch_up`` is on: one run
      however many slots passed (a daemon that was down, a clock stepped forward).
      With ``catch_up`` off and S older than that: not due, all those slots missed.

    The caller delays each run by ``jitter_for`` its slot and records ``slot`` as the
    new ``last_slot`` once the run is taken.
    """
    compiled = _compile(schedule)
    current = _utc(now, "now")
    if last_slot is None:
        upcoming = _next(compiled, current)
        return Decision(False, None, 0, upcoming, f"never run; first slot {_iso(upcoming)}")
    last = _utc(last_slot, "last_slot")
    if current < last:
        upcoming = _next(compiled, last)
        return Decision(
            False,
            None,
            0,
            upcoming,
            f"clock is {last - current} behind the last served slot {_iso(last)}; "
            f"next slot {_iso(upcoming)}",
        )
    passed, latest, upcoming = _window(compiled, last, current)
    if latest is None:
        return Decision(False, None, 0, upcoming, f"next slot {_iso(upcoming)}")
    late = current - latest
    older = f"; {passed - 1} earlier slots missed" if passed > 1 else ""
    if late <= GRACE + schedule.jitter:
        return Decision(True, latest, passed - 1, upcoming, f"slot {_iso(latest)} is due{older}")
    if schedule.catch_up:
        return Decision(
            True,
            latest,
            passed - 1,
            upcoming,
            f"catching up slot {_iso(latest)}, {late} late{older}",
        )
    return Decision(
        False,
        None,
        passed,
        upcoming,
        f"missed {passed} runs while down; catch_up is off; next slot {_iso(upcoming)}",
    )
