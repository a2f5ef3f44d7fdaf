"""Validation against libvirt's RelaxNG schema (domainsnapshot.rng); load_schema is the
one function of snapxml that reads a file.
"""

from __future__ import annotations

from lxml import etree

from snapshotd.core.domain import parse_xml
from snapshotd.core.snapxml.vocabulary import (
    SCHEMA_PATH,
)
from snapshotd.errors import XMLError

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
