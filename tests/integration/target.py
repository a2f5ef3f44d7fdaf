"""The libvirt host the integration tests run against, and how to reach its parts.

By default that is this machine's libvirtd at qemu:///system.  Any other libvirt host
works when these say where it is (scripts/test.sh sets them for the second host of
scripts/host2.sh):

  SNAPSHOTD_TEST_URI            the URI (default qemu:///system)
  SNAPSHOTD_TEST_LIBVIRT_ROOT   the directory libvirtd sees as / (default /): its run
                                directory, with the QEMU pid files and its own pid file,
                                is read under it
  SNAPSHOTD_TEST_LIBVIRTD_START a command that starts that libvirtd again after a test
                                stopped it (default scripts/host-setup.sh)
  SNAPSHOTD_TEST_PEER_URI       a second host for the tests marked ``two_hosts``
                                (replicate, one daemon on both); without it they are
                                deselected, never passed
  SNAPSHOTD_TEST_LINK           a command taking ``down`` or ``up`` that cuts and restores
                                the network between this machine and the tested host

What the suite needs of any host: it runs as root on this machine, and the host sees
the test directory (tests/integration/conftest.py's ROOT, /var/lib/snapshotd-tests) at
the same path, as hosts sharing storage do.  pytest's tmp_path is put there too, so a
memory file or policy directory a test makes in tmp_path is one libvirtd can reach.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

URI = os.environ.get("SNAPSHOTD_TEST_URI", "qemu:///system")
LIBVIRT_ROOT = Path(os.environ.get("SNAPSHOTD_TEST_LIBVIRT_ROOT", "/"))
PEER_URI = os.environ.get("SNAPSHOTD_TEST_PEER_URI")
LINK = shlex.split(os.environ.get("SNAPSHOTD_TEST_LINK", ""))
LIBVIRTD_START = shlex.split(
    os.environ.get("SNAPSHOTD_TEST_LIBVIRTD_START", str(REPO / "scripts" / "host-setup.sh"))
)
# Images live where libvirtd (and, on a real host, AppArmor or SELinux) expects guest
# images, not in a private /tmp.
ROOT = Path(os.environ.get("SNAPSHOTD_TEST_ROOT", "/var/lib/snapshotd-tests"))


def yaml_list(*uris: str) -> str:
    """A YAML flow list of URIs, each quoted (a URI's ``?`` and ``&`` need no care then)."""
    return "[" + ", ".join(json.dumps(u) for u in uris) + "]"


def connect_line(*extra: str) -> str:
    """The ``connect:`` line of a test's snapshotd.yaml: ``extra`` URIs first, then URI."""
    return f"connect: {yaml_list(*extra, URI)}\n"


def virsh(*args: str) -> list[str]:
    """A virsh command line against the tested host."""
    return ["virsh", "-q", "-c", URI, *args]


def qemu_pid(domain: str) -> int:
    """The pid of a running domain's QEMU process (the host shares this machine's pids)."""
    return int((LIBVIRT_ROOT / "run" / "libvirt" / "qemu" / f"{domain}.pid").read_text())


def libvirtd_pid() -> int:
    """The pid of the tested libvirtd, from the pid file it writes."""
    return int((LIBVIRT_ROOT / "run" / "libvirtd.pid").read_text())


@contextlib.contextmanager
def local_libvirtd(*, exclusive: bool) -> Iterator[None]:
    """This machine's libvirtd between two test sessions at once (scripts/test.sh runs
    the second host's beside this machine's, with this libvirtd as its peer): a restart
    holds the lock exclusive, a test that uses it as the peer holds it shared, so neither
    meets the other's outage.  The lock is an empty file in ROOT, 0600."""
    ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(ROOT / ".local-libvirtd.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def restart_libvirtd(outage: float = 4.0, during: Callable[[], None] | None = None) -> float:
    """Stop the tested libvirtd by its pid (QEMU keeps running), wait ``outage`` seconds
    (calling ``during`` first, while it is down), start it again; returns the time it
    stopped."""
    pid = libvirtd_pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # libvirtd 11.3 was seen ignoring SIGTERM
            deadline = time.monotonic() + 10
        time.sleep(0.1)
    stopped = time.time()
    if during is not None:
        during()
    time.sleep(outage)  # an outage spanning at least one due time
    subprocess.run(LIBVIRTD_START, check=True, capture_output=True)
    return stopped


def _alive(pid: int) -> bool:
    """Is ``pid`` a live process (not a zombie waiting for its parent)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def peer_xml() -> Path:
    """libvirt's own snapshot XML test data: $SNAPSHOTD_PEER_XML, else the first
    ``shared/peer/libvirt-snapshot-xml`` beside the checkout or a directory above it."""
    given = os.environ.get("SNAPSHOTD_PEER_XML")
    if given:
        return Path(given)
    for parent in (REPO, *REPO.parents):
        found = parent / "shared" / "peer" / "libvirt-snapshot-xml"
        if found.is_dir():
            return found
    raise FileNotFoundError(
        "libvirt's snapshot XML test data not found: set SNAPSHOTD_PEER_XML to its directory"
    )
