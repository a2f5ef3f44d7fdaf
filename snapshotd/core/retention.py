"""Which snapshots to keep: small rules that must all agree before anything is deleted.

Pure: inputs and outputs are plain values; the current time is an argument, and every
datetime must be aware.  (The only outside state read is the IANA time zone database,
through :mod:`zoneinfo`.)

In the style of zrepl's pruning rules, each rule is a small function that looks at the
history of one domain and says which snapshots *it* keeps and why.  A snapshot is
deleted only when no rule keeps it, so adding a rule can only ever keep more.

The candidates of one :func:`evaluate` call are the snapshots of one domain:

* Foreign snapshots (``owned=False``: not made by this policy, decided by the caller
  from its catalog) are never candidates.  They are reported as kept, "not made by
  this policy", and take no part in any rule: adding one changes no other verdict.
* Snapshots created after ``now`` (the clock was stepped back) are kept, "created in
  the future", and take no part in the counting rules either, so clock confusion can
  only ever keep more.
* Everything else owned is the *history*, which the rules below look at.  Pinned
  snapshots (the caller's reason never to delete one, e.g. "has children that still
  need it") are part of the history like any other (they count for ``keep_last`` and
  the periods) and are kept whatever the rules say.

The rules, in the order their reasons are listed in a verdict:

``pinned``
    a pinned snapshot is kept: "pinned: <the caller's reason>" (just "pinned" if the
    reason is empty).
newest
    the newest snapshot of the history is always kept: "newest snapshot of this
    policy".  With the future ones kept anyway, the newest owned snapshot always is.
``keep_last N``
    the newest N of the history: "keep_last 3 (2nd newest)".
``hourly``/``daily``/``weekly``/``monthly``/``yearly N``
    the newest snapshot of each of the last N periods *that have one* (as sanoid and
    zrepl count: a gap of empty periods does not use up the budget): "daily: newest
    of 2026-11-24".  Periods are computed in the policy's time zone: a day runs from
    local midnight to the next local midnight, so it is 23 or 25 hours long across a
    DST change; weeks are ISO weeks starting on Monday ("2026-W48", with the ISO
    year); an hour is a wall-clock hour *with its UTC offset*, so the hour repeated
    when DST ends is two periods ("2026-10-25 02:00+02:00", "... 02:00+01:00") and
    the hour skipped when it starts is none.
``min_age``
    nothing younger than min_age is deleted (``created > now - min_age``; a snapshot
    exactly min_age old is no longer protected): "younger than min_age 1h".

Ordering: "newer" means a later ``created`` instant (time zones of the inputs do not
matter); snapshots created at the same instant are ordered by name, the greater name
counting as the newer, and identical names (libvirt does not allow them within a
domain) by their position in the input.  The result does not otherwise depend on
the order of the input.

A policy file without a ``retention:`` block never prunes anything: the caller simply
does not call :func:`evaluate` (``Policy.retention`` is None).  A block whose fields are
all zero would keep nothing but the newest snapshot; the policy loader rejects it
(:attr:`Retention.is_empty`), so it only exists when code builds one.

Cost: a few linear passes and one sort of the candidates, then O(log n) per kept
period, so O(n log n) per domain; period boundaries are memoised per time zone,
because every domain of a policy asks about the same hours and days.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import operator
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple, cast

FOREIGN = "not made by this policy"
FUTURE = "created in the future"
NEWEST = "newest snapshot of this policy"
NO_RULE = "no rule keeps it"

COUNT_FIELDS = ("keep_last", "hourly", "daily", "weekly", "monthly", "yearly")
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True, slots=True)
class Retention:
    """A policy's ``retention:`` block.  Counts of 0 mean the rule keeps nothing."""

    keep_last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    min_age: dt.timedelta = dt.timedelta(0)

    def __post_init__(self) -> None:
        for name in COUNT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"retention {name} must be a whole number >= 0, not {value!r}")
        if self.min_age < dt.timedelta(0):
            raise ValueError(f"retention min_age must not be negative, not {self.min_age}")

    @property
    def is_empty(self) -> bool:
        """Every field is zero: such a block would prune all but the newest snapshot.

        The loader rejects it (say: give at least one count or min_age, or leave the
        block out to never prune).  A block with only min_age is not empty.
        """
        return self.min_age == dt.timedelta(0) and not any(
            getattr(self, name) for name in COUNT_FIELDS
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One existing snapshot of a domain, as the caller knows it."""

    name: str
    created: dt.datetime  # aware
    owned: bool  # snapshotd created it under this very policy (from its catalog)
    pinned: str | None = None  # why it must never be deleted, or None


class Verdict(NamedTuple):
    """What happens to one candidate and why.

    A named tuple rather than a dataclass: one is made per snapshot per domain on
    every run, and a frozen dataclass costs several times as much to build.
    """

    name: str
    keep: bool
    reasons: tuple[str, ...]  # every rule that keeps it; (NO_RULE,) for a deletion


# What the rules keep: position in the history -> every reason, in the rules' order.
_Reasons = dict[int, list[str]]

_UTC = dt.UTC
_DELETE = (NO_RULE,)
_new_verdict = tuple.__new__


def evaluate(
    retention: Retention, candidates: Sequence[Candidate], now: dt.datetime, timezone: str
) -> list[Verdict]:
    """One verdict per candidate, in the input's order.

    ``timezone`` is the policy's IANA time zone, in which the periods are computed.
    Raises ValueError for a naive datetime or an unknown time zone.
    """
    now = _as_utc(now, None)
    _zone(timezone)  # refuse an unknown zone even when no period rule needs it
    kept: dict[int, list[str]] = {}  # position in the input -> why it is kept
    history, order = _history(candidates, now, kept)
    names = [c.name for c in candidates]
    verdicts = _deletions(names)  # then the kept ones put in their places
    if history:
        # Each rule adds its reasons to the positions in the history it keeps.
        by_pos: _Reasons = {len(history) - 1: [NEWEST]}
        _keep_last(retention.keep_last, history, by_pos)
        for kind in PERIODS:
            _periodic(kind, getattr(retention, kind), history, timezone, by_pos)
        _younger(retention.min_age, history, now, by_pos)
        for pos, reasons in by_pos.items():
            index = order[pos]
            if (earlier := kept.pop(index, None)) is not None:  # a pin comes first
                reasons[:0] = earlier
            verdicts[index] = _kept_verdict(names[index], reasons)
    for index, reasons in kept.items():
        verdicts[index] = _kept_verdict(names[index], reasons)
    return verdicts


# Verdicts already made.  Snapshot names are the same across the domains of a policy
# (the default name has the policy and the time in it, not the domain), and so are
# most reasons, so a scheduling pass makes few distinct verdicts, and building a named
# tuple costs several times what finding one does.  A verdict is immutable, so
# sharing one is safe.  Each memo is bounded: when full, it starts afresh.
_DELETED: dict[str, Verdict] = {}  # name -> its deletion verdict
_KEPT: dict[tuple[str, bool, tuple[str, ...]], Verdict] = {}  # each verdict is its own key
_MEMO_VERDICTS = 8192


def _deletions(names: list[str]) -> list[Verdict]:
    """A deletion verdict for each name."""
    memo = _DELETED
    if len(memo) >= _MEMO_VERDICTS:
        memo.clear()
    found = list(map(memo.get, names))
    if None in found:
        for index, verdict in enumerate(found):
            if verdict is None:
                name = names[index]
                found[index] = memo[name] = _new_verdict(Verdict, (name, False, _DELETE))
    return cast("list[Verdict]", found)


def _kept_verdict(name: str, reasons: list[str]) -> Verdict:
    fields = (name, True, tuple(reasons))
    verdict = _KEPT.get(fields)
    if verdict is None:
        if len(_KEPT) >= _MEMO_VERDICTS:
            _KEPT.clear()
        verdict = _KEPT[fields] = _new_verdict(Verdict, fields)
    return verdict


def to_delete(
    retention: Retention, candidates: Sequence[Candidate], now: dt.datetime, timezone: str
) -> list[str]:
    """The names of the candidates :func:`evaluate` deletes, oldest first."""
    verdicts = evaluate(retention, candidates, now, timezone)
    doomed = [
        (_as_utc(c.created, c.name), c.name, i)
        for i, (c, v) in enumerate(zip(candidates, verdicts, strict=True))
        if not v.keep
    ]
    doomed.sort()
    return [name for _, name, _ in doomed]


def describe(retention: Retention) -> str:
    """A one-line summary for plan and check output: "keep_last 3, daily 7, min_age 1h"."""
    parts = [f"{name} {n}" for name in COUNT_FIELDS if (n := getattr(retention, name))]
    if retention.min_age:
        parts.append(f"min_age {format_duration(retention.min_age)}")
    return ", ".join(parts) if parts else "newest only"


def format_duration(delta: dt.timedelta) -> str:
    """A compact duration: "1d12h", "30m", "1m30s", "0.5s", "0s"."""
    seconds = delta.days * 86400 + delta.seconds
    sign = "-" if seconds < 0 else ""
    if sign:
        return sign + format_duration(-delta)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "".join(f"{v}{unit}" for v, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if v)
    if delta.microseconds:
        out += f"{secs}.{delta.microseconds:06d}".rstrip("0") + "s"
    elif secs or not out:
        out += f"{secs}s"
    return out


# --- the history -------------------------------------------------------------------


def _history(
    candidates: Sequence[Candidate], now: dt.datetime, kept: dict[int, list[str]]
) -> tuple[list[dt.datetime], Sequence[int]]:
    """The owned, not-future candidates, oldest first; records foreign/future/pinned.

    Returns their creation times in UTC (ascending) and, for each, its position in
    the input.  Written with comprehensions and C-level list methods rather than one
    loop with branches: this is the part of a run that sees every snapshot of every
    domain.  The usual history (every candidate owned, unpinned, its time in UTC)
    skips the general passes of :func:`_sorted_history`, and when it is listed oldest
    or newest first, with no two at the same instant (libvirt's topological order of
    a chain of snapshots is oldest first), it needs no sort and no names either.
    """
    times = [c.created for c in candidates]
    count = len(times)
    order: Sequence[int]
    plain = [c.owned and c.pinned is None and c.created.tzinfo is _UTC for c in candidates]
    if plain.count(True) != count:
        return _sorted_history(candidates, now, kept)
    if all(map(operator.lt, times, islice(times, 1, None))):
        order = range(count)
    elif all(map(operator.gt, times, islice(times, 1, None))):
        times.reverse()
        order = range(count - 1, -1, -1)
    else:
        history = sorted(zip(times, [c.name for c in candidates], range(count), strict=True))
        times = [entry[0] for entry in history]
        order = [entry[2] for entry in history]
    while times and times[-1] > now:
        times.pop()
        kept[order[len(times)]] = [FUTURE]
    return times, order[: len(times)]


def _sorted_history(
    candidates: Sequence[Candidate], now: dt.datetime, kept: dict[int, list[str]]
) -> tuple[list[dt.datetime], list[int]]:
    """:func:`_history` for any input: sorted by (time, name, position)."""
    history = [(c.created, c.name, i) for i, c in enumerate(candidates) if c.owned]
    if [entry[0].tzinfo for entry in history].count(_UTC) != len(history):
        history = [(_as_utc(when, n), n, i) for when, n, i in history]
    history.sort()
    while history and history[-1][0] > now:
        kept[history.pop()[2]] = [FUTURE]
    if len(history) + len(kept) != len(candidates):
        for i, c in enumerate(candidates):
            if not c.owned:
                _as_utc(c.created, c.name)
                kept[i] = [FOREIGN]
    pins = [c.pinned for c in candidates]
    if pins.count(None) != len(pins):
        for i, pin in enumerate(pins):
            if pin is not None:
                kept.setdefault(i, []).append(f"pinned: {pin}" if pin else "pinned")
    return [entry[0] for entry in history], [entry[2] for entry in history]


def _as_utc(when: dt.datetime, snapshot: str | None) -> dt.datetime:
    """``when`` in UTC; ``snapshot`` names whose creation time it is (None: it is now)."""
    if when.tzinfo is None or when.utcoffset() is None:
        what = "now" if snapshot is None else f"snapshot {snapshot!r} created"
        raise ValueError(f"{what}: {when} has no time zone; retention needs aware datetimes")
    return when.astimezone(_UTC)


def _zone(timezone: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None


# --- the rules: each says which positions of the history it keeps, and why -----------


def _add(by_pos: _Reasons, pos: int, why: str) -> None:
    if (reasons := by_pos.get(pos)) is None:
        by_pos[pos] = [why]
    else:
        reasons.append(why)


def _keep_last(count: int, history: Sequence[dt.datetime], by_pos: _Reasons) -> None:
    kept = min(count, len(history))
    newest = len(history) - 1
    reasons = _keep_last_reasons(count, kept)
    for pos, why in zip(range(newest, newest - kept, -1), reasons, strict=True):
        if (earlier := by_pos.get(pos)) is None:
            by_pos[pos] = [why]
        else:
            earlier.append(why)


def _periodic(
    kind: str, count: int, history: Sequence[dt.datetime], timezone: str, by_pos: _Reasons
) -> None:
    """The newest snapshot of each of the last ``count`` periods that have one."""
    if count <= 0:
        return
    memo = _period_memo(timezone, kind)
    memo_get, reasons_at = memo.get, by_pos.get  # looked up once, used per period kept
    pos = len(history) - 1
    while count > 0 and pos >= 0:
        when = history[pos]
        # the 15-minute slice of UTC time that ``when`` lies in
        slice_no = when.toordinal() * 96 + when.hour * 4 + when.minute // 15
        if (period := memo_get(slice_no)) is None:
            if len(memo) >= _MEMO_SLICES:
                memo.clear()
            period = memo[slice_no] = _slice_period(timezone, kind, slice_no)
        start, end, why = period
        if not start <= when < end:  # a zone whose offset is not a multiple of 15 minutes
            start, _, why = _compute_period(timezone, kind, when)
        if (reasons := reasons_at(pos)) is None:
            by_pos[pos] = [why]
        else:
            reasons.append(why)
        count -= 1
        # on to the newest snapshot before this period began
        pos -= 1
        if pos >= 0 and history[pos] >= start:
            pos = bisect.bisect_left(history, start, 0, pos) - 1


def _younger(
    min_age: dt.timedelta, history: Sequence[dt.datetime], now: dt.datetime, by_pos: _Reasons
) -> None:
    if not min_age:
        return
    why = f"younger than min_age {format_duration(min_age)}"
    first = bisect.bisect_right(history, now - min_age)
    for pos in range(len(history) - 1, first - 1, -1):
        _add(by_pos, pos, why)


@functools.lru_cache(maxsize=256)
def _keep_last_reasons(count: int, kept: int) -> tuple[str, ...]:
    """The reasons of ranks 1..kept (newest first) under ``keep_last count``.

    ``kept`` is at most the length of a history, so a huge count costs no more.
    """
    return tuple(f"keep_last {count} ({_ordinal(rank)})" for rank in range(1, kept + 1))


def _ordinal(rank: int) -> str:
    if rank == 1:
        return "newest"
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix} newest"


# --- periods ---------------------------------------------------------------------

# Period boundaries are memoised by 15-minute slice of UTC time: every offset in use
# today is a multiple of 15 minutes, so a slice lies within one period of any kind,
# and the memo is checked against the instant anyway.
_SLICE = dt.timedelta(minutes=15)


_MEMO_SLICES = 16384  # per zone and kind: 170 days of slices; then it starts afresh
_Period = tuple[dt.datetime, dt.datetime, str]


@functools.lru_cache(maxsize=64)
def _period_memo(timezone: str, kind: str) -> dict[int, _Period]:
    """Slice number -> its period (:func:`_slice_period`), filled as slices are asked for.

    A plain dict looked up by an int: this is asked about every period kept of every
    domain, and building an argument tuple for a cache of three arguments costs more.
    """
    return {}


def _slice_period(timezone: str, kind: str, slice_no: int) -> _Period:
    """The period of any instant in the slice (if the slice lies within one period)."""
    day, quarter = divmod(slice_no, 96)
    when = dt.datetime.fromordinal(day).replace(tzinfo=_UTC) + quarter * _SLICE
    return _compute_period(timezone, kind, when)


def _compute_period(
    timezone: str, kind: str, when: dt.datetime
) -> tuple[dt.datetime, dt.datetime, str]:
    """[start, end) in UTC of the period that contains ``when`` (UTC), and the reason."""
    local = when.astimezone(_zone(timezone))
    day = local.date()
    if kind == "hourly":
        start = when - dt.timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
        label = f"{day.isoformat()} {local.hour:02d}:00{_offset(local)}"
        return start, start + dt.timedelta(hours=1), f"hourly: newest of {label}"
    if kind == "daily":
        first, following, label = day, day + dt.timedelta(days=1), day.isoformat()
    elif kind == "weekly":
        first = day - dt.timedelta(days=day.weekday())
        following = first + dt.timedelta(days=7)
        iso = day.isocalendar()
        label = f"{iso.year:04d}-W{iso.week:02d}"
    elif kind == "monthly":
        first = day.replace(day=1)
        following = (first + dt.timedelta(days=31)).replace(day=1)
        label = f"{day.year:04d}-{day.month:02d}"
    elif kind == "yearly":
        first, following = dt.date(day.year, 1, 1), dt.date(day.year + 1, 1, 1)
        label = f"{day.year:04d}"
    else:
        raise ValueError(f"unknown period {kind!r}")
    start, end = _midnight(first, timezone), _midnight(following, timezone)
    # Only a zone that moves its clock back across midnight could put ``when`` outside
    # its own day; the period then starts at ``when``, which still makes progress.
    end = max(end, when + dt.timedelta(microseconds=1))
    return min(start, when), end, f"{kind}: newest of {label}"


def _midnight(day: dt.date, timezone: str) -> dt.datetime:
    """The first instant of ``day`` in the zone (the end of the gap if midnight is skipped)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=_zone(timezone)).astimezone(_UTC)


def _offset(local: dt.datetime) -> str:
    offset = local.utcoffset() or dt.timedelta(0)
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(offset) // dt.timedelta(minutes=1)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
