"""The words of libvirt's snapshot XML that render and parse share: states, modes,
disk types, driver formats, the element order, and the character rules of XML."""

from __future__ import annotations

import re

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
