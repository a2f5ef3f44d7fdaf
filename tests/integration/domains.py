"""Throwaway QEMU domains for the integration tests, made and removed through real libvirt.

tests/integration/conftest.py builds the fixtures on this module; tests import DiskSpec
(and, for type hints, ScratchDomain and DomainFactory) from here.

Every domain is named ``<session prefix><suffix>``, where the prefix
(``snapshotd-test-<8 hex>-``) is new for each pytest session, and gets a directory of
its own that holds its images and whatever its snapshots write.  Removal only ever acts
on domains whose name carries this session's prefix.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

MIB = 1 << 20

COMMIT_WAIT = 30  # seconds an active block commit of a test disk may take

# Disks are attached to the bus their target name implies.
_BUS_BY_PREFIX = {"vd": "virtio", "hd": "ide", "sd": "sata"}

# Everything undefine may have to drop along with the domain.
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a scratch domain."""

    target: str = "vda"  # vdX: virtio, hdX: ide, sdX: sata
    format: str = "qcow2"  # qcow2 | raw
    size: int = 16 * MIB  # bytes
    device: str = "disk"  # disk | cdrom
    readonly: bool = False
    shareable: bool = False
    empty: bool = False  # a drive with no medium and no image (an empty cdrom)
    snapshot: str | None = None  # the domain's <disk snapshot='...'> default, if any

    @property
    def bus(self) -> str:
        try:
            return _BUS_BY_PREFIX[self.target[:2]]
        except KeyError:
            raise ValueError(f"disk target {self.target!r} is not vdX, hdX or sdX") from None


@dataclass
class ScratchDomain:
    """A domain made by DomainFactory: the libvirt object and what the test may need."""

    dom: Any  # libvirt.virDomain on the session's connection
    name: str
    uuid: str
    directory: Path  # the domain's own directory: images, overlays, memory files
    disks: dict[str, Path | None]  # target -> image file (None: empty drive)
    removed: bool = field(default=False, repr=False)

    def image(self, target: str) -> Path:
        """The image file of disk ``target`` (which must have one)."""
        path = self.disks[target]
        if path is None:
            raise ValueError(f"{self.name}: disk {target} is an empty drive")
        return path

    def state(self) -> int:
        """The domain's current VIR_DOMAIN_* state code."""
        return int(self.dom.state()[0])


def domain_xml(
    name: str, virt_type: str, disks: Iterable[tuple[DiskSpec, Path | None]], memory_mib: int
) -> str:
    """The smallest domain that runs: no OS (SeaBIOS idles), no graphics, no network."""
    disk_xml = []
    for spec, path in disks:
        source = f"<source file='{path}'/>" if path is not None else ""
        driver = f"<driver name='qemu' type='{spec.format}'/>" if path is not None else ""
        snapshot = f" snapshot='{spec.snapshot}'" if spec.snapshot else ""
        flags = ("<readonly/>" if spec.readonly else "") + (
            "<shareable/>" if spec.shareable else ""
        )
        disk_xml.append(
            f"<disk type='file' device='{spec.device}'{snapshot}>{driver}{source}"
            f"<target dev='{spec.target}' bus='{spec.bus}'/>{flags}</disk>"
        )
    return f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    {"".join(disk_xml)}
    <serial type='null'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _make_image(spec: DiskSpec, path: Path) -> None:
    if spec.format == "raw":
        with path.open("wb") as image:  # sparse: costs no disk space
            image.truncate(spec.size)
    else:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", spec.format, str(path), str(spec.size)],
            check=True,
        )


class DomainFactory:
    """Creates scratch domains, and removes them: on request, at cleanup() or on sweep()."""

    _counter = itertools.count(1)  # suffixes are unique across the whole session

    def __init__(self, conn: Any, prefix: str, root: Path, virt_type: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.root = root
        self.virt_type = virt_type
        self.made: list[ScratchDomain] = []

    def __call__(
        self,
        disks: Iterable[DiskSpec | Mapping[str, Any]] = (DiskSpec(),),
        state: str = "running",
        *,
        suffix: str | None = None,
        memory_mib: int = 64,
    ) -> ScratchDomain:
        """Make a domain in ``state`` ("running", "paused" or "shutoff") with ``disks``."""
        if state not in {"running", "paused", "shutoff"}:
            raise ValueError(f"state must be running, paused or shutoff, not {state!r}")
        specs = [d if isinstance(d, DiskSpec) else DiskSpec(**d) for d in disks]
        name = self.prefix + (suffix or f"d{next(self._counter):03d}")
        directory = self.root / name
        directory.mkdir(parents=True)
        images: dict[str, Path | None] = {}
        try:
            for spec in specs:
                path = None if spec.empty else directory / f"{spec.target}.{spec.format}"
                if path is not None:
                    _make_image(spec, path)
                images[spec.target] = path
            xml = domain_xml(
                name, self.virt_type, ((s, images[s.target]) for s in specs), memory_mib
            )
            dom = self.conn.defineXML(xml)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        made = ScratchDomain(dom, name, str(dom.UUIDString()), directory, images)
        self.made.append(made)
        if state != "shutoff":
            dom.create()
            if state == "paused":
                dom.suspend()
        return made

    def remove(self, domain: ScratchDomain) -> None:
        """Destroy, drop snapshot metadata, undefine and delete the directory.  Idempotent."""
        if domain.removed:
            return
        remove_domain(self.conn, domain.name, self.prefix)
        shutil.rmtree(domain.directory, ignore_errors=True)
        domain.removed = True

    def cleanup(self) -> None:
        """Remove every domain this factory made (pass or fail); raise the first error."""
        errors: list[BaseException] = []
        for domain in reversed(self.made):
            try:
                self.remove(domain)
            except Exception as exc:  # noqa: BLE001 - clean up the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def sweep(self) -> list[str]:
        """Remove every domain with this factory's prefix, then its root directory.

        Returns the names it removed; raises the first error after trying them all.
        """
        swept, errors = [], []
        for dom in self.conn.listAllDomains(0):
            name = str(dom.name())
            if name.startswith(self.prefix):
                try:
                    remove_domain(self.conn, name, self.prefix)
                    swept.append(name)
                except Exception as exc:  # noqa: BLE001 - sweep the rest, then report
                    errors.append(exc)
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise errors[0]
        return swept


def commit_active(dom: Any, target: str) -> None:
    """Merge disk ``target``'s active overlay down to its base, as ``virsh blockcommit
    --active --pivot`` does, and return once the domain writes to the base again."""
    dom.blockCommit(target, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    deadline = time.monotonic() + COMMIT_WAIT
    while True:
        # cur == end is not enough (both are 0 before the job starts copying): pivot
        # until libvirt no longer says the job is not ready for it.
        try:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            return
        except libvirt.libvirtError as exc:
            if "not ready for pivot" not in str(exc):
                raise
        assert time.monotonic() < deadline, f"the block commit of {target} did not finish"
        time.sleep(0.1)


def remove_domain(conn: Any, name: str, prefix: str) -> None:
    """Make domain ``name`` gone from libvirt, whatever state a test left it in."""
    if not name.startswith(prefix):  # never touch a domain this session did not make
        raise ValueError(f"refusing to remove {name!r}: it lacks the prefix {prefix!r}")
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return  # the test removed it itself
        raise
    # Stopping may race with the domain stopping on its own ("domain is not running").
    with _ignoring(libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
        if dom.isActive():
            dom.destroy()  # a transient domain is gone after this
    with _ignoring(libvirt.VIR_ERR_NO_DOMAIN):
        if dom.isPersistent():
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError:
                # Fallback in case a libvirt refuses to drop some snapshots' metadata
                # wholesale: drop it one snapshot at a time, children first, then retry.
                flag = libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL
                for snapshot in reversed(dom.listAllSnapshots(flag)):
                    snapshot.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
                dom.undefineFlags(_UNDEFINE_FLAGS)


@contextlib.contextmanager
def _ignoring(*codes: int) -> Iterator[None]:
    """Swallow libvirt errors with these codes (the domain is already gone, say)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in codes:
            raise
