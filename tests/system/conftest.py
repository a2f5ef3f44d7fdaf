"""A real systemd, booted as PID 1 of a private PID + mount namespace (run as root).

Every test in tests/system is marked ``system``.  ``boot.sh`` (next to this file) sets
the namespace up so that nothing reaches the host: tmpfs on /run, /tmp and /var/tmp,
overlays on /etc, /usr/local, /opt, /var/lib and /var/log, every boot unit and generator
masked; the host's /run/libvirt and /var/lib/libvirt are bound in, so units inside reach
the host's libvirtd at qemu:///system.

Fixture:
  systemd_ns  (session)  SystemdNamespace: .pid (host PID of the namespace's systemd),
                         .root (its file system view, /proc/PID/root), .run(*cmd),
                         .systemctl(*args), .journalctl(*args), .install_unit(unit, name),
                         .install_dropin(name, text), .show(unit, *props)
Teardown powers it off, waits (bounded), kills it if it is still there, and removes the
cgroups it made.  The host's /etc/systemd/system is never written: units go to
/run/systemd/system inside the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

_HERE = Path(__file__).parent
BOOT = _HERE / "boot.sh"
# Where the system tests make their domains' images (kept visible inside the namespace).
IMAGES = Path("/var/lib/snapshotd-tests")
BOOT_TIMEOUT = 20.0
POWEROFF_TIMEOUT = 15.0
# Hierarchies in which systemd makes its cgroups (v1 name=systemd, and v2 when mounted).
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
# The top-level cgroups the namespace's systemd makes; nothing else is ever removed.
SYSTEMD_CGROUPS = ("init.scope", "system.slice", "user.slice")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.system)


def _cgroups() -> set[Path]:
    """Every cgroup directory under systemd's tops.  Walked with os.walk, which skips a
    directory that vanishes during the walk (a unit stopping: seen once as a
    FileNotFoundError out of Path.rglob, failing a teardown)."""
    found: set[Path] = set()
    for root in CGROUP_ROOTS:
        if root.is_dir():
            for top in SYSTEMD_CGROUPS:
                if (root / top).is_dir():
                    found.add(root / top)
                    for parent, dirs, _ in os.walk(root / top):
                        found.update(Path(parent) / d for d in dirs)
    return found


class SystemdNamespace:
    """A booted systemd in its own PID + mount namespace; commands run in it by nsenter."""

    def __init__(self, proc: subprocess.Popen[bytes], pid: int) -> None:
        self.proc = proc  # the host-side `unshare` process
        self.pid = pid  # the namespace's PID 1, as the host sees it

    @property
    def root(self) -> Path:
        """The namespace's file system, seen from the host."""
        return Path(f"/proc/{self.pid}/root")

    def run(
        self, *cmd: str, check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-p", "-m", "--wd=/", *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def systemctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def journalctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("journalctl", "--no-pager", *args)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = [f"--property={p}" for p in props]
        out = self.systemctl("show", unit, *args, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def install_unit(self, unit: str | Path, name: str | None = None) -> str:
        """Write a unit (a path or its text) to /run/systemd/system inside; daemon-reload."""
        if isinstance(unit, Path):
            name = name or unit.name
            text = unit.read_text()
        else:
            text = unit
        if not name:
            raise ValueError("a unit given as text needs a name")
        target = self.root / "run/systemd/system" / name
        target.write_text(text)
        self.systemctl("daemon-reload", check=True)
        return name

    def install_dropin(self, unit: str, text: str, name: str = "50-test.conf") -> None:
        directory = self.root / "run/systemd/system" / f"{unit}.d"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
        self.systemctl("daemon-reload", check=True)

    def remove_unit(self, name: str) -> None:
        self.systemctl("stop", name)
        self.systemctl("reset-failed", name)
        base = self.root / "run/systemd/system"
        with contextlib.suppress(FileNotFoundError):
            (base / name).unlink()
        shutil.rmtree(base / f"{name}.d", ignore_errors=True)
        self.systemctl("daemon-reload")

    def wait_for(self, unit: str, prop: str, predicate: object, timeout: float = 20.0) -> str:
        """Poll `systemctl show` until predicate(value) holds; return the value."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        value = ""
        while time.monotonic() < deadline:
            value = self.show(unit, prop).get(prop, "")
            if predicate(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"{unit}: {prop}={value!r} after {timeout}s")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _boot() -> SystemdNamespace:
    # The checkout and the interpreter's prefix must stay visible inside, even when they
    # live under /tmp, which the namespace replaces with a fresh tmpfs.
    repo = _HERE.parents[1]
    keep = ":".join(dict.fromkeys([str(repo), os.path.realpath(sys.prefix)]))
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private",
         str(BOOT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, HARNESS_KEEP=keep),
    )  # fmt: skip
    deadline = time.monotonic() + BOOT_TIMEOUT
    ns: SystemdNamespace | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"boot.sh exited with {proc.returncode}:\n{out}")
        if ns is None:
            for child in _children(proc.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        ns = SystemdNamespace(proc, child)
        if ns is not None and (ns.root / "run/systemd/private").exists():
            state = ns.systemctl("is-system-running").stdout.strip()
            if state in {"running", "degraded"}:
                return ns
        time.sleep(0.05)
    _shutdown(proc, ns.pid if ns else None)
    raise RuntimeError(f"the namespace's systemd did not come up within {BOOT_TIMEOUT}s")


def _shutdown(proc: subprocess.Popen[bytes], pid: int | None) -> None:
    if pid is not None and proc.poll() is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["nsenter", "-t", str(pid), "-p", "-m", "systemctl", "--no-block", "poweroff"],
                capture_output=True,
                timeout=10,
                check=False,
            )
    try:
        proc.wait(timeout=POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGKILL to the namespace's PID 1 kills every process in the namespace.
        for target in (pid, proc.pid):
            if target is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        proc.wait(timeout=POWEROFF_TIMEOUT)
    if proc.stdout:
        proc.stdout.close()


def _remove_cgroups(before: set[Path]) -> None:
    """rmdir the cgroups the namespace left behind, deepest first (empty ones only)."""
    for path in sorted(_cgroups() - before, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()


def remove_domain(conn: libvirt.virConnect, name: str, directory: Path) -> None:
    """Undo a test domain, pass or fail: stopped, undefined with its snapshot metadata,
    its directory removed (and the images' directory when no other test uses it)."""
    try:
        try:
            found = conn.lookupByName(name)
        except libvirt.libvirtError:
            found = None
        if found is not None:
            if found.isActive():
                found.destroy()
            found.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    finally:
        conn.close()
        shutil.rmtree(directory, ignore_errors=True)
        # IMAGES itself stays: the second host bind-mounts it (scripts/host2.sh), and a
        # directory made again after an rmdir is not the one that mount shows.


@pytest.fixture(scope="session")
def systemd_ns() -> Iterator[SystemdNamespace]:
    if os.geteuid() != 0:
        pytest.fail("tests/system boot a systemd in a namespace: run them as root")
    before = _cgroups()
    # boot.sh binds the test images' directory into the namespace only if it exists when
    # systemd boots; the tests' domains are made in it later.
    IMAGES.mkdir(mode=0o700, exist_ok=True)
    ns = _boot()
    try:
        yield ns
    finally:
        _shutdown(ns.proc, ns.pid)
        _remove_cgroups(before)
