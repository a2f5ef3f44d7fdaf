"""FakeHypervisor: a small in-memory hypervisor behind snapshotd.actions.ports.HypervisorAPI.

It keeps what libvirt keeps for the actions: domains (their XML and state) and, per
domain, snapshots with libvirt's own XML (rendered with snapshotd.core.snapxml in the
form libvirt returns: name, description, state, parent, creationTime, memory, disks,
the domain's definition), the current snapshot and the parent links.  Creating a
snapshot does what libvirt does that the actions can see:

* an external disk gets its overlay: a file whose qcow2 header names the image it is
  built on (files.backing_chain reads it), and the domain's disk now uses it;
* external memory is written to its file; HALT leaves the domain shut off;
* NO_METADATA keeps nothing, and the request XML comes back, as the adapter returns it;
* a name that is taken, an overlay that exists, QUIESCE without a guest agent (or on a
  domain that is not running) fail with the codes and words libvirt 9.0 uses.

Reverting to an external snapshot depends on ``version``: before 9.9 libvirt refuses
it (config unsupported); from 9.9 it builds new overlays on the snapshot's images
(``<overlay>.<epoch>``), points the domain's disks at them and, when the snapshot has
no children, its ``<disks>`` too.  With no current snapshot the fake "crashes" as
libvirt 11.3 was seen to (``crashed`` is set, the connection's end-of-file error raised).

Errors are the adapter's: NotFoundError for a missing domain or snapshot, LibvirtError
(classified as the adapter classifies it) for the rest.  What it does not model it
refuses, with a LibvirtError that says so: deleting an external snapshot (libvirt
merges its overlays with a block commit).  Secrets are not modelled: the secure XML is
the plain XML.

Test controls: define(), set_state(), undefine(), fail_next_create(), commit_disk().
"""

from __future__ import annotations

import dataclasses
import struct
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from lxml import etree

from snapshotd.adapters import files
from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.adapters.hypervisor.errors import make_error
from snapshotd.core import snapxml
from snapshotd.core.domain import parse_domain, parse_xml
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState, SnapshotDisk, SnapshotInfo
from snapshotd.errors import LibvirtError, NotFoundError

VERSION = (9, 0, 0)  # the libvirt these tests stand in for
REVERT_EXTERNAL = (9, 9, 0)

_OFFLINE = frozenset({DomainState.SHUTOFF, DomainState.CRASHED, DomainState.NOSTATE})


def libvirt_error(
    message: str, *, code: int, operation: str, domain: str | None, origin: int = 0
) -> LibvirtError:
    """The LibvirtError the adapter makes of a libvirt error with this code and text."""
    return make_error(message, code=code, origin=origin, operation=operation, domain=domain)


def domain_xml(
    name: str,
    disks: Sequence[tuple[str, str]] = (),
    *,
    uuid: str | None = None,
    memory_mib: int = 64,
    virt_type: str = "kvm",
    machine: str | None = None,
) -> str:
    """A small domain definition: ``disks`` are (target, qcow2 image) pairs."""
    machine_attr = f" machine='{machine}'" if machine else ""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{path}'/><target dev='{target}' bus='virtio'/></disk>"
        for target, path in disks
    )
    return (
        f"<domain type='{virt_type}'><name>{name}</name><uuid>{uuid or uuidlib.uuid4()}</uuid>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64'{machine_attr}>hvm</type></os>"
        f"<devices>{disk_xml}</devices></domain>"
    )


def write_overlay(path: str, backing: str) -> None:
    """A file with the qcow2 header fields that name its backing file (no data)."""
    name = backing.encode()
    offset = 72
    header = b"QFI\xfb" + struct.pack(">IQI", 3, offset, len(name))
    Path(path).write_bytes(header.ljust(offset, b"\0") + name)


def _snapshot_state(state: DomainState, flags: CreateFlag) -> str:
    """libvirt's <state>: the domain's, or disk-snapshot for an online disk-only one."""
    if CreateFlag.DISK_ONLY in flags and state not in _OFFLINE:
        return "disk-snapshot"
    return state.value


@dataclass
class _Snapshot:
    info: SnapshotInfo
    xml: str


@dataclass
class _Domain:
    root: etree._Element  # the definition; disk sources follow external snapshots
    state: DomainState
    agent: bool  # a guest agent that answers
    snapshots: dict[str, _Snapshot] = field(default_factory=dict)  # in the order made
    current: str | None = None

    @property
    def name(self) -> str:
        return str(self.root.findtext("name"))

    @property
    def uuid(self) -> str:
        return str(self.root.findtext("uuid"))

    def text(self) -> str:
        return etree.tostring(self.root, encoding="unicode")

    def disk_source(self, target: str) -> etree._Element | None:
        for disk in self.root.iterfind("devices/disk"):
            found = disk.find("target")
            if found is not None and found.get("dev") == target:
                return disk.find("source")
        return None


class FakeHypervisor:
    """A hypervisor in memory: what the actions ask of libvirt, and nothing more."""

    def __init__(
        self,
        uri: str = "test:///fake",
        *,
        clock: Callable[[], float] = time.time,
        version: tuple[int, int, int] = VERSION,
        machines: Sequence[str] = ("pc-i440fx-7.2", "pc-q35-7.2"),
    ) -> None:
        self.uri = uri
        self._clock = clock  # libvirt's creationTime: the host's clock, in seconds
        self._version = version
        self._machines = tuple(machines)  # the machine types "QEMU" offers (capabilities)
        self.pools: dict[str, tuple[str, int, int]] = {}  # pool_space answers
        self._domains: list[_Domain] = []
        self._next_failure: LibvirtError | None = None
        self._failing: dict[str, LibvirtError] = {}  # domain UUID -> its creates' error
        # (suspend | resume | freeze | thaw | create, domain name), in order
        self.timeline: list[tuple[str, str]] = []
        self.creates = 0  # calls that reached "libvirt" (failed or not)
        self.crashed = False  # an external revert with no current snapshot (libvirt 11.3)

    # --- test controls ------------------------------------------------------------------

    def define(
        self, xml: str, *, state: DomainState = DomainState.RUNNING, agent: bool = False
    ) -> DomainInfo:
        """Add a domain from its XML, in ``state``; ``agent``: its guest agent answers."""
        found = _Domain(parse_xml(xml, "domain XML"), state, agent)
        self._domains.append(found)
        return self.domain(found.uuid)

    def set_state(self, name_or_uuid: str, state: DomainState) -> DomainInfo:
        self._find(name_or_uuid).state = state
        return self.domain(name_or_uuid)

    def undefine(self, name_or_uuid: str) -> None:
        self._domains.remove(self._find(name_or_uuid))

    def fail_next_create(self, error: LibvirtError) -> None:
        """The next snapshot create raises ``error`` (and changes nothing)."""
        self._next_failure = error

    def fail_creates_of(self, name_or_uuid: str, error: LibvirtError) -> None:
        """Every snapshot create of this domain raises ``error`` (and changes nothing)."""
        self._failing[self._find(name_or_uuid).uuid] = error

    def commit_disk(self, name_or_uuid: str, target: str) -> None:
        """As an active block commit and pivot: the disk uses its base image again."""
        source = self._find(name_or_uuid).disk_source(target)
        if source is None or source.get("file") is None:
            raise ValueError(f"disk {target} has no file")
        source.set("file", files.backing_chain(str(source.get("file")))[-1])

    # --- domains ------------------------------------------------------------------------

    def pool_space(self, path: str) -> tuple[str, int, int] | None:
        """``self.pools``: {directory: (pool, free, capacity)}, the deepest that holds it."""
        held = [d for d in self.pools if (path + "/").startswith(d.rstrip("/") + "/")]
        return self.pools[max(held, key=len)] if held else None

    def capabilities(self) -> str:
        machines = "".join(f"<machine>{m}</machine>" for m in self._machines)
        return (
            "<capabilities><host/><guest><os_type>hvm</os_type><arch name='x86_64'>"
            f"{machines}<domain type='qemu'/></arch></guest></capabilities>"
        )

    def libvirt_version(self) -> tuple[int, int, int]:
        return self._version

    def list_domains(self) -> list[DomainInfo]:
        return [self.domain(d.uuid) for d in self._domains]

    def domain(self, name_or_uuid: str) -> DomainInfo:
        found = self._find(name_or_uuid)
        return parse_domain(found.text(), found.state)

    def domain_state(self, uuid: str) -> DomainState | None:
        try:
            return self._find(uuid).state
        except NotFoundError:
            return None

    def domain_xml(self, name: str, *, inactive: bool = False, secure: bool = False) -> str:
        return self._find(name).text()

    def _find(self, name_or_uuid: str) -> _Domain:
        for found in self._domains:
            if name_or_uuid.lower() == found.uuid.lower() or name_or_uuid == found.name:
                return found
        raise NotFoundError(f"domain {name_or_uuid!r} not found: no domain has that name")

    # --- snapshots ----------------------------------------------------------------------

    def list_snapshots(self, domain: str) -> list[SnapshotRecord]:
        found = self._find(domain)
        ordered: list[str] = []

        def visit(parent: str | None) -> None:
            for name, snap in found.snapshots.items():
                if snap.info.parent == parent:
                    ordered.append(name)
                    visit(name)

        visit(None)
        return [
            SnapshotRecord(
                n, found.snapshots[n].xml, n == found.current, found.snapshots[n].info.parent
            )
            for n in ordered
        ]

    def snapshot_xml(self, domain: str, snapshot: str, *, secure: bool = False) -> str:
        return self._snapshot(domain, snapshot).xml

    def snapshot_created(self, domain: str, snapshot: str) -> int | None:
        snap = self._find(domain).snapshots.get(snapshot)
        if snap is None:
            return None
        return snap.info.creation_time or 0

    def current_snapshot(self, domain: str) -> str | None:
        return self._find(domain).current

    def _snapshot(self, domain: str, snapshot: str) -> _Snapshot:
        snap = self._find(domain).snapshots.get(snapshot)
        if snap is None:
            raise NotFoundError(f"domain {domain!r} has no snapshot {snapshot!r}")
        return snap

    def create_snapshot_secure(
        self,
        domain: str,
        xml: str,
        flags: CreateFlag,
        *,
        uuid: str | None = None,
        after: Callable[[], object] | None = None,
    ) -> tuple[str, str]:
        made = self._create(domain, xml, flags, uuid)
        if after is not None:
            after()
        return made

    def _create(
        self, domain: str, xml: str, flags: CreateFlag, uuid: str | None
    ) -> tuple[str, str]:
        found = self._find(uuid or domain)
        self.creates += 1
        self.timeline.append(("create", found.name))
        failure, self._next_failure = self._next_failure, None
        failure = failure or self._failing.get(found.uuid)
        if failure is not None:
            raise failure
        request = snapxml.parse_snapshot(xml, source="snapshot request")
        name = request.name or str(int(self._clock()))
        self._refuse(found, domain, name, request, flags)
        before = found.text()
        for disk in request.disks:
            if disk.snapshot == "external" and disk.source_file:
                source = found.disk_source(disk.name)
                backing = source.get("file") if source is not None else None
                write_overlay(disk.source_file, backing or "")
                if source is not None:
                    source.set("file", disk.source_file)
        if request.memory == "external" and request.memory_file:
            Path(request.memory_file).write_bytes(b"guest memory")
        if CreateFlag.HALT in flags:
            found.state = DomainState.SHUTOFF
        if CreateFlag.NO_METADATA in flags:
            return xml, xml
        info = dataclasses.replace(
            request,
            state=_snapshot_state(found.state, flags),
            parent=found.current,
            creation_time=int(self._clock()),
            domain_xml=before,
        )
        made = _Snapshot(info, snapxml.render_info(info))
        found.snapshots[name] = made
        found.current = name
        return made.xml, made.xml

    def _refuse(
        self, found: _Domain, domain: str, name: str, request: SnapshotInfo, flags: CreateFlag
    ) -> None:
        """What libvirt refuses before it changes anything."""
        op = "create snapshot"
        if name in found.snapshots:
            raise libvirt_error(
                f"operation failed: domain moment {name} already exists",
                code=libvirt.VIR_ERR_OPERATION_FAILED,
                operation=op,
                domain=domain,
            )
        if CreateFlag.QUIESCE in flags and found.state is not DomainState.RUNNING:
            raise libvirt_error(
                "Requested operation is not valid: domain is not running",
                code=libvirt.VIR_ERR_OPERATION_INVALID,
                operation=op,
                domain=domain,
            )
        if CreateFlag.QUIESCE in flags and not found.agent:
            raise libvirt_error(
                "argument unsupported: QEMU guest agent is not configured",
                code=libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                operation=op,
                domain=domain,
            )
        reuse = CreateFlag.REUSE_EXT in flags
        for disk in request.disks:
            path = disk.source_file
            if disk.snapshot == "external" and path and Path(path).exists() and not reuse:
                raise libvirt_error(
                    "unsupported configuration: external snapshot file for disk "
                    f"{disk.name} already exists and is not a block device: {path}",
                    code=libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
                    operation=op,
                    domain=domain,
                )

    def redefine_snapshot(self, domain: str, xml: str, *, current: bool = False) -> str:
        found = self._find(domain)
        info = snapxml.parse_snapshot(xml, source="snapshot to redefine")
        name = info.name
        if name is None:
            raise libvirt_error(
                "XML error: a redefined snapshot must have a name",
                code=libvirt.VIR_ERR_XML_ERROR,
                operation="redefine snapshot",
                domain=domain,
            )
        info = dataclasses.replace(info, current=None)
        found.snapshots[name] = _Snapshot(info, snapxml.render_info(info))
        if current:
            found.current = name
        return name

    def delete_snapshot(self, domain: str, snapshot: str, *, metadata_only: bool = False) -> None:
        found = self._find(domain)
        gone = self._snapshot(domain, snapshot)
        external = gone.info.memory == "external" or any(
            d.snapshot == "external" for d in gone.info.disks
        )
        if external and not metadata_only:
            raise libvirt_error(
                "this operation is not supported: FakeHypervisor does not merge an external "
                "snapshot's overlays (delete it with metadata_only)",
                code=libvirt.VIR_ERR_NO_SUPPORT,
                operation=f"delete snapshot {snapshot!r}",
                domain=domain,
            )
        del found.snapshots[snapshot]
        parent = gone.info.parent
        for name, child in found.snapshots.items():  # children move up to its parent
            if child.info.parent == snapshot:
                info = dataclasses.replace(child.info, parent=parent)
                found.snapshots[name] = _Snapshot(info, snapxml.render_info(info))
        if found.current == snapshot:
            found.current = parent

    def revert_snapshot(
        self, domain: str, snapshot: str, *, running: bool = False, paused: bool = False
    ) -> None:
        found = self._find(domain)
        snap = self._snapshot(domain, snapshot)
        disks: tuple[SnapshotDisk, ...] = snap.info.disks
        external = snap.info.memory == "external" or any(d.snapshot == "external" for d in disks)
        if external and self._version < REVERT_EXTERNAL:
            raise libvirt_error(
                "unsupported configuration: revert to external snapshot not supported yet",
                code=libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
                operation=f"revert to snapshot {snapshot!r}",
                domain=domain,
            )
        if external:
            self._revert_external(found, snapshot, snap)
        if running:
            found.state = DomainState.RUNNING
        elif paused:
            found.state = DomainState.PAUSED
        elif snap.info.state in {"running", "paused"}:
            found.state = DomainState(snap.info.state)
        else:
            found.state = DomainState.SHUTOFF
        found.current = snapshot

    def _revert_external(self, found: _Domain, name: str, snap: _Snapshot) -> None:
        if found.current is None:
            self.crashed = True
            raise libvirt_error(
                "End of file while reading data: Input/output error",
                code=libvirt.VIR_ERR_SYSTEM_ERROR,
                origin=libvirt.VIR_FROM_RPC,
                operation=f"revert to snapshot {name!r}",
                domain=found.name,
            )
        epoch = int(self._clock())
        then = parse_xml(snap.info.domain_xml or found.text(), "snapshot's domain")
        bases = {
            str(d.find("target").get("dev")): str(d.find("source").get("file", ""))  # type: ignore[union-attr]
            for d in then.iterfind("devices/disk")
            if d.find("target") is not None and d.find("source") is not None
        }
        disks = []
        for disk in snap.info.disks:
            if disk.snapshot != "external" or not disk.source_file:
                disks.append(disk)
                continue
            overlay = f"{disk.source_file}.{epoch}"
            write_overlay(overlay, bases.get(disk.name, ""))
            source = found.disk_source(disk.name)
            if source is not None:
                source.set("file", overlay)
            disks.append(dataclasses.replace(disk, source_file=overlay))
        if not any(s.info.parent == name for s in found.snapshots.values()):
            info = dataclasses.replace(snap.info, disks=tuple(disks))
            found.snapshots[name] = _Snapshot(info, snapxml.render_info(info))

    # --- holding domains still ------------------------------------------------------------

    @property
    def holds(self) -> list[tuple[str, str]]:
        """The suspends, resumes, freezes and thaws, in order (the timeline without creates)."""
        return [event for event in self.timeline if event[0] != "create"]

    def suspend(self, domain: str) -> None:
        self._switch(domain, "suspend", DomainState.RUNNING, DomainState.PAUSED)

    def resume(self, domain: str) -> None:
        self._switch(domain, "resume", DomainState.PAUSED, DomainState.RUNNING)

    def _switch(self, domain: str, operation: str, was: DomainState, to: DomainState) -> None:
        """virDomainSuspend / virDomainResume: refused, as libvirt does, unless ``was``."""
        found = self._find(domain)
        if found.state is not was:
            why = {DomainState.RUNNING: "running", DomainState.PAUSED: "paused"}[was]
            raise libvirt_error(
                f"Requested operation is not valid: domain is not {why}",
                code=libvirt.VIR_ERR_OPERATION_INVALID,
                operation=operation,
                domain=found.name,
            )
        found.state = to
        self.timeline.append((operation, found.name))

    def freeze(self, domain: str) -> None:
        found = self._find(domain)
        if not found.agent:
            raise libvirt_error(
                "Guest agent is not responding: QEMU guest agent is not connected",
                code=libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                operation="freeze file systems",
                domain=found.name,
            )
        self.timeline.append(("freeze", found.name))

    def thaw(self, domain: str) -> bool:
        found = self._find(domain)
        self.timeline.append(("thaw", found.name))
        return found.agent
