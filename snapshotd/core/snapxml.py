"""libvirt ``<domainsnapshot>`` XML: render a plan, parse any snapshot document, validate.

Pure code: lxml only, no libvirt, no clock.  The one function that reads a file is
:func:`load_schema`, kept apart so everything else can run anywhere.

Output follows ``virDomainSnapshotDefFormat`` as libvirt's own test data shows it:
top-level order name, description, state, parent, creationTime, memory, disks,
domain, inactiveDomain, cookie, active; two-space indentation; single-quoted
attributes; ``<driver>`` before ``<source>`` inside a disk; a trailing newline.
Two deliberate differences, both so that every string survives a round trip:
a carriage return is written as ``&#13;`` (and a tab or newline inside an
attribute as a character reference), and a character XML cannot hold raises
:class:`XMLError` where libvirt would silently drop it.

The parser applies libvirt's own rules (``virDomainSnapshotDefParse``): a memory
file or a disk source without ``snapshot=`` means external, empty text counts as
absent, and what libvirt refuses is refused here with the line it is on.  It never
expands entities: a document with a DOCTYPE is refused outright, because an
unexpanded entity would otherwise read as literal text.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import cast, overload

from lxml import etree

from snapshotd.core.domain import parse_xml
from snapshotd.core.model import Location, SnapshotDisk, SnapshotInfo, SnapshotSpec
from snapshotd.errors import XMLError

SCHEMA_PATH = "/usr/share/libvirt/schemas/domainsnapshot.rng"

# virDomainSnapshotState without "nostate", which the parser refuses.
STATES = frozenset(
    {
        "running",
        "blocked",
        "paused",
        "shutdown",
        "shutoff",
        "crashed",
        "pmsuspended",
        "disk-snapshot",
    }
)
OFFLINE_STATES = frozenset({"shutoff", "disk-snapshot"})
MEMORY_MODES = ("no", "internal", "external")
DISK_MODES = ("no", "internal", "external", "manual")
DISK_TYPES = ("file", "block", "network")
# virStorageFileFormat names the snapshot parser accepts for <driver type=...>.
DRIVER_FORMATS = frozenset(
    {
        "raw",
        "dir",
        "bochs",
        "cloop",
        "dmg",
        "iso",
        "vpc",
        "vdi",
        "fat",
        "vhd",
        "ploop",
        "cow",
        "qcow",
        "qcow2",
        "qed",
        "vmdk",
        "luks",
    }
)
NETWORK_PROTOCOLS = frozenset(
    {
        "nbd",
        "rbd",
        "sheepdog",
        "gluster",
        "iscsi",
        "http",
        "https",
        "ftp",
        "ftps",
        "tftp",
        "ssh",
        "vxhs",
        "nfs",
    }
)
# Top-level elements in libvirt's canonical order.  Those parsed into fields are
# all but "cookie", which is kept verbatim and also named in SnapshotInfo.extra.
TOP_LEVEL = (
    "name",
    "description",
    "state",
    "parent",
    "creationTime",
    "memory",
    "disks",
    "domain",
    "inactiveDomain",
    "cookie",
    "active",
)

_INDENT = "  "
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Text that is written as it is, in an element or an attribute: XML characters other
# than the ones either escape table replaces (& < > ' " and CR, LF, tab).
_PLAIN = re.compile(
    "[\x20-\x21\x23-\x25\x28-\x3b\x3d\x3f-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*"
)
_TEXT_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;", "\r": "&#13;"}
)
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "'": "&apos;",
        '"': "&quot;",
        "\r": "&#13;",
        "\n": "&#10;",
        "\t": "&#9;",
    }
)
# strtoll() as virXPathLongLong uses it: leading white space, a sign, digits, nothing after.
_C_INTEGER = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")
_LLONG = (-(2**63), 2**63 - 1)
# Markup tokens of a well-formed document, to find where a top-level element's text
# starts and ends.  Attribute values may hold '>' but never '<'.
_MARKUP = re.compile(
    r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>|</[^>]*>|<(?:[^>\"']|\"[^\"]*\"|'[^']*')*>",
    re.DOTALL,
)
_TAG_NAME = re.compile(r"</?([^\s/>]+)")


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


# ------------------------------------------------------------------ parsing


def parse_snapshot(text: str | bytes, *, source: str = "snapshot XML") -> SnapshotInfo:
    """Parse any libvirt ``<domainsnapshot>`` document into a SnapshotInfo.

    Accepts create requests, redefine documents (full ``<domain>``,
    ``<inactiveDomain>``, ``<cookie>``, ``<active>``) and libvirt's own output.
    ``domain_xml``, ``inactive_domain_xml`` and ``cookie_xml`` hold those elements'
    text exactly as written in ``text``.  Raises :class:`XMLError` for anything
    libvirt refuses, its message ``"<source>: line N: <what is wrong>"``.
    """
    root = parse_xml(text, source)
    # lxml-stubs type internalDTD as always set; it is None without a DOCTYPE.
    if cast("etree.DTD | None", root.getroottree().docinfo.internalDTD) is not None:
        raise XMLError(
            f"{source}: a DOCTYPE declaration is not allowed in snapshot XML "
            "(entities are never expanded)"
        )
    if root.tag != "domainsnapshot":
        raise _fail(source, root, f"root element is <{root.tag}>, expected <domainsnapshot>")
    found, extra = _top_level(root, source)

    memory, memory_file = _memory(found.get("memory"), source)
    state = _content(found.get("state"))
    if state is not None and state not in STATES:
        raise _fail(
            source,
            found["state"],
            f"unknown snapshot state {state!r} (expected one of {', '.join(sorted(STATES))})",
        )
    if state in OFFLINE_STATES and memory in {"internal", "external"}:
        raise _fail(
            source,
            found["memory"],
            f"memory snapshot={memory!r} is impossible in a {state} snapshot: "
            "a domain that is not running has no memory to save",
        )
    parent = found.get("parent")
    domain = found.get("domain")
    raw = _RawText(text, root)
    return SnapshotInfo(
        name=_content(found.get("name")),
        description=_content(found.get("description")),
        state=state,
        creation_time=_integer(found.get("creationTime"), source, "seconds since the epoch"),
        parent=_content(parent.find("name")) if parent is not None else None,
        memory=memory,
        memory_file=memory_file,
        disks=_disks(found.get("disks"), source),
        domain_uuid=_content(domain.find("uuid")) if domain is not None else None,
        domain_xml=raw.of(domain) if domain is not None and _is_full(domain) else None,
        inactive_domain_xml=raw.of(found.get("inactiveDomain")),
        cookie_xml=raw.of(found.get("cookie")),
        current=_active(found.get("active"), source),
        extra=tuple(extra),
    )


def _top_level(root: etree._Element, source: str) -> tuple[dict[str, etree._Element], list[str]]:
    """The known top-level elements by name (each at most once), and the other names."""
    found: dict[str, etree._Element] = {}
    extra: list[str] = []
    for child in root.iterchildren(etree.Element):
        tag = child.tag
        if tag in TOP_LEVEL:
            if tag in found:
                raise _fail(
                    source,
                    child,
                    f"<{tag}> appears twice (first at {_line(found[tag])}); "
                    "libvirt's schema allows it once",
                )
            found[tag] = child
            if tag == "cookie":
                extra.append(tag)
        elif tag not in extra:
            extra.append(tag)
    return found, extra


def _memory(elem: etree._Element | None, source: str) -> tuple[str | None, str | None]:
    if elem is None:
        return None, None
    if elem.get("snapshot") == "manual":
        raise _fail(source, elem, "<memory snapshot='manual'> is not supported (disks only)")
    mode = _choice(source, elem, "snapshot", MEMORY_MODES)
    path = elem.get("file")
    if path is not None and mode is None:
        mode = "external"  # as libvirt: a file alone means an external memory snapshot
    if path is not None and mode != "external":
        raise _fail(
            source, elem, f"memory file {path!r} requires snapshot='external', not {mode!r}"
        )
    if mode == "external" and path is None:
        raise _fail(source, elem, "snapshot='external' memory requires file=, where to save it")
    if path is not None and not path.startswith("/"):
        raise _fail(source, elem, f"memory file {path!r} must be an absolute path")
    return mode, path


def _disks(elem: etree._Element | None, source: str) -> tuple[SnapshotDisk, ...]:
    if elem is None:
        return ()
    disks = []
    for child in elem.iterchildren(etree.Element):
        if child.tag != "disk":
            raise _fail(source, child, f"unexpected <{child.tag}> in <disks>, expected <disk>")
        disks.append(_disk(child, source))
    return tuple(disks)


def _disk(elem: etree._Element, source: str) -> SnapshotDisk:
    name = elem.get("name")
    if not name:
        raise _fail(
            source, elem, "<disk> without name= (a target such as 'vda' or the disk's path)"
        )
    label = f"disk {name!r}"
    mode = _choice(source, elem, "snapshot", DISK_MODES, label)
    if elem.get("type") in {"volume", "dir"}:
        raise _fail(source, elem, f"{label}: type={elem.get('type')!r} cannot be snapshotted")
    stated_type = _choice(source, elem, "type", DISK_TYPES, label)
    kind = stated_type or "file"
    file, dev, protocol, net_name, hosts = _source(elem.find("source"), kind, source, label)
    path = file or dev
    if path is not None and not path.startswith("/"):
        raise _fail(source, elem, f"{label}: image path {path!r} must be an absolute path")
    driver = elem.find("driver")
    driver_type = None
    if driver is not None:
        driver_type = driver.get("type") or None
        if driver_type is not None and driver_type not in DRIVER_FORMATS:
            raise _fail(source, driver, f"{label}: unknown snapshot driver type {driver_type!r}")
    target = path or net_name
    if mode is None and (target or driver_type):
        mode = "external"  # as libvirt: a new image or format without snapshot= is external
    if target and mode != "external":
        raise _fail(source, elem, f"{label}: a new image ({target!r}) requires snapshot='external'")
    return SnapshotDisk(
        name=name,
        snapshot=mode,
        # The type as libvirt writes it: stated, or implied by a new image or format.
        type=stated_type or (kind if target or driver_type else None),
        driver_type=driver_type,
        source_file=file,
        source_dev=dev,
        source_protocol=protocol,
        source_name=net_name,
        source_hosts=hosts,
    )


_Host = tuple[str, str | None, str | None]
_Source = tuple[str | None, str | None, str | None, str | None, tuple[_Host, ...]]


def _source(src: etree._Element | None, kind: str, source: str, label: str) -> _Source:
    """A snapshot disk's <source>: (file, dev, protocol, name, hosts) as its type reads them."""
    if src is None:
        return None, None, None, None, ()
    if src.get("startupPolicy") is not None:
        raise _fail(
            source,
            src,
            f"{label}: startupPolicy is not allowed on a snapshot disk's <source> "
            "(libvirt's schema rejects it: only a domain's own <disk> has one)",
        )
    if kind == "file":
        return src.get("file") or None, None, None, None, ()
    if kind == "block":
        return None, src.get("dev") or None, None, None, ()
    seclabel = src.find("seclabel")
    if seclabel is not None:
        raise _fail(
            source,
            seclabel,
            f"{label}: <seclabel> is not allowed in a network disk's <source> "
            "(libvirt's schema allows it for file and block sources only)",
        )
    protocol = src.get("protocol")
    if protocol not in NETWORK_PROTOCOLS:
        shown = "no protocol=" if protocol is None else f"unknown protocol {protocol!r}"
        raise _fail(
            source,
            src,
            f"{label}: network <source> with {shown} "
            f"(expected one of {', '.join(sorted(NETWORK_PROTOCOLS))})",
        )
    hosts = tuple(_host(h) for h in src.iterchildren("host"))
    return None, None, protocol, src.get("name") or None, hosts


def _host(elem: etree._Element) -> _Host:
    """(name, port, transport); a unix socket's path stands in the name's place."""
    transport = elem.get("transport")
    name = elem.get("socket") if transport == "unix" else elem.get("name")
    return name or "", elem.get("port"), transport


def _choice(
    source: str, elem: etree._Element, attr: str, allowed: tuple[str, ...], label: str = ""
) -> str | None:
    value = elem.get(attr)
    if value is not None and value not in allowed:
        prefix = f"{label}: " if label else ""
        raise _fail(source, elem, f"{prefix}{attr}={value!r} is not one of {', '.join(allowed)}")
    return value


def _integer(elem: etree._Element | None, source: str, meaning: str) -> int | None:
    if elem is None:
        return None
    value = _string(elem)
    number = int(value) if _C_INTEGER.fullmatch(value) else None
    if number is None or not _LLONG[0] <= number <= _LLONG[1]:
        raise _fail(source, elem, f"<{elem.tag}> {value!r} is not an integer ({meaning})")
    return number


def _active(elem: etree._Element | None, source: str) -> bool | None:
    number = _integer(elem, source, "1 for the current snapshot, 0 otherwise")
    return None if number is None else number != 0


def _is_full(domain: etree._Element) -> bool:
    """More than the ``<domain><uuid>`` libvirt writes when it has no definition."""
    if domain.attrib:
        return True
    return any(child.tag != "uuid" for child in domain.iterchildren(etree.Element))


def _content(elem: etree._Element | None) -> str | None:
    """The element's text as XPath string() gives it; empty counts as absent, as in libvirt."""
    return (_string(elem) or None) if elem is not None else None


def _string(elem: etree._Element) -> str:
    """XPath string(): all descendant text, without comments or processing instructions."""
    return "".join(t if isinstance(t, str) else t.decode() for t in elem.itertext())


def _line(elem: etree._Element) -> str:
    line = elem.sourceline
    return f"line {line}" if line else "line ?"


def _fail(source: str, elem: etree._Element, message: str) -> XMLError:
    return XMLError(f"{source}: {_line(elem)}: {message}")


class _RawText:
    """Top-level elements of a parsed document, as the exact text that wrote them.

    Falls back to lxml's serialization for an element whose text cannot stand on its
    own (it uses a namespace prefix declared on the root, say) or when the source
    bytes cannot be decoded.
    """

    def __init__(self, text: str | bytes, root: etree._Element) -> None:
        self._root = root
        self._text = text

    @overload
    def of(self, elem: etree._Element) -> str: ...
    @overload
    def of(self, elem: None) -> None: ...

    def of(self, elem: etree._Element | None) -> str | None:
        if elem is None:
            return None
        doc, spans = self._layout
        index = list(self._root.iterchildren(etree.Element)).index(elem)
        if doc is not None and index < len(spans):
            tag, start, end = spans[index]
            piece = doc[start:end]
            if tag == elem.tag and _stands_alone(piece, tag):
                return piece
        return etree.tostring(elem, encoding="unicode", with_tail=False)

    @cached_property
    def _layout(self) -> tuple[str | None, list[tuple[str, int, int]]]:
        """The document as text, and (tag as written, start, end) of each top-level element."""
        doc = self._decoded()
        spans: list[tuple[str, int, int]] = []
        depth = 0  # elements open before the token: 1 inside the root
        start = 0
        for token in _MARKUP.finditer(doc or ""):
            markup = token.group()
            if markup.startswith(("<!", "<?")):
                continue  # comment, CDATA section, processing instruction
            if markup.startswith("</"):
                depth -= 1
                if depth == 1:
                    spans.append((_tag_of(markup), start, token.end()))
            elif markup.endswith("/>"):
                if depth == 1:
                    spans.append((_tag_of(markup), token.start(), token.end()))
            else:
                if depth == 1:
                    start = token.start()
                depth += 1
        return doc, spans

    def _decoded(self) -> str | None:
        if isinstance(self._text, str):
            return self._text
        encoding = self._root.getroottree().docinfo.encoding or "utf-8"
        if encoding.lower().replace("-", "") == "utf8":
            encoding = "utf-8-sig"
        try:
            return self._text.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            return None


def _stands_alone(piece: str, tag: str) -> bool:
    try:
        return parse_xml(piece, "element").tag == tag
    except XMLError:
        return False


def _tag_of(markup: str) -> str:
    match = _TAG_NAME.match(markup)
    return match.group(1) if match else ""


# --------------------------------------------------------------- validation


def load_schema(path: str = SCHEMA_PATH) -> etree.RelaxNG:
    """Load libvirt's RelaxNG schema for snapshots (reads ``path`` and its includes)."""
    try:
        return etree.RelaxNG(file=path)
    except (OSError, etree.RelaxNGParseError, etree.XMLSyntaxError) as exc:
        raise XMLError(f"cannot load libvirt's snapshot schema {path}: {exc}") from None


def validate(text: str | bytes, schema: etree.RelaxNG) -> list[str]:
    """Check a document against ``schema``: a list of errors with line numbers, empty if valid."""
    try:
        root = parse_xml(text, "snapshot XML")
    except XMLError as exc:
        return [str(exc)]
    if schema.validate(root.getroottree()):
        return []
    errors = [
        f"line {entry.line}: {entry.message}" if entry.line > 0 else entry.message
        for entry in schema.error_log
    ]
    return errors or ["the document does not match the schema"]
