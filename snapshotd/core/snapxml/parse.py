"""Parsing any ``<domainsnapshot>`` document into SnapshotInfo, with libvirt's own rules
(virDomainSnapshotDefParse); what libvirt refuses is refused with its line.
"""

from __future__ import annotations

from functools import cached_property
from typing import cast, overload

from lxml import etree

from snapshotd.core.domain import parse_xml
from snapshotd.core.model import SnapshotDisk, SnapshotInfo
from snapshotd.core.snapxml.vocabulary import (
    _C_INTEGER,
    _LLONG,
    _MARKUP,
    _TAG_NAME,
    DISK_MODES,
    DISK_TYPES,
    DRIVER_FORMATS,
    MEMORY_MODES,
    NETWORK_PROTOCOLS,
    OFFLINE_STATES,
    STATES,
    TOP_LEVEL,
)
from snapshotd.errors import XMLError

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


def revert_disks(text: str | bytes, *, source: str = "snapshot XML") -> tuple[SnapshotDisk, ...]:
    """The ``<revertDisks>`` of libvirt's own snapshot XML: the overlays a revert to this
    snapshot made when it has children (libvirt 9.9 and newer keep its ``<disks>`` for the
    children then).  Empty when there are none."""
    root = parse_xml(text, source)
    return _disks(root.find("revertDisks"), source)


def named_files(text: str | bytes, *, source: str = "snapshot XML") -> tuple[str, ...]:
    """The files libvirt's snapshot XML says the snapshot made, in order, each once: its
    external disks' overlays, those a revert to it made (``<revertDisks>``), and its
    external memory file."""
    info = parse_snapshot(text, source=source)
    disks = info.disks + revert_disks(text, source=source)
    named = [d.source_file for d in disks if d.snapshot == "external" and d.source_file]
    if info.memory_file:
        named.append(info.memory_file)
    return tuple(dict.fromkeys(named))


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
