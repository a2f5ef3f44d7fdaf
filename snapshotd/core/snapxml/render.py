"""Rendering: a plan (SnapshotSpec) or a parsed snapshot (SnapshotInfo) as libvirt's
``<domainsnapshot>`` XML, in the order and form virDomainSnapshotDefFormat writes.
"""

from __future__ import annotations

from snapshotd.core.model import Location, SnapshotDisk, SnapshotInfo, SnapshotSpec
from snapshotd.core.snapxml.parse import parse_snapshot
from snapshotd.core.snapxml.vocabulary import (
    _ATTR_ESCAPES,
    _INDENT,
    _NOT_XML_CHAR,
    _PLAIN,
    _TEXT_ESCAPES,
)
from snapshotd.errors import XMLError

# ---------------------------------------------------------------- rendering


def render_spec(spec: SnapshotSpec) -> str:
    """The ``<domainsnapshot>`` create request for a resolved plan.

    ``<memory>`` is always written (``file=`` only for external memory); ``<disks>``
    lists every planned disk in order, external ones with ``type='file'``, their
    overlay format and file.  An empty description is left out, as libvirt treats
    it as none.  The text is checked with :func:`parse_snapshot` before it is
    returned, so a plan libvirt would refuse (a relative file, a memory file
    without external memory) raises :class:`XMLError` here instead.

    That check is made once per distinct shape (see :func:`_shape`), not once per
    document: a scheduling pass renders the same request for thousands of domains,
    and their documents differ only in file paths, which the parser looks at for
    nothing but being empty or absolute.
    """
    if not spec.name:
        raise XMLError(f"snapshot of domain {spec.domain!r}: the snapshot name is empty")
    disks = []
    for plan in spec.disks:
        if plan.location is Location.EXTERNAL:
            disks.append(
                SnapshotDisk(
                    name=plan.target,
                    snapshot=plan.location.value,
                    type="file",
                    driver_type=plan.new_format,
                    source_file=plan.new_file,
                )
            )
        else:
            if plan.new_file is not None or plan.new_format is not None:
                raise XMLError(
                    f"snapshot {spec.name!r} of domain {spec.domain!r}: disk {plan.target}: "
                    f"a new file or format for a {plan.location.value} snapshot; "
                    "only an external snapshot creates a file"
                )
            disks.append(SnapshotDisk(name=plan.target, snapshot=plan.location.value))
    info = SnapshotInfo(
        name=spec.name,
        description=spec.description or None,
        memory=spec.memory.value,
        memory_file=spec.memory_file,
        disks=tuple(disks),
    )
    text = render_info(info)
    shape = _shape(spec)
    if shape not in _PARSED_SHAPES:
        parse_snapshot(text, source=f"snapshot XML for {spec.name!r} of domain {spec.domain!r}")
        if len(_PARSED_SHAPES) >= _SHAPES_KEPT:
            _PARSED_SHAPES.clear()
        _PARSED_SHAPES[shape] = None
    return text


# Shapes of render_spec documents that parse_snapshot has accepted (a bounded memo;
# a dict because the daemon's job threads render concurrently and dict updates are
# atomic).  A refused shape is never recorded, so its error is raised every time,
# naming the spec at hand.
_PARSED_SHAPES: dict[tuple[object, ...], None] = {}
_SHAPES_KEPT = 4096
_PATH_MAX = 4096


def _path_kind(path: str | None) -> str | None:
    """What the parser can tell about a path: absent, empty, absolute, or not.

    Its first character says all of that (``""`` empty, ``"/"`` absolute, anything
    else relative).  A path longer than PATH_MAX is its own kind, so that a limit
    of the XML parser on attribute length is never assumed away.
    """
    if path is None:
        return None
    return path[:1] if len(path) <= _PATH_MAX else path


def _shape(spec: SnapshotSpec) -> tuple[object, ...]:
    """Everything in ``spec`` that decides whether its rendered XML parses.

    Two specs with the same shape render to documents that differ only in the
    (escaped, hence well-formed) text of file paths whose kinds (:func:`_path_kind`)
    are the same, and the parser refuses either both or neither.
    """
    return (
        spec.name,
        spec.description,
        spec.memory,
        _path_kind(spec.memory_file),
        tuple((d.target, d.location, d.new_format, _path_kind(d.new_file)) for d in spec.disks),
    )


def render_info(info: SnapshotInfo) -> str:
    """A parsed snapshot written back as a document libvirt can redefine.

    Fields that are None are left out.  ``domain_xml``, ``inactive_domain_xml`` and
    ``cookie_xml`` are inserted as they are, indented by two spaces on their first
    line only (text kept from :func:`parse_snapshot` already carries the indentation
    of the document it came from); with no ``domain_xml``, a ``domain_uuid`` gives
    ``<domain><uuid>`` as libvirt writes it.  Elements named only in ``extra``
    (other than the cookie) are not kept and so not written.
    """
    what = f"snapshot {info.name!r}" if info.name is not None else "unnamed snapshot"
    lines = ["<domainsnapshot>"]

    def add(depth: int, line: str) -> None:
        lines.append(_INDENT * depth + line)

    def element(depth: int, tag: str, value: str | None) -> None:
        if value is not None:
            add(depth, f"<{tag}>{_escape(value, _TEXT_ESCAPES, what, tag)}</{tag}>")

    element(1, "name", info.name)
    element(1, "description", info.description)
    element(1, "state", info.state)
    if info.parent is not None:
        add(1, "<parent>")
        element(2, "name", info.parent)
        add(1, "</parent>")
    if info.creation_time is not None:
        add(1, f"<creationTime>{info.creation_time}</creationTime>")
    if info.memory is not None or info.memory_file is not None:
        attrs = _attrs(what, "memory", snapshot=info.memory, file=info.memory_file)
        add(1, f"<memory{attrs}/>")
    if info.disks:
        add(1, "<disks>")
        for disk in info.disks:
            lines.extend(_disk_lines(disk, what))
        add(1, "</disks>")
    if info.domain_xml is not None:
        add(1, info.domain_xml.strip())
    elif info.domain_uuid is not None:
        add(1, "<domain>")
        element(2, "uuid", info.domain_uuid)
        add(1, "</domain>")
    for raw in (info.inactive_domain_xml, info.cookie_xml):
        if raw is not None:
            add(1, raw.strip())
    if info.current is not None:
        add(1, f"<active>{int(info.current)}</active>")
    lines.append("</domainsnapshot>")
    return "\n".join(lines) + "\n"


def render_catalog_only(
    spec: SnapshotSpec, *, online: bool, created: int, domain_xml: str | None = None
) -> str:
    """The redefinable XML of a snapshot taken with NO_METADATA, for the catalog.

    libvirt keeps nothing it could describe, so this is what it would have kept:
    name, description, state, creation time, memory, every disk with its overlay,
    and the domain definition from just before the snapshot (REDEFINE refuses a
    snapshot without one).  It has no parent: with no metadata there was no
    current snapshot to be one.
    """
    if spec.memory is Location.EXTERNAL:
        state = "running"
    elif online:
        state = "disk-snapshot"
    else:
        state = "shutoff"
    disks = tuple(
        SnapshotDisk(
            name=d.target,
            snapshot=d.location.value,
            type="file" if d.new_file else None,
            driver_type=d.new_format if d.new_file else None,
            source_file=d.new_file,
        )
        for d in spec.disks
    )
    info = SnapshotInfo(
        name=spec.name,
        description=spec.description,
        state=state,
        creation_time=created,
        memory=spec.memory.value,
        memory_file=spec.memory_file,
        disks=disks,
        domain_xml=domain_xml,
    )
    return render_info(info)


def _disk_lines(disk: SnapshotDisk, what: str) -> list[str]:
    where = f"{what}: disk {disk.name!r}"
    pad = _INDENT * 2
    source = _source_element(disk, where)
    # libvirt writes type= and the children only for a disk with a path or a format.
    full = disk.type is not None or disk.driver_type is not None or source is not None
    attrs = _attrs(
        where,
        "disk",
        name=disk.name,
        snapshot=disk.snapshot,
        type=(disk.type or "file") if full else None,
    )
    children = []
    if disk.driver_type is not None:
        children.append(f"<driver{_attrs(where, 'driver', type=disk.driver_type)}/>")
    children.extend(source or ())
    if not children:
        return [f"{pad}<disk{attrs}/>"]
    return [
        f"{pad}<disk{attrs}>",
        *(f"{pad}{_INDENT}{line}" for line in children),
        f"{pad}</disk>",
    ]


def _source_element(disk: SnapshotDisk, where: str) -> list[str] | None:
    if disk.type == "network":
        if disk.source_protocol is None and disk.source_name is None and not disk.source_hosts:
            return None
        head = "<source" + _attrs(
            where, "source", protocol=disk.source_protocol, name=disk.source_name
        )
        if not disk.source_hosts:
            return [head + "/>"]
        hosts = []
        for name, port, transport in disk.source_hosts:
            unix = transport == "unix"
            attrs = _attrs(
                where,
                "host",
                name=None if unix else name,
                port=port,
                transport=transport,
                socket=name if unix else None,
            )
            hosts.append(f"{_INDENT}<host{attrs}/>")
        return [head + ">", *hosts, "</source>"]
    if disk.type == "block":
        path_attr, path = "dev", disk.source_dev
    else:
        path_attr, path = "file", disk.source_file
    if path is None:
        return None
    return [f"<source{_attrs(where, 'source', **{path_attr: path})}/>"]


def _attrs(where: str, tag: str, **values: str | None) -> str:
    return "".join(
        f" {key}='{_escape(value, _ATTR_ESCAPES, where, tag, key)}'"
        for key, value in values.items()
        if value is not None
    )


def _escape(value: str, table: dict[int, str], where: str, tag: str, key: str | None = None) -> str:
    """``value`` escaped for an element's text (or attribute ``key``), or XMLError.

    The error names ``where``, the element and the attribute.
    """
    if _PLAIN.fullmatch(value) is not None:
        return value  # nothing to escape, nothing to refuse: most names and paths
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        place = f"<{tag}>" if key is None else f"<{tag} {key}=...>"
        raise XMLError(
            f"{where}: {place}: character U+{ord(bad.group()):04X} cannot be written in XML"
        )
    return value.translate(table)
