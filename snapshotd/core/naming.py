"""Snapshot names, file-name templates and the lexical checks on paths.

Names and paths come from policy files, the command line and libvirt (domain
names, disk paths), so all of them are treated as untrusted.  This module only
looks at strings; the filesystem half of the checks (symlinks, existing files)
is done by ``snapshotd.adapters.files`` right before anything is created.
"""

from __future__ import annotations

import functools
import posixpath
import re
import string
from collections.abc import Mapping

from snapshotd.errors import RequestError

# A snapshot name becomes part of file names and of libvirt's metadata file
# name, so it is kept to a conservative alphabet.  libvirt itself forbids "/"
# and a leading ".".
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:@-]*")
NAME_MAX = 200
# The control characters: every code point below 32, and DEL.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_snapshot_name(name: str) -> None:
    """Refuse a snapshot name that is empty, too long or has unsafe characters."""
    if not name:
        raise RequestError("snapshot name is empty; give one with --name")
    if len(name) > NAME_MAX:
        raise RequestError(f"snapshot name is {len(name)} characters long; at most {NAME_MAX}")
    if not _NAME_RE.fullmatch(name):
        raise RequestError(
            f"snapshot name {name!r} is not allowed: use letters, digits and . _ + : @ -, "
            "starting with a letter or digit (no '/', spaces, control characters or NUL)"
        )


def check_file_component(component: str, what: str) -> None:
    """A single path component that is safe to create inside a directory."""
    bad = None
    if not component:
        bad = "it is empty"
    elif component in {".", ".."}:
        bad = f"{component!r} names a directory"
    elif "/" in component:
        bad = "it contains '/'"
    elif _CONTROL.search(component):
        bad = "it contains a control character (NUL, newline, ...)"
    elif component.startswith("."):
        bad = "it starts with '.' (hidden files are not created)"
    elif len(component.encode()) > 255:
        bad = "it is longer than 255 bytes"
    if bad:
        raise RequestError(f"{what} {component!r} cannot be used as a file name: {bad}")


def check_directory(path: str, what: str) -> str:
    """An absolute, normalised directory path with no '..' and no control characters."""
    if not path:
        raise RequestError(f"{what} is empty")
    if _CONTROL.search(path):
        raise RequestError(f"{what} {path!r} contains a control character (NUL, newline, ...)")
    if not path.startswith("/"):
        raise RequestError(f"{what} {path!r} must be an absolute path")
    if ".." in path.split("/"):
        raise RequestError(f"{what} {path!r} must not contain '..'")
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = normal[1:]
    return normal


def template_fields(
    template: str, allowed: frozenset[str], what: str, specs: frozenset[str] = frozenset()
) -> list[str]:
    """The fields a template uses; refuse attribute access, indexing and unknown fields.

    Only the fields in ``specs`` may carry a format spec (``{time:%Y%m%d}``); on
    any other field a spec could pad a name to gigabytes (``{domain:>999999999}``).
    """
    fields: list[str] = []
    try:
        parsed = _parse_template(template)
    except ValueError as exc:
        raise RequestError(f"{what} {template!r} is not a valid template: {exc}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in allowed:
            known = ", ".join("{" + f + "}" for f in sorted(allowed))
            raise RequestError(
                f"{what} {template!r} uses {{{field}}}; the fields it may use are {known}"
            )
        if conversion or (spec and "{" in spec):
            raise RequestError(f"{what} {template!r}: {{{field}}} takes no conversion")
        if spec and field not in specs:
            raise RequestError(f"{what} {template!r}: {{{field}}} takes no format spec")
        fields.append(field)
    return fields


@functools.lru_cache(maxsize=256)  # a policy's few templates, filled in for every domain
def _parse_template(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    return tuple(string.Formatter().parse(template))


def render_template(template: str, values: Mapping[str, str], what: str) -> str:
    """Fill a file-name template whose fields are all in ``values``."""
    template_fields(template, frozenset(values), what)
    return template.format_map(dict(values))


def literal_root(directory_template: str) -> str:
    """The leading part of a directory template that has no fields in it.

    ``/var/lib/libvirt/snapshots/{domain}`` -> ``/var/lib/libvirt/snapshots``.
    Rendered directories must stay inside it, even through symlinks.
    """
    parts: list[str] = []
    for part in directory_template.split("/"):
        if "{" in part:
            break
        parts.append(part)
    root = "/".join(parts) or "/"
    return posixpath.normpath(root)


def is_inside(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (both normalised, absolute)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
