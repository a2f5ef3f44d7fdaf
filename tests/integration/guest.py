"""A small real Linux guest with qemu-guest-agent, for tests that need a guest OS.

scripts/guest-image.sh builds it once into the cache (``CACHE``): a Debian kernel booted
directly, an initramfs that is the whole guest (busybox and qemu-ga), and an ext4 data disk
template.  Each guest gets its own copy of the data disk, mounted at /data in the guest.
Booting takes a few seconds under TCG.

What the guest offers through its agent: guest-exec, guest-file-*, guest-fsfreeze-*; its
fsfreeze hook logs to /run/freeze.log (``Guest.freeze_log``) and can be made to hang
(``Guest.set_freeze_delay``).  While the guest is frozen the agent answers only guest-ping,
guest-info, guest-sync*, guest-fsfreeze-status and guest-fsfreeze-thaw: exec and file
commands fail until it is thawed.

The domain XML names every file by its absolute path under the cache or under
target.ROOT, which a second host (scripts/host2.sh) sees at the same paths.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt

# libvirt-python ships no type information; mypy's override in pyproject.toml names only
# the libvirt module.
import libvirt_qemu  # type: ignore[import-untyped]

from tests.integration.domains import remove_domain
from tests.integration.target import REPO, ROOT

CACHE = Path(os.environ.get("SNAPSHOTD_TEST_CACHE", "/var/cache/snapshotd-tests")) / "guest"
KERNEL = CACHE / "vmlinux"
INITRD = CACHE / "initramfs.cpio.gz"
DATA_TEMPLATE = CACHE / "data.qcow2"
STAMP = CACHE / "stamp"

AGENT_CHANNEL = "org.qemu.guest_agent.0"
# The data disk is libvirt's vdb on the virtio bus (qcow2, QEMU's default cache mode, so a
# guest flush reaches the image file).  vdb rather than vda: the guest has no root disk, and
# vda stays free for a test that adds a disk of its own.  Inside the guest it is the first
# virtio disk whatever libvirt calls it (/dev/vda); the guest finds it by its label.
DATA_TARGET = "vdb"
DATA_LABEL = "snapdata"
DATA_MOUNT = "/data"
CONSOLE_LOG = "console.log"  # in the guest's directory: the serial console, ttyS0
FREEZE_LOG = "/run/freeze.log"
FREEZE_DELAY = "/run/freeze-delay"
# Kernel messages down to warnings, so the console log shows what went wrong; a kernel
# panic (PID 1 died) reboots at once, and on_reboot=destroy stops the domain then.
CMDLINE = "console=ttyS0 loglevel=4 panic=-1 mitigations=off"

_FILE_CHUNK = 48 * 1024  # bytes per guest-file-read/-write (well below the agent's limits)


def ensure_image() -> Path:
    """Build the guest image unless it is cached (scripts/guest-image.sh); return CACHE."""
    script = REPO / "scripts" / "guest-image.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{script} failed with status {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return CACHE


def guest_virt_type() -> str:
    """'kvm' only with hardware KVM: /dev/kvm served by kvm_pvm (a software hypervisor)
    took over 75 s to boot the kernel, TCG ('qemu') 4-5 s."""
    hardware = any(Path("/sys/module", m).exists() for m in ("kvm_intel", "kvm_amd"))
    return "kvm" if hardware else "qemu"


def guest_xml(
    name: str,
    virt_type: str,
    data_disk: Path,
    agent: bool = True,
    memory_mib: int = 256,
    raw_disks: Sequence[tuple[str, Path]] = (),
) -> str:
    """The guest's domain XML: direct kernel boot, ``data_disk`` (qcow2) as vdb, the agent
    channel (when ``agent``), the serial console into console.log beside the data disk (the
    domain's directory); no graphics, no network, no balloon.  ``raw_disks``: more qcow2
    disks without a filesystem, (target, image); each has its target as its serial, which
    the guest shows in /sys/block/*/serial (``Guest.device``)."""
    channel = (
        f"<channel type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/></channel>"
        if agent
        else ""
    )
    extra = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{image}'/>
      <target dev='{target}' bus='virtio'/>
      <serial>{target}</serial>
    </disk>"""
        for target, image in raw_disks
    )
    return f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{KERNEL}</kernel>
    <initrd>{INITRD}</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{data_disk}'/>
      <target dev='{DATA_TARGET}' bus='virtio'/>
    </disk>{extra}
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{data_disk.parent / CONSOLE_LOG}'/>
      <target port='0'/>
    </serial>
    {channel}
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class AgentError(RuntimeError):
    """An agent command failed; the message names it and ends with the console's tail."""


class Guest:
    """A running guest domain and its agent, through libvirt (qemuAgentCommand)."""

    def __init__(self, dom: Any, directory: Path) -> None:
        self.dom = dom  # libvirt.virDomain
        self.name = str(dom.name())
        self.directory = directory
        self.data_disk = directory / "data.qcow2"
        self.boot_seconds: float | None = None  # make_guest: from define to a running agent

    @property
    def console_log(self) -> Path:
        return self.directory / CONSOLE_LOG

    def console_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines the guest wrote on its serial console."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError as exc:
            return f"(no console log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str, why: object) -> AgentError:
        return AgentError(
            f"{self.name}: {what}: {why}\n--- serial console, last lines ---\n{self.console_tail()}"
        )

    def command(
        self, execute: str, arguments: dict[str, Any] | None = None, timeout: int = 10
    ) -> Any:
        """Run one agent command and return its "return" value.

        ``timeout`` is in seconds, or one of libvirt's VIR_DOMAIN_QEMU_AGENT_COMMAND_*
        values (-2 block, -1 default, 0 no wait).
        """
        cmd: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            cmd["arguments"] = arguments
        try:
            reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(cmd), timeout, 0)
        except libvirt.libvirtError as exc:
            raise self._fail(execute, exc) from exc
        try:
            return json.loads(reply)["return"]
        except (ValueError, KeyError, TypeError) as exc:
            raise self._fail(execute, f"unexpected reply {reply!r}") from exc

    def boot(self, timeout: float = 60.0) -> float:
        """Wait until the agent answers guest-ping; return the seconds that took."""
        start = time.monotonic()
        deadline = start + timeout
        last: object = "no answer yet"
        while True:
            if not self.dom.isActive():
                raise self._fail("guest-ping", "the domain stopped before its agent answered")
            try:
                self.command("guest-ping", timeout=2)
                return time.monotonic() - start
            except AgentError as exc:
                last = exc.__cause__ or exc
            if time.monotonic() > deadline:
                raise self._fail("guest-ping", f"no answer within {timeout} s (last: {last})")
            time.sleep(0.2)

    def exec(
        self, argv: list[str], timeout: float = 30.0, stdin: bytes | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the guest (guest-exec, guest-exec-status); return its exit code
        (minus the signal number when a signal ended it), stdout and stderr."""
        arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        pid = self.command("guest-exec", arguments)["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self.command("guest-exec-status", {"pid": pid})
            if status["exited"]:
                break
            if time.monotonic() > deadline:
                raise self._fail("guest-exec-status", f"{argv} still running after {timeout} s")
            time.sleep(0.05)
        code = int(status["exitcode"]) if "exitcode" in status else -int(status.get("signal", 0))
        out = base64.b64decode(status.get("out-data", ""))
        err = base64.b64decode(status.get("err-data", ""))
        return code, out, err

    def read_file(self, path: str) -> bytes:
        """The contents of ``path`` in the guest (guest-file-open/-read/-close)."""
        handle = self.command("guest-file-open", {"path": path, "mode": "r"})
        try:
            data = bytearray()
            while True:
                chunk = self.command("guest-file-read", {"handle": handle, "count": _FILE_CHUNK})
                data += base64.b64decode(chunk["buf-b64"])
                if chunk["eof"] or not chunk["count"]:
                    return bytes(data)
        finally:
            self.command("guest-file-close", {"handle": handle})

    def write_file(self, path: str, data: bytes) -> None:
        """Make ``path`` in the guest hold ``data`` (guest-file-open/-write/-flush/-close)."""
        handle = self.command("guest-file-open", {"path": path, "mode": "w"})
        try:
            for at in range(0, len(data), _FILE_CHUNK):
                piece = base64.b64encode(data[at : at + _FILE_CHUNK]).decode()
                self.command("guest-file-write", {"handle": handle, "buf-b64": piece})
            self.command("guest-file-flush", {"handle": handle})
        finally:
            self.command("guest-file-close", {"handle": handle})

    def freeze_log(self) -> list[tuple[float, str]]:
        """The fsfreeze hook's log: (guest clock epoch seconds, "freeze" | "thaw" |
        "freeze-delay N"), oldest first.  Unreadable while the guest is frozen."""
        entries = []
        for line in self.read_file(FREEZE_LOG).decode().splitlines():
            stamp, _, what = line.partition(" ")
            entries.append((float(stamp), what))
        return entries

    def set_freeze_delay(self, seconds: float | None) -> None:
        """Make the fsfreeze hook sleep ``seconds`` before each freeze (None: not at all)."""
        if seconds is None:
            code, _, err = self.exec(["rm", "-f", FREEZE_DELAY])
            if code != 0:
                raise self._fail("guest-exec rm", err.decode(errors="replace"))
        else:
            self.write_file(FREEZE_DELAY, f"{seconds:g}\n".encode())

    def device(self, serial: str) -> str:
        """The guest's /dev path of the disk whose serial is ``serial`` (guest_xml gives
        each raw disk its target as serial)."""
        script = (
            'for b in /sys/block/vd*; do [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] '
            '&& echo "/dev/${b##*/}"; done; true'
        )
        code, out, err = self.exec(["sh", "-c", script, "sh", serial])
        found = out.decode().split()
        if code != 0 or len(found) != 1:
            raise self._fail(f"find the disk with serial {serial!r}", err.decode() or found)
        return found[0]

    def fs_frozen(self) -> bool:
        """Are the guest's filesystems frozen (guest-fsfreeze-status)?"""
        status = self.command("guest-fsfreeze-status")
        if status not in ("frozen", "thawed"):
            raise self._fail("guest-fsfreeze-status", f"unexpected status {status!r}")
        return bool(status == "frozen")


def make_guest(
    conn: Any,
    name: str,
    directory: Path,
    *,
    virt_type: str | None = None,
    agent: bool = True,
    memory_mib: int = 256,
    agent_timeout: float = 60.0,
    raw_disks: Sequence[str] = (),
) -> Guest:
    """Define and start guest ``name`` with its files in ``directory`` (a new directory
    under target.ROOT), and wait for its agent (when ``agent``).  ``raw_disks``: the
    targets of more disks (1 MiB qcow2 images, no filesystem: ``TARGET.qcow2`` in the
    directory) for tests that write to a device directly.

    On any failure the domain and the directory are removed again before the error is
    raised.
    """
    if not directory.resolve().is_relative_to(ROOT.resolve()):
        raise ValueError(f"{directory} is not under {ROOT}, where every host sees it")
    ensure_image()
    directory.mkdir(parents=True)
    start = time.monotonic()
    dom = None
    try:
        data_disk = directory / "data.qcow2"
        shutil.copyfile(DATA_TEMPLATE, data_disk)
        raw = [(target, directory / f"{target}.qcow2") for target in raw_disks]
        for _, image in raw:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"],
                check=True,
                capture_output=True,
            )
        xml = guest_xml(name, virt_type or guest_virt_type(), data_disk, agent, memory_mib, raw)
        dom = conn.defineXML(xml)
        guest = Guest(dom, directory)
        dom.create()
        if agent:
            guest.boot(agent_timeout)
            guest.boot_seconds = time.monotonic() - start
    except BaseException:
        if dom is not None:
            _remove(conn, name, directory)
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return guest


def remove_guest(conn: Any, guest: Guest, prefix: str) -> None:
    """Destroy and undefine the guest (with its snapshot and checkpoint metadata), then
    delete its directory.  Refuses a domain whose name lacks ``prefix``."""
    if not guest.name.startswith(prefix):
        raise ValueError(f"refusing to remove {guest.name!r}: it lacks the prefix {prefix!r}")
    _remove(conn, guest.name, guest.directory)


def _remove(conn: Any, name: str, directory: Path) -> None:
    # make_guest's cleanup has no prefix to check: it removes only the domain it defined.
    remove_domain(conn, name, name)
    if directory.resolve().is_relative_to(ROOT.resolve()):
        shutil.rmtree(directory, ignore_errors=True)
