"""Read the parts of a libvirt ``<domain>`` document that snapshots depend on."""

from __future__ import annotations

import re

from lxml import etree

from snapshotd.core.model import DiskInfo, DomainInfo, DomainState
from snapshotd.errors import XMLError

# lxml parser that never resolves entities or reaches the network: domain XML
# comes from libvirt, but the same parser reads files users hand us.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")


def parse_xml(text: str | bytes, what: str) -> etree._Element:
    """Parse one XML document safely, or raise XMLError naming ``what``.

    Text (``str``) is already decoded, so an XML declaration naming another
    encoding is dropped before the text is handed to libxml2 as UTF-8.
    """
    data = _DECLARATION.sub("", text, count=1).encode() if isinstance(text, str) else text
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XMLError(f"{what}: not well-formed XML: {exc}") from None


def _disk(elem: etree._Element) -> DiskInfo | None:
    target = elem.find("target")
    dev = target.get("dev") if target is not None else None
    if not dev:
        return None
    source_type = elem.get("type", "file")
    source = elem.find("source")
    path = None
    protocol = None
    if source is not None:
        if source_type == "file":
            path = source.get("file")
        elif source_type == "block":
            path = source.get("dev")
        elif source_type == "dir":
            path = source.get("dir")
        elif source_type == "network":
            protocol = source.get("protocol")
        elif source_type == "volume":
            pool, vol = source.get("pool"), source.get("volume")
            protocol = f"volume {pool}/{vol}"
    driver = elem.find("driver")
    return DiskInfo(
        target=dev,
        device=elem.get("device", "disk"),
        source_type=source_type,
        format=driver.get("type") if driver is not None else None,
        path=path,
        protocol=protocol,
        readonly=elem.find("readonly") is not None,
        shareable=elem.find("shareable") is not None,
        snapshot_default=elem.get("snapshot"),
    )


def parse_domain(xml: str, state: DomainState) -> DomainInfo:
    """Turn a domain's XML (virDomainGetXMLDesc) and its state into a DomainInfo."""
    root = parse_xml(xml, "domain XML")
    if root.tag != "domain":
        raise XMLError(f"domain XML: root element is <{root.tag}>, expected <domain>")
    name = root.findtext("name")
    uuid = root.findtext("uuid")
    if not name or not uuid:
        raise XMLError("domain XML: <name> and <uuid> are required")
    disks = tuple(d for d in (_disk(e) for e in root.iterfind("devices/disk")) if d is not None)
    return DomainInfo(
        name=name,
        uuid=uuid,
        state=state,
        disks=disks,
        hypervisor=root.get("type", "kvm"),
        memory_kib=_kib(root.find("currentMemory")) or _kib(root.find("memory")),
    )


_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
}


def _kib(elem: etree._Element | None) -> int | None:
    """A <memory>-style element's size in KiB (libvirt's default unit), or None."""
    if elem is None or not (elem.text or "").strip().isdigit():
        return None
    factor = _UNITS.get(elem.get("unit", "KiB").lower())
    return None if factor is None else int(elem.text or "0") * factor // 1024


def machine_type(xml: str) -> tuple[str, str] | None:
    """(arch, machine) of a ``<domain>``'s ``<os><type arch=... machine=...>``, or None
    when it names no machine type."""
    root = parse_xml(xml, "domain XML")
    found = root.find("os/type")
    if found is None or not found.get("machine"):
        return None
    return found.get("arch") or "x86_64", str(found.get("machine"))


def machine_types(capabilities: str, arch: str) -> frozenset[str]:
    """Every machine type (names and the canonical names they stand for) that a host's
    capabilities XML offers for ``arch``, whatever the domain type."""
    root = parse_xml(capabilities, "host capabilities")
    names: set[str] = set()
    for guest in root.iterfind("guest"):
        found = guest.find("arch")
        if found is None or found.get("name") != arch:
            continue
        for machine in found.iter("machine"):
            if machine.text:
                names.add(machine.text.strip())
            if machine.get("canonical"):
                names.add(str(machine.get("canonical")))
    return frozenset(names)
