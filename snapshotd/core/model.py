"""Typed, immutable models shared by the pure core and the edges.

Nothing here imports libvirt.  Where a value mirrors a libvirt enum, the numeric
values are written out and the libvirt adapter checks at import time that they
still agree with the bindings it loads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class DomainState(enum.StrEnum):
    """A domain's state as virDomainGetState reports it."""

    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # being shut down: the guest is still running
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"

    @classmethod
    def from_libvirt(cls, code: int) -> DomainState:
        """Map VIR_DOMAIN_* state codes (0..7) to a state; unknown codes are NOSTATE."""
        order = [
            cls.NOSTATE,
            cls.RUNNING,
            cls.BLOCKED,
            cls.PAUSED,
            cls.SHUTDOWN,
            cls.SHUTOFF,
            cls.CRASHED,
            cls.PMSUSPENDED,
        ]
        return order[code] if 0 <= code < len(order) else cls.NOSTATE


class Request(enum.StrEnum):
    """What a user asks for memory or a disk, in the seed table's words.

    ``OMIT`` is the seed's "omit" (no element in the XML); user interfaces call it
    "auto".
    """

    OMIT = "omit"
    NO = "no"
    INTERNAL = "internal"
    EXTERNAL = "external"

    @classmethod
    def parse(cls, text: str) -> Request:
        """Accept the user-facing spelling ("auto" means omit)."""
        word = text.strip().lower()
        if word == "auto":
            return cls.OMIT
        try:
            return cls(word)
        except ValueError:
            choices = "auto, no, internal, external"
            raise ValueError(f"{text!r} is not one of {choices}") from None


class Location(enum.StrEnum):
    """A resolved snapshot location, as libvirt's snapshot='...' attribute spells it."""

    NO = "no"
    INTERNAL = "internal"
    EXTERNAL = "external"


class Method(enum.StrEnum):
    """How QEMU carries out a snapshot (the seed's "via ..." column)."""

    QEMU_IMG = "qemu-img"
    SAVEVM = "savevm"
    TRANSACTION = "transaction"
    MIGRATE = "migrate"
    MIGRATE_TRANSACTION = "migrate+transaction"


class CreateFlag(enum.IntFlag):
    """virDomainSnapshotCreateFlags, with libvirt's numeric values."""

    REDEFINE = 1 << 0
    CURRENT = 1 << 1
    NO_METADATA = 1 << 2
    HALT = 1 << 3
    DISK_ONLY = 1 << 4
    REUSE_EXT = 1 << 5
    QUIESCE = 1 << 6
    ATOMIC = 1 << 7
    LIVE = 1 << 8
    VALIDATE = 1 << 9

    def names(self) -> list[str]:
        """The set flags' names in libvirt's order, for people and JSON."""
        return [flag.name for flag in CreateFlag if flag in self and flag.name is not None]


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """One ``<disk>`` of a domain, as far as snapshots care."""

    target: str
    device: str = "disk"  # disk | cdrom | floppy | lun
    source_type: str = "file"  # file | block | network | volume | dir | nvme | vhostuser
    format: str | None = None  # <driver type=...>
    path: str | None = None  # source file= or dev=, absent for network and empty drives
    protocol: str | None = None  # network disks: rbd, gluster, nbd, ...
    readonly: bool = False
    shareable: bool = False
    snapshot_default: str | None = None  # the domain's own <disk snapshot='...'>

    @property
    def empty(self) -> bool:
        """A drive with no medium (an empty cdrom, for example)."""
        return self.path is None and self.source_type in {"file", "block"}

    @property
    def describe(self) -> str:
        """A short human description: "vda (qcow2 file /var/lib/x.qcow2)"."""
        what = self.format or "unknown format"
        where = self.path or (f"{self.protocol} network volume" if self.protocol else "no medium")
        kind = self.device if self.device != "disk" else self.source_type
        return f"{self.target} ({what} {kind} {where})"


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What the planner needs to know about a domain."""

    name: str
    uuid: str
    state: DomainState
    disks: tuple[DiskInfo, ...] = ()
    hypervisor: str = "kvm"  # the domain's type= attribute
    memory_kib: int | None = None  # <currentMemory> (else <memory>), for progress reports


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """A request for one snapshot: the CLI's options, or one policy's snapshot block.

    ``disk`` maps a disk, named by target ("vda") or by source path, to a request;
    every disk not named there gets ``disks``.
    """

    name: str
    memory: Request = Request.OMIT
    disks: Request = Request.OMIT
    disk: tuple[tuple[str, Request], ...] = ()
    disk_only: bool = False
    quiesce: bool = False
    live: bool = False
    atomic: bool = True
    reuse_external: bool = False
    no_metadata: bool = False
    description: str | None = None
    directory: str | None = None  # None: external disk files go beside their image
    disk_file_template: str = "{domain}.{disk}.{snapshot}.qcow2"
    memory_file_template: str = "{domain}.{snapshot}.memory"


@dataclass(frozen=True, slots=True)
class DiskPlan:
    """The resolved fate of one disk in a snapshot."""

    target: str
    location: Location
    reason: str  # why this disk got this location, for plan output
    source: str | None = None  # the image the disk uses now
    new_file: str | None = None  # external only: the overlay to create
    new_format: str | None = None  # external only: the overlay's format (qcow2)


@dataclass(frozen=True, slots=True)
class SnapshotSpec:
    """A complete, valid snapshot plan: everything needed to call libvirt."""

    domain: str
    name: str
    description: str | None
    memory: Location
    memory_file: str | None
    disks: tuple[DiskPlan, ...]
    flags: CreateFlag
    method: Method
    row: int  # the seed table row (1-based) that applied
    allowed_directories: tuple[str, ...] = ()  # every new file must stay inside one of them

    @property
    def new_files(self) -> tuple[str, ...]:
        """Every file this snapshot will create."""
        files = [d.new_file for d in self.disks if d.new_file]
        if self.memory_file:
            files.append(self.memory_file)
        return tuple(files)


@dataclass(frozen=True, slots=True)
class SnapshotDisk:
    """One ``<disk>`` inside ``<domainsnapshot><disks>``."""

    name: str
    snapshot: str | None = None  # no | internal | external | manual (None: not stated)
    type: str | None = None  # file | block | network | ...
    driver_type: str | None = None
    source_file: str | None = None
    source_dev: str | None = None
    source_protocol: str | None = None
    source_name: str | None = None
    source_hosts: tuple[tuple[str, str | None, str | None], ...] = ()  # (name, port, transport)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A parsed ``<domainsnapshot>`` document, as libvirt returns it or a user writes it."""

    name: str | None
    description: str | None = None
    state: str | None = None  # a domain state, or "disk-snapshot"
    creation_time: int | None = None
    parent: str | None = None
    memory: str | None = None  # no | internal | external
    memory_file: str | None = None
    disks: tuple[SnapshotDisk, ...] = ()
    domain_uuid: str | None = None
    domain_xml: str | None = None  # the full <domain>, verbatim
    inactive_domain_xml: str | None = None  # the <inactiveDomain>, verbatim
    cookie_xml: str | None = None  # the hypervisor's <cookie>, verbatim
    current: bool | None = None  # <active>1</active> in libvirt's internal form
    extra: tuple[str, ...] = field(default=())  # names of elements kept but not modelled
