"""Structured logging: to journald under systemd, else one line per record on stderr.

Use the ``snapshotd`` logger (or a child such as ``snapshotd.watch``) and attach
structured fields with ``log_event``::

    log_event(log, logging.INFO, "snapshot taken", policy="web-hourly",
              domain="web", snapshot="web-hourly-20240101T0000Z",
              operation="create", duration_ms=812, uri="qemu:///system")

which is the same as ``log.info("snapshot taken", extra={"fields": {...}})``.
Field names are written in lower case and sent upper case; the usual ones are
``FIELDS`` (journald: ``POLICY=``, ``DOMAIN=``, ``SNAPSHOT=``, ``OPERATION=``,
``DURATION_MS=``, ``URI=``).  A field whose value is None is left out.

Where records go (``setup``):

* journald, when stderr is the journal (``JOURNAL_STREAM`` names stderr's device
  and inode, as systemd documents) or ``setup(journal=True)``: one entry per record,
  sent with systemd-python's ``systemd.journal.send``,
  with ``MESSAGE``, ``PRIORITY`` (error 3, warning 4, info 6, debug 7),
  ``SYSLOG_IDENTIFIER=snapshotd``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` of the
  call, and the record's fields;
* otherwise stderr, one line per record: ``LEVEL message key=value ...``; a value
  is double-quoted (with backslash escapes) when it is empty or holds spaces,
  quotes, ``=``, backslashes or control characters; an exception's traceback
  becomes a quoted ``traceback=`` field, so a record stays one line.

Two rules hold on every path:

* ``URI`` fields go through ``sanitize_uri``: no password reaches a log.
* ``XMLGuard``: a record whose text (message, fields, exception) contains domain
  or snapshot XML (``<domainsnapshot``, ``<domain ``/``<domain>``, ``<secret``) is
  not written; a warning "secure snapshot XML withheld" takes its place.  Snapshot
  and domain XML can carry disk secrets and VNC/SPICE passwords, so snapshotd logs
  names, never XML.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TextIO

LOGGER = "snapshotd"
IDENTIFIER = "snapshotd"
FIELDS = ("policy", "domain", "snapshot", "operation", "duration_ms", "uri")
WITHHELD = "secure snapshot XML withheld"

# --- URIs ---------------------------------------------------------------------------

# Query parameters whose values are secrets (compared without regard to case).
# libvirt's own parameters (keyfile, pkipath, known_hosts, sshauth, ...) name files
# or methods, not secrets, and stay.
SECRET_PARAMS = frozenset({"password", "passwd", "pass", "pwd", "key", "secret", "token"})

# RFC 3986, appendix B: scheme, authority, path, query, fragment.
_URI = re.compile(
    r"^(?P<head>[^:/?#]+:)?(?://(?P<authority>[^/?#]*))?(?P<rest>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?$",
    re.DOTALL,
)


def sanitize_uri(uri: str) -> str:
    """``uri`` without its secrets; everything else is kept as written.

    Removed: the password in the user information (``user:password@host`` becomes
    ``user@host``) and the value of every query parameter named in
    ``SECRET_PARAMS`` (``?password=x`` becomes ``?password=***``).

    >>> sanitize_uri("qemu+ssh://root:hunter2@host/system?keyfile=/x")
    'qemu+ssh://root@host/system?keyfile=/x'
    """
    match = _URI.match(uri)
    if match is None:  # pragma: no cover - the pattern matches every string
        return uri
    out = match.group("head") or ""
    authority = match.group("authority")
    if authority is not None:
        userinfo, at, host = authority.rpartition("@")
        if at:
            authority = userinfo.partition(":")[0] + "@" + host
        out += "//" + authority
    out += match.group("rest")
    query = match.group("query")
    if query is not None:
        parts = []
        for part in query.split("&"):
            name, eq, _value = part.partition("=")
            parts.append(f"{name}=***" if eq and name.lower() in SECRET_PARAMS else part)
        out += "?" + "&".join(parts)
    return out + (match.group("fragment") or "")


# --- fields -------------------------------------------------------------------------

_FIELD_NAME = re.compile(r"[^A-Z0-9_]")


def _journal_name(key: str) -> str:
    """A journald field name: upper case letters, digits and ``_``, not leading ``_``."""
    name = _FIELD_NAME.sub("_", key.upper()).lstrip("_")
    return name or "FIELD"


def _value(name: str, value: object) -> str:
    text = str(value)
    return sanitize_uri(text) if name == "URI" else text


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The record's structured fields, by journald name, values as sent."""
    raw = getattr(record, "fields", None)
    if not isinstance(raw, Mapping):
        return {}
    fields: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue
        name = _journal_name(str(key))
        fields[name] = _value(name, value)
    return fields


def log_event(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    """Log ``message`` with structured ``fields`` (``policy=``, ``domain=``, ...).

    ``message`` is logged as is: with no arguments, logging does not %-format it.
    """
    logger.log(level, message, extra={"fields": fields}, stacklevel=2)


# --- the guard ----------------------------------------------------------------------

_XML = re.compile(r"<(?:domainsnapshot|domain|secret)[\s>/]")


def _has_xml(text: str) -> bool:
    return _XML.search(text) is not None


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not hide the guard
        return str(record.msg)


def _exception_text(record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


class XMLGuard(logging.Filter):
    """Withholds records that carry domain or snapshot XML.

    Such a record is rewritten in place: its message becomes ``WITHHELD``, its
    level at least WARNING, its exception and stack are dropped, and only the
    fields without XML are kept.  Attach it to handlers (``setup`` does), so that
    it sees the records of child loggers too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        raw = getattr(record, "fields", None)
        values = [str(v) for v in raw.values()] if isinstance(raw, Mapping) else []
        texts = [_message(record), _exception_text(record), *values]
        if not any(_has_xml(text) for text in texts):
            return True
        record.msg = WITHHELD
        record.args = None
        if record.levelno < logging.WARNING:
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if isinstance(raw, Mapping):
            record.fields = {k: v for k, v in raw.items() if not _has_xml(str(v))}
        return True


# --- stderr -------------------------------------------------------------------------

_PLAIN = re.compile(r'[^\s"=\\\x00-\x1f\x7f]+')


def quote(value: str) -> str:
    """``value`` as it appears after ``key=``: bare, or double-quoted with escapes."""
    if _PLAIN.fullmatch(value):
        return value
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    escaped = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda m: f"\\x{ord(m[0]):02x}", escaped)
    return f'"{escaped}"'


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class LineFormatter(logging.Formatter):
    """``LEVEL message key=value ...``: one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {_one_line(_message(record))}"
        fields = record_fields(record)
        if record.exc_info and record.exc_info[1] is not None:
            fields["TRACEBACK"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            fields["TRACEBACK"] = record.exc_text
        for name, value in fields.items():
            line += f" {name.lower()}={quote(value)}"
        return line


# --- journald -----------------------------------------------------------------------

PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between round down)."""
    for level, value in sorted(PRIORITY.items(), reverse=True):
        if levelno >= level:
            return value
    return 7


def _default_send() -> Callable[..., Any]:
    # Imported here: only the journald path needs systemd-python.
    from systemd.journal import send  # noqa: PLC0415

    journal_send: Callable[..., Any] = send
    return journal_send


class JournalHandler(logging.Handler):
    """Sends each record to journald through ``send`` (``systemd.journal.send``).

    Not systemd-python's own JournalHandler: that one sends every attribute of the
    record as a field (LOGGER, THREAD_NAME, ARGS, the ``fields`` mapping as one repr...);
    snapshotd's entries carry exactly the fields described above.

    Like sd_notify (adapters/notify.py), ``systemd.journal.send`` holds the GIL while
    journald's socket is full (measured: a thread blocked in it stops the others).  It
    is used all the same: every thread of the daemon logs, so a journald that stops
    reading stops them with any sender.
    """

    def __init__(
        self, send: Callable[..., Any] | None = None, identifier: str = IDENTIFIER
    ) -> None:
        super().__init__()
        self.send = send if send is not None else _default_send()
        self.identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = _message(record)
            if record.exc_info and record.exc_info[1] is not None:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            fields = record_fields(record)
            for reserved in (
                "MESSAGE",
                "PRIORITY",
                "SYSLOG_IDENTIFIER",
                "CODE_FILE",
                "CODE_LINE",
                "CODE_FUNC",
                "MESSAGE_ID",
            ):
                fields.pop(reserved, None)
            self.send(
                message,
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
                PRIORITY=str(priority(record.levelno)),
                SYSLOG_IDENTIFIER=self.identifier,
                **fields,
            )
        except Exception:  # noqa: BLE001 - logging's own convention: report, go on
            self.handleError(record)


# --- setup --------------------------------------------------------------------------


def journal_stream_connected(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a service whose stdout or
    stderr goes to the journal; it is ours only if ``fd`` still is that file.
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


_HANDLER = "snapshotd.logs"  # the name of the handler setup() installs


def setup(
    journal: bool | None = None,
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
    send: Callable[..., Any] | None = None,
) -> logging.Logger:
    """Configure and return the ``snapshotd`` logger.

    ``journal``: True sends records to journald, False to ``stream`` (stderr), None
    decides by ``JOURNAL_STREAM``.  Calling it again replaces what an earlier call
    installed.  The logger does not propagate to the root logger, so a library's
    ``logging.basicConfig`` cannot print snapshotd's records twice.
    """
    if journal is None:
        journal = journal_stream_connected(environ)
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER]:
        logger.removeHandler(old)
        old.close()
    handler: logging.Handler
    if journal:
        handler = JournalHandler(send)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(LineFormatter())
    handler.addFilter(XMLGuard())
    handler.set_name(_HANDLER)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
