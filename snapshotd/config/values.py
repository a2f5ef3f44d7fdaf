"""Each option's own rules: a check takes the value read and returns an error message or None.

``CHECKS`` holds the checks of whole values by option path, ``ITEM_CHECKS`` those of
each item of a list.  Rules that involve several options are
``snapshotd.config.crossfield``.
"""

from __future__ import annotations

import datetime as dt
import re
import string
import uuid
from collections.abc import Callable
from typing import Any

from snapshotd.config.schema import DESCRIPTION_MAX, MIN_EVERY, POLICY_NAME_MAX
from snapshotd.config.yamlreader import show
from snapshotd.core import guard, naming, schedule
from snapshotd.core.policy import NAME_FIELDS
from snapshotd.errors import RequestError

_POLICY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]*")
_TARGET_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]*")
_TIME_SPEC_RE = re.compile(r"(?:%[A-Za-z%]|[^%])*")
_ADDRESS_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}")
_YEAR_DIRECTIVES = frozenset("YyGgs")


def _control_character(text: str, allowed: str = "") -> bool:
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)


def check_policy_name(name: str) -> str | None:
    if len(name) > POLICY_NAME_MAX or not _POLICY_NAME_RE.fullmatch(name):
        return (
            f"policy name {show(name)} is not allowed: use letters, digits and . _ + : @ -, "
            f"starting with a letter or digit, at most {POLICY_NAME_MAX} characters"
        )
    return None


def _check_pattern(pattern: str) -> str | None:
    if not pattern.strip():
        return "an empty pattern selects nothing"
    if _control_character(pattern):
        return f"{show(pattern)} contains a control character"
    if pattern.startswith("uuid:"):
        text = pattern[5:].strip().lower()
        try:
            canonical = str(uuid.UUID(text)) == text  # as libvirt spells it, with dashes
        except ValueError:
            canonical = False
        if not canonical:
            return (
                f"{show(pattern)} is not uuid: followed by a UUID "
                "(like uuid:6695eb01-f6a4-8304-79aa-97f2502e193f)"
            )
    return None


def _refuse_empty(message: str) -> Callable[[object], str | None]:
    """A check that refuses an empty list with ``message``."""
    return lambda items: message if items == () else None


def _check_cron(expr: str) -> str | None:
    try:
        return schedule.check_cron(expr)
    except (ValueError, OverflowError) as exc:
        return str(exc)


def _check_timezone(name: str) -> str | None:
    try:
        return schedule.check_timezone(name)
    except (ValueError, OSError) as exc:
        return str(exc)


def _check_every(every: dt.timedelta) -> str | None:
    if every < MIN_EVERY:
        return (
            f"must be at least {int(MIN_EVERY.total_seconds())}s; more frequent "
            "snapshots would keep the domains busy taking them"
        )
    return None


def _check_description(description: str) -> str | None:
    if len(description) > DESCRIPTION_MAX:
        return f"is {len(description)} characters long; at most {DESCRIPTION_MAX}"
    if _control_character(description, "\n\t"):
        return "contains a control character (only newlines and tabs are allowed)"
    return None


def _check_name_template(text: str) -> str | None:
    """The template's own rules; rendering it needs the policy name (cross step)."""
    try:
        fields = naming.template_fields(
            text, NAME_FIELDS, "snapshot name template", specs=frozenset({"time"})
        )
    except RequestError as exc:
        return exc.message
    missing = [f"{{{f}}}" for f in ("policy", "time") if f not in fields]
    if missing:
        return (
            f"snapshot name template {show(text)} must contain {' and '.join(missing)}: "
            "{policy} keeps the names of different policies apart and {time:...} those "
            "of different runs"
        )
    for _literal, field, spec, _conversion in string.Formatter().parse(text):
        if field != "time":
            continue
        if not (spec and _TIME_SPEC_RE.fullmatch(spec)):
            return (
                f"snapshot name template {show(text)}: {{time}} needs a format of "
                "strftime directives without widths or flags, such as {time:%Y%m%dT%H%M%SZ}"
            )
        if not _YEAR_DIRECTIVES.intersection(re.findall(r"%([A-Za-z%])", spec)):
            return (
                f"snapshot name template {show(text)}: {{time:{spec}}} must include the "
                "year (%Y), or names repeat from one year to the next"
            )
    return None


def _check_directory(text: str) -> str | None:
    try:
        naming.check_directory(text, "snapshot directory")
        naming.template_fields(text, frozenset({"domain"}), "snapshot directory")
    except RequestError as exc:
        return exc.message
    return None


def _check_plain_directory(text: str) -> str | None:
    try:
        naming.check_directory(text, "directory")
    except RequestError as exc:
        return exc.message
    return None


def _check_uri(uri: str) -> str | None:
    if not _URI_RE.fullmatch(uri) or _control_character(uri):
        return f"{show(uri)} is not a libvirt connection URI (like qemu:///system)"
    return None


_HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_DATABASE_URL_RE = re.compile(r"postgres(?:ql)?://[^\s]*")


def _check_database_url(url: str) -> str | None:
    if not _DATABASE_URL_RE.fullmatch(url) or _control_character(url):
        return f"{show(sanitize_url(url))} is not a postgresql:// URL"
    authority = url.partition("://")[2].partition("/")[0].partition("?")[0]
    userinfo, at, _host = authority.rpartition("@")
    query = url.partition("?")[2]
    names = {part.partition("=")[0].lower() for part in query.split("&") if part}
    if (at and ":" in userinfo) or "password" in names:
        return (
            f"{show(sanitize_url(url))} has a password in it: remove it and put it in "
            "catalog.password_file (a file only root can read)"
        )
    return None


def sanitize_url(url: str) -> str:
    """A database URL without the password it may hold (``user:secret@`` and a
    ``password=`` parameter), for messages."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at:
        authority = userinfo.partition(":")[0] + "@" + host
    path, q, query = tail.partition("?")
    if q:
        parts = [
            "password=***" if part.partition("=")[0].lower() == "password" else part
            for part in query.split("&")
        ]
        query = "&".join(parts)
    return head + sep + authority + slash + path + q + query


def _check_host_id(text: str) -> str | None:
    if not _HOST_ID_RE.fullmatch(text):
        return (
            f"{show(text)} is not a host id: letters, digits and . _ -, starting with a "
            "letter or digit, at most 63 characters"
        )
    return None


def _check_plain_file(text: str) -> str | None:
    if not text.startswith("/") or _control_character(text) or ".." in text.split("/"):
        return f"{show(text)} must be a plain absolute path (no '..')"
    return None


def disk_key_problem(name: str) -> str | None:
    if name.startswith("/"):
        if _control_character(name) or ".." in name.split("/"):
            return f"disk path {show(name)} must be a plain absolute path (no '..')"
        return None
    if not _TARGET_RE.fullmatch(name):
        return (
            f"disk {show(name)} is neither a disk target (vda, sdb, ...) nor an "
            "absolute source path"
        )
    return None


def check_metrics_address(address: str) -> str | None:
    """Not in CHECKS: ``crossfield.check_config`` runs it after the workers check, which a
    failed option would otherwise skip."""
    if not _ADDRESS_RE.fullmatch(address):
        return f"{show(address)} is not HOST:PORT, for example 127.0.0.1:9477"
    return None


# A check takes the option's value as the reader made it: a str, a timedelta, a tuple, ...
def _check_space(text: str) -> str | None:
    try:
        guard.parse_space(text)
    except ValueError as exc:
        return str(exc)
    return None


def _check_max_chain(count: int) -> str | None:
    if count == 1:
        return "1 would refuse every external snapshot (a disk and its overlay are 2); 0 is no cap"
    return None


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "name": check_policy_name,
    "domains.include": _refuse_empty(
        'selects no domain; list globs or uuids, or leave it out for all ("*")'
    ),
    "domains.states": _refuse_empty("lists no state, so the policy would never take a snapshot"),
    "schedule.cron": _check_cron,
    "schedule.timezone": _check_timezone,
    "schedule.every": _check_every,
    "snapshot.name": _check_name_template,
    "snapshot.description": _check_description,
    "snapshot.directory": _check_directory,
    "guard.min_free": _check_space,
    "guard.max_chain": _check_max_chain,
    "policy_dir": _check_plain_directory,
    "state_dir": _check_plain_directory,
    "connect": _refuse_empty("lists no connection; snapshotd needs at least one (qemu:///system)"),
    "catalog.url": _check_database_url,
    "catalog.password_file": _check_plain_file,
    "catalog.host_id": _check_host_id,
}

ITEM_CHECKS: dict[str, Callable[[str], str | None]] = {
    "domains.include": _check_pattern,
    "domains.exclude": _check_pattern,
    "connect": _check_uri,
}
