"""``status.json``: what a running daemon knows and the catalog does not, as a typed model.

The daemon writes a ``DaemonStatus`` with ``StatusWriter`` (after every pass of its loop,
but the file only when its content changed, so an idle daemon writes nothing);
``snapshotd status`` reads it back with ``read_status``.  Nothing else writes or parses
the file.  It holds the policies in force, the policy load errors, the connections, each
key's next due time and the jobs in flight; never snapshot XML, and URIs only as
``sanitize_uri`` leaves them (the daemon sanitizes them before they get here).

On disk: one JSON object, keys sorted, indented by one space, mode 0600, replaced
atomically (write, rename; no fsync: the daemon writes it again at start).  Its keys are
the field names below, each entry of ``connections``, ``scheduled`` and ``running`` an
object of its dataclass's fields.  A file that is absent, is not JSON, or does not have
this shape reads as None: the reader shows what it can without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from snapshotd.adapters import files

STATUS_NAME = "status.json"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Connection:
    """One libvirt URI the daemon keeps a connection to."""

    uri: str
    connected: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Scheduled:
    """When a key (a policy for a domain on a connection) runs next."""

    policy: str
    uri: str
    domain_uuid: str
    domain: str  # its name (the UUID when the daemon has not seen the domain)
    next_due: int  # epoch seconds, jitter included
    reason: str


@dataclass(frozen=True, slots=True)
class Running:
    """A snapshot job in flight."""

    policy: str
    uri: str
    domain_uuid: str
    domain: str
    since: int  # epoch seconds
    overrun: bool  # past operation_timeout: no longer counted against workers


_Entry = TypeVar("_Entry", Connection, Scheduled, Running)


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """Everything status.json holds.  The defaults are what a reader assumes for a key
    the file lacks (the daemon always writes them all)."""

    pid: int | None = None
    started_at: int | None = None
    config: str | None = None  # where the settings came from
    policy_dir: str | None = None
    policies: tuple[str, ...] = ()  # the names in force
    load_errors: tuple[str, ...] = ()
    connections: tuple[Connection, ...] = ()
    workers: int | None = None
    operation_timeout: float | None = None  # seconds
    scheduled: tuple[Scheduled, ...] = ()
    running: tuple[Running, ...] = ()
    last_error: str | None = None
    stopping: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the file (tuples become lists)."""
        data: dict[str, Any] = asdict(self)
        for name in ("policies", "load_errors", "connections", "scheduled", "running"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DaemonStatus:
        """The model of a JSON object read from the file; ValueError if it is not one."""
        get = _Fields(data)
        return cls(
            pid=get.optional("pid", int),
            started_at=get.optional("started_at", int),
            config=get.optional("config", str),
            policy_dir=get.optional("policy_dir", str),
            policies=get.items("policies", _text),
            load_errors=get.items("load_errors", _text),
            connections=get.items("connections", lambda v: _entry(Connection, v)),
            workers=get.optional("workers", int),
            operation_timeout=get.optional("operation_timeout", float),
            scheduled=get.items("scheduled", lambda v: _entry(Scheduled, v)),
            running=get.items("running", lambda v: _entry(Running, v)),
            last_error=get.optional("last_error", str),
            stopping=bool(get.optional("stopping", bool)),
        )


class _Fields:
    """Typed reads of one JSON object's keys; a value of the wrong type is a ValueError."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        self._data = data

    def required(self, key: str, kind: type[T]) -> T:
        if key not in self._data:
            raise ValueError(f"{key}: missing")
        value = self.optional(key, kind)
        if value is None:
            raise ValueError(f"{key}: null")
        return value

    def optional(self, key: str, kind: type[T]) -> T | None:
        value = self._data.get(key)
        if value is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # bool is an int to Python, not to JSON: a count is never true or false.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{key}: {type(value).__name__}, not {kind.__name__}")
        return value

    def items(self, key: str, read: Callable[[Any], T]) -> tuple[T, ...]:
        value = self._data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ValueError(f"{key}: not a list")
        return tuple(read(item) for item in value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r}: not a string")
    return value


def _entry(kind: type[_Entry], value: Any) -> _Entry:
    """One entry of a list, each field read as its annotation says; a field whose default
    is None may be null or absent, the others must be there."""
    get = _Fields(value)
    hints = get_type_hints(kind)
    read: dict[str, Any] = {}
    for f in fields(kind):
        optional = f.default is None
        # ``str | None`` is read as a ``str`` that may be null.
        hint = next((a for a in get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        read[f.name] = (get.optional if optional else get.required)(f.name, hint)
    return kind(**read)


@dataclass
class StatusWriter:
    """Writes ``status.json`` when, and only when, its content changed."""

    state_dir: str
    _last: str | None = None  # the content last written, in compact form

    def write(self, status: DaemonStatus) -> bool:
        """Write ``status`` unless the file already holds it; whether it was written."""
        data = status.to_json()
        # Compared compactly: without indent, json uses its C encoder, many times faster
        # than the Python one that indent needs, and the daemon asks on every wake-up
        # (a libvirt event of any domain on the host is one).
        compact = json.dumps(data, sort_keys=True)
        if compact == self._last:
            return False
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        # No fsync: the daemon writes it again at start, and it changes with every job;
        # an fsync here would compete with the disk flushes of the snapshots themselves.
        files.write_private(Path(self.state_dir) / STATUS_NAME, text, fsync=False)
        self._last = compact
        return True


def read_status(state_dir: str) -> DaemonStatus | None:
    """The last status the daemon wrote, or None (it never ran, or the file is unreadable
    or not of the shape above)."""
    path = Path(state_dir) / STATUS_NAME
    try:
        return DaemonStatus.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):  # json.JSONDecodeError is a ValueError
        return None
