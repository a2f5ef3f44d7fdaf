"""Fixtures for tests against a real libvirtd (run as root): qemu:///system, or the
host tests/integration/target.py names.

Every test in tests/integration is marked ``libvirt``; ``pytest -m "not libvirt"`` runs
the rest without a libvirtd.  When the marked tests do run and libvirtd does not answer,
they fail (scripts/host-setup.sh starts it): they never skip.

Fixtures:
  libvirt_conn    (session)  a plain libvirt.open(target.URI) connection
  virt_type       (session)  "kvm" when /dev/kvm works for libvirt, otherwise "qemu" (TCG)
  session_prefix  (session)  "snapshotd-test-<8 hex>-": the name prefix of every domain
  hypervisor      (session)  snapshotd's Hypervisor on target.URI
  domain_factory  (function) DomainFactory: call it to make a scratch domain; every domain
                             it made is removed after the test, pass or fail
  guest           (function) a real Linux guest (guest.py) with a running agent
  guest_pair      (function) two such guests, each with a raw disk vdc
  daemon          (function) test_daemon.Daemon in tmp_path: `snapshotd run` with its own
                             NOTIFY_SOCKET, policy and state directories; stopped after
At the end of the session every domain with the session's prefix is removed, whatever
happened before.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt
import pytest

from snapshotd.adapters.files import is_local_uri
from snapshotd.adapters.hypervisor import Hypervisor
from tests.integration import target
from tests.integration.domains import DomainFactory
from tests.integration.guest import Guest, guest_virt_type, make_guest, remove_guest
from tests.integration.target import PEER_URI, ROOT, URI

if TYPE_CHECKING:
    from tests.integration.test_daemon import Daemon

_HERE = Path(__file__).parent
_guests = itertools.count(1)  # guest names are unique across the session


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.libvirt)
    # Deselected, never passed or skipped: the two-host tests without a second host, and
    # the tests of what snapshotd does only for a local libvirtd when the host is remote.
    unfit = set()
    if PEER_URI is None:
        unfit.add("two_hosts")
    if not is_local_uri(URI):
        unfit.add("local_only")
    dropped = [i for i in items if any(i.get_closest_marker(m) for m in unfit)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


@pytest.fixture(autouse=True)
def _peer_held(request: pytest.FixtureRequest) -> Iterator[None]:
    """A two-host test whose peer is this machine's libvirtd holds it (shared) while it
    runs: another session's libvirtd restart test waits for it (target.local_libvirtd)."""
    if request.node.get_closest_marker("two_hosts") and PEER_URI == "qemu:///system":
        with target.local_libvirtd(exclusive=False):
            yield
    else:
        yield


class LiveConnection:
    """A libvirt connection that opens itself again after libvirtd restarted.

    test_zz_libvirtd_restart.py restarts the shared libvirtd; every other use of the
    session's connection goes through this, so it survives that.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn = libvirt.open(uri)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return getattr(self._conn, name)(*args, **kwargs)
            except libvirt.libvirtError as exc:
                if exc.get_error_domain() not in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
                    raise
                self._conn = libvirt.open(self.uri)  # libvirtd went away and came back
                return getattr(self._conn, name)(*args, **kwargs)

        return call


@pytest.fixture(scope="session")
def libvirt_conn() -> Iterator[Any]:
    # libvirt prints every error to stderr unless a handler takes it; tests check the
    # exceptions instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = LiveConnection(URI)
    except libvirt.libvirtError as exc:
        pytest.fail(f"cannot connect to {URI} (run scripts/host-setup.sh as root): {exc}")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def virt_type(libvirt_conn: Any) -> str:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return "qemu"
    os.close(fd)
    try:
        libvirt_conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError:
        return "qemu"
    return "kvm"


@pytest.fixture(scope="session")
def session_prefix() -> str:
    return f"snapshotd-test-{secrets.token_hex(4)}-"


@pytest.fixture(scope="session")
def _session_domains(
    libvirt_conn: Any, session_prefix: str, virt_type: str
) -> Iterator[DomainFactory]:
    """The session's sweeper: at the end, removes every domain with the session's prefix."""
    root = ROOT / session_prefix.rstrip("-")
    sweeper = DomainFactory(libvirt_conn, session_prefix, root, virt_type)
    yield sweeper
    sweeper.sweep()
    # The shared ROOT itself stays: the second host bind-mounts it (scripts/host2.sh), and
    # a directory made again after an rmdir is not the one that mount shows.


@pytest.fixture
def domain_factory(_session_domains: DomainFactory) -> Iterator[DomainFactory]:
    factory = DomainFactory(
        _session_domains.conn,
        _session_domains.prefix,
        _session_domains.root,
        _session_domains.virt_type,
    )
    yield factory
    factory.cleanup()


@pytest.fixture(scope="session")
def peer_conn() -> Iterator[Any]:
    """A plain connection to the second host (target.PEER_URI)."""
    assert PEER_URI is not None  # tests without one are deselected
    conn = LiveConnection(PEER_URI)
    yield conn
    conn.close()


@pytest.fixture
def peer_factory(peer_conn: Any, _session_domains: DomainFactory) -> Iterator[DomainFactory]:
    """Scratch domains on the second host, same prefix and test root; removed after."""
    factory = DomainFactory(
        peer_conn, _session_domains.prefix, _session_domains.root, _session_domains.virt_type
    )
    yield factory
    factory.cleanup()


@pytest.fixture
def guest(
    libvirt_conn: Any, session_prefix: str, virt_type: str, _session_domains: DomainFactory
) -> Iterator[Guest]:
    """A booted guest with a running agent, removed after the test, pass or fail.

    Its directory is in the session's root, beside the scratch domains', so the session's
    sweep removes whatever a crashed run left.  KVM only when libvirt offers it and the
    host's KVM is hardware KVM (guest_virt_type).
    """
    name = f"{session_prefix}guest{next(_guests):02d}"
    kind = "kvm" if virt_type == "kvm" and guest_virt_type() == "kvm" else "qemu"
    made = make_guest(libvirt_conn, name, _session_domains.root / name, virt_type=kind)
    try:
        yield made
    finally:
        remove_guest(libvirt_conn, made, session_prefix)


@pytest.fixture
def guest_pair(
    request: pytest.FixtureRequest,
    libvirt_conn: Any,
    session_prefix: str,
    virt_type: str,
    _session_domains: DomainFactory,
) -> Iterator[tuple[Guest, Guest]]:
    """Two booted guests with agents, each with one more disk without a filesystem (vdc,
    for writes straight to a device: ``Guest.device("vdc")``); both removed after.
    Parametrized indirectly with N, the first guest gets N more such disks (vdd, ...):
    its snapshots take longer than the second's."""
    kind = "kvm" if virt_type == "kvm" and guest_virt_type() == "kvm" else "qemu"
    more = int(getattr(request, "param", 0))
    made: list[Guest] = []
    try:
        for extra in (more, 0):
            name = f"{session_prefix}guest{next(_guests):02d}"
            disks = ("vdc", *(f"vd{chr(ord('d') + i)}" for i in range(extra)))
            made.append(
                make_guest(
                    libvirt_conn,
                    name,
                    _session_domains.root / name,
                    virt_type=kind,
                    raw_disks=disks,
                )
            )
        yield made[0], made[1]
    finally:
        for guest in made:
            remove_guest(libvirt_conn, guest, session_prefix)


@pytest.fixture(scope="session")
def hypervisor() -> Iterator[Hypervisor]:
    with Hypervisor.open(URI) as hv:
        yield hv


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A `snapshotd run` harness in tmp_path (tests/integration/test_daemon.py's Daemon),
    stopped and cleaned up after the test, pass or fail."""
    from tests.integration.test_daemon import Daemon  # noqa: PLC0415 - a test module's class

    (tmp_path / "policies").mkdir(mode=0o755)
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.close()
