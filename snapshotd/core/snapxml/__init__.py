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

from snapshotd.core.snapxml.parse import named_files, parse_snapshot, revert_disks
from snapshotd.core.snapxml.render import render_catalog_only, render_info, render_spec
from snapshotd.core.snapxml.schema import load_schema, validate
from snapshotd.core.snapxml.vocabulary import SCHEMA_PATH

__all__ = [
    "SCHEMA_PATH",
    "load_schema",
    "named_files",
    "parse_snapshot",
    "render_catalog_only",
    "render_info",
    "render_spec",
    "revert_disks",
    "validate",
]
