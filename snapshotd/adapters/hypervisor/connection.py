"""The connection to one libvirtd: domains, snapshots, events, keepalive.

Connections run libvirt's default event loop in a daemon thread, so keepalive works
and a dead libvirtd is noticed within seconds instead of hanging a call forever; every
libvirt error is raised as snapshotd's own (see errors.py), never printed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import libvirt

from snapshotd.adapters.hypervisor import holding, pools, process
from snapshotd.adapters.hypervisor.errors import (
    calling,
    convert,
    error_code,
    is_uuid,
    no_domain,
    no_snapshot,
)
from snapshotd.adapters.logs import sanitize_uri
from snapshotd.config.settings import DEFAULT_URI
from snapshotd.core.domain import parse_domain
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState
from snapshotd.errors import LibvirtError, NotFoundError

KEEPALIVE_INTERVAL = 5  # seconds of silence before a keepalive probe is sent
KEEPALIVE_COUNT = 3  # unanswered probes before the connection counts as dead
MAX_HANDLES = 4096  # domain handles kept by UUID per connection (then the cache starts over)
# A quiesced snapshot talks to the guest agent, which libvirt waits for without end by
# default: a hung agent (or an fsfreeze hook that never returns) would hold the call, and
# the domain, forever.  For the call, snapshotd sets the domain's agent response timeout
# (virDomainAgentSetResponseTimeout) to AGENT_WAIT and then back to libvirt's default.
AGENT_WAIT = 20  # seconds libvirt waits for any one answer of the agent
THAW_WAIT = 20  # seconds a failed quiesced snapshot keeps trying to thaw the guest


_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by snapshotd",
}


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One snapshot as libvirt lists it."""

    name: str
    xml: str  # virDomainSnapshotGetXMLDesc(0): never the secure form
    is_current: bool
    parent: str | None  # None: a root snapshot
    has_metadata: bool = True


# --- the connection ---------------------------------------------------------------------------


class Hypervisor:
    """One connection to libvirtd.  Thread-safe, as libvirt connections are."""

    def __init__(self, conn: Any, uri: str) -> None:
        """Wrap an open virConnect; use Hypervisor.open() instead."""
        self._conn: Any = conn
        self._uri = uri
        self._callbacks: list[int] = []
        self._handles: dict[str, Any] = {}  # virDomain by lower-case UUID: see _lookup

    @classmethod
    def open(cls, uri: str = DEFAULT_URI) -> Hypervisor:
        """Connect to libvirtd at ``uri`` with keepalive (5 s interval, 3 probes)."""
        process.setup()
        with calling(f"connect to {uri}", None):
            conn = libvirt.open(uri)
        hypervisor = cls(conn, uri)
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:
            # A driver running in this process (qemu:///embed, test:///) has no
            # connection to keep alive and says so; anything else is an error.
            if error_code(exc) != libvirt.VIR_ERR_NO_SUPPORT:
                hypervisor.close()
                raise convert(exc, "set keepalive", None, None) from exc
        return hypervisor

    @property
    def uri(self) -> str:
        """The URI this connection was opened with."""
        return self._uri

    def close(self) -> None:
        """Close the connection; closing twice is harmless."""
        conn, self._conn = self._conn, None
        if conn is not None:
            for callback in self._callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(callback)
            self._callbacks.clear()
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with calling("close connection", None):
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _open_conn(self) -> Any:
        if self._conn is None:
            raise LibvirtError(
                f"the connection to {self._uri} is closed",
                operation="use connection",
                domain=None,
                transient=False,
            )
        return self._conn

    # --- events ---------------------------------------------------------------------------

    def watch(
        self,
        on_domain: Callable[[str, str], None],
        on_close: Callable[[str], None],
    ) -> None:
        """Call ``on_domain(event, uuid)`` for domain lifecycle events and ``on_close(reason)``
        when the connection drops.  Both run on libvirt's event loop thread: keep them short.

        ``event`` is one of defined, undefined, started, suspended, resumed, stopped,
        shutdown, pmsuspended, crashed.
        """
        conn = self._open_conn

        def lifecycle(_conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
            on_domain(_LIFECYCLE.get(event, "changed"), str(dom.UUIDString()))

        def closed(_conn: Any, reason: int, _opaque: Any) -> None:
            on_close(_CLOSE_REASONS.get(reason, "unknown"))

        with calling("register domain events", None):
            self._callbacks.append(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None
                )
            )
            conn.registerCloseCallback(closed, None)

    def alive(self) -> bool:
        """Is the connection still usable (libvirt's own view, keepalive included)?"""
        conn = self._conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    # --- domains --------------------------------------------------------------------------

    def libvirt_version(self) -> tuple[int, int, int]:
        """The version of the libvirt library libvirtd runs, e.g. (9, 0, 0)."""
        with calling("get libvirt version", None):
            number = int(self._open_conn.getLibVersion())
        return number // 1_000_000, number // 1_000 % 1_000, number % 1_000

    def list_domains(self) -> list[DomainInfo]:
        """Every domain, running or not, persistent or transient, in libvirt's order.

        A domain that disappears while the list is being read is left out.
        """
        with calling("list domains", None):
            domains = self._open_conn.listAllDomains(0)
        result = []
        for dom in domains:
            try:
                result.append(self._info(dom))
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue
                raise convert(exc, "read domain", str(dom.name()), None) from exc
        return result

    def capabilities(self) -> str:
        """The host's capabilities XML (virConnectGetCapabilities): its machine types."""
        with calling("read host capabilities", None):
            return str(self._open_conn.getCapabilities())

    def pool_space(self, path: str) -> tuple[str, int, int] | None:
        """(pool, free bytes, capacity) of the storage pool holding ``path`` (pools.py)."""
        return pools.space(self._open_conn, path)

    def domain_handles(self) -> list[tuple[str, str, DomainState]]:
        """(UUID, name, state) of every domain: calls that need no job on the domain, so a
        domain another job holds answers at once (libvirt 11.3 makes its XML wait)."""
        with calling("list domains", None):
            domains = self._open_conn.listAllDomains(0)
        result = []
        for dom in domains:
            try:
                state = DomainState.from_libvirt(int(dom.state()[0]))
                result.append((str(dom.UUIDString()), str(dom.name()), state))
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue
                raise convert(exc, "read domain state", str(dom.name()), None) from exc
        return result

    def domain(self, name_or_uuid: str) -> DomainInfo:
        """One domain, named by name or UUID; NotFoundError if there is none."""
        dom = self._lookup(name_or_uuid)
        with calling("read domain", name_or_uuid, f"domain {name_or_uuid!r} not found"):
            return self._info(dom)

    def domain_xml(self, name: str, *, inactive: bool = False, secure: bool = False) -> str:
        """The domain's XML: the live definition, or with ``inactive`` the persistent one;
        ``secure`` includes secrets (for the catalog only, never for logs)."""
        dom = self._lookup(name)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        if secure:
            flags |= libvirt.VIR_DOMAIN_XML_SECURE
        with calling("read domain XML", name, f"domain {name!r} not found"):
            return str(dom.XMLDesc(flags))

    @staticmethod
    def _info(dom: Any) -> DomainInfo:
        # Two calls, not one atomic read: a domain that changes state in between is
        # reported with the state read first.
        state = DomainState.from_libvirt(int(dom.state()[0]))
        return parse_domain(str(dom.XMLDesc(0)), state)

    def _lookup(self, name_or_uuid: str) -> Any:
        """The virDomain for a UUID (first, as virsh does) or a name.

        Handles found by UUID are kept: libvirt resolves every call on a handle by its
        UUID, so a kept handle is as good as a fresh lookup (and a domain undefined
        since then is reported as not found by the call itself).  Handles found by
        name are not kept: a name can be given to another domain.
        """
        conn = self._open_conn
        by_uuid = is_uuid(name_or_uuid)
        if by_uuid:
            key = name_or_uuid.lower()
            kept = self._handles.get(key)
            if kept is not None:
                return kept
            try:
                found = conn.lookupByUUIDString(name_or_uuid)
            except libvirt.libvirtError as exc:
                if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                    raise convert(exc, "look up domain", name_or_uuid, None) from exc
            else:
                if len(self._handles) >= MAX_HANDLES:
                    self._handles.clear()
                self._handles[key] = found
                return found
        with calling("look up domain", name_or_uuid, no_domain(name_or_uuid)):
            return conn.lookupByName(name_or_uuid)

    def domain_state(self, uuid: str) -> DomainState | None:
        """The domain's state now (one call to libvirt), or None if it is gone."""
        try:
            dom = self._lookup(uuid)
        except NotFoundError:
            return None
        try:
            return DomainState.from_libvirt(int(dom.state()[0]))
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise convert(exc, "read domain state", uuid, None) from exc

    # --- holding domains still (consistency groups) ---------------------------------------

    def suspend(self, domain: str) -> None:
        """virDomainSuspend of a domain by UUID or name."""
        holding.suspend(self._lookup(domain), domain)

    def resume(self, domain: str) -> None:
        """virDomainResume of a domain by UUID or name."""
        holding.resume(self._lookup(domain), domain)

    def freeze(self, domain: str) -> None:
        """virDomainFSFreeze, the guest agent given AGENT_WAIT seconds to answer."""
        holding.freeze(self._lookup(domain), domain, AGENT_WAIT)

    def thaw(self, domain: str) -> bool:
        """virDomainFSThaw, retried for THAW_WAIT while the agent is silent; True once
        the agent answered."""
        return holding.thaw(self._lookup(domain), THAW_WAIT)

    # --- snapshots ------------------------------------------------------------------------

    def create_snapshot(
        self, domain: str, xml: str, flags: CreateFlag, *, uuid: str | None = None
    ) -> str:
        """Create a snapshot from ``<domainsnapshot>`` XML; return libvirt's XML of it.

        With CreateFlag.NO_METADATA libvirt keeps nothing it could describe, so the
        request ``xml`` is returned unchanged.  ``uuid``, when known, finds the domain
        (``domain`` then only names it in errors).
        """
        return self.create_snapshot_secure(domain, xml, flags, uuid=uuid)[0]

    def create_snapshot_secure(
        self,
        domain: str,
        xml: str,
        flags: CreateFlag,
        *,
        uuid: str | None = None,
        after: Callable[[], object] | None = None,
    ) -> tuple[str, str]:
        """As create_snapshot, and also the snapshot's secure XML (secrets included: for
        the catalog only), both read from the snapshot libvirt returned.  ``after`` runs
        as soon as the create returned, before those reads (a group's member is resumed
        there: the reads are not part of its pause)."""
        dom = self._lookup(uuid or domain)
        with calling("create snapshot", domain, f"domain {domain!r} not found"):
            if CreateFlag.QUIESCE in flags:
                snapshot = self._quiesced(dom, domain, xml, int(flags))
            else:
                snapshot = self._create_call(dom, xml, int(flags))
            if after is not None:
                after()
            if CreateFlag.NO_METADATA in flags:
                return xml, xml
            plain = str(snapshot.getXMLDesc(0))
            return plain, str(snapshot.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE))

    def _quiesced(self, dom: Any, domain: str, xml: str, flags: int) -> Any:
        """The create call with the guest agent's answers bounded (AGENT_WAIT).  When it
        fails on the agent, the guest is thawed (virDomainFSThaw, retried for THAW_WAIT):
        a freeze that timed out may still happen in the guest after libvirt gave up."""
        dom.agentSetResponseTimeout(AGENT_WAIT, 0)
        try:
            return self._create_call(dom, xml, flags)
        except libvirt.libvirtError as exc:
            if error_code(exc) not in holding.AGENT_SILENT:
                raise
            thawed = holding.thaw(dom, THAW_WAIT)
            failure = convert(exc, "create snapshot", domain, None)
            advice = (
                "the guest's file systems are thawed"
                if thawed
                else f"the agent did not confirm a thaw within {THAW_WAIT} s: check with "
                f"`virsh domfsinfo {domain}` and thaw with `virsh domfsthaw {domain}`"
            )
            failure.message = (
                f"{failure.message} (the guest agent gets {AGENT_WAIT} s to answer; {advice})"
            )
            raise failure from exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.agentSetResponseTimeout(libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT, 0)

    def _create_call(self, dom: Any, xml: str, flags: int) -> Any:
        """virDomainSnapshotCreateXML itself, and nothing else (a benchmark times it)."""
        return dom.snapshotCreateXML(xml, flags)

    def snapshot_xml(self, domain: str, snapshot: str, *, secure: bool = False) -> str:
        """One snapshot's XML; ``secure`` includes secrets (needs a privileged connection)."""
        snap = self._snapshot(domain, snapshot)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE if secure else 0
        with calling(f"read snapshot {snapshot!r}", domain, no_snapshot(domain, snapshot)):
            return str(snap.getXMLDesc(flags))

    def list_snapshots(self, domain: str) -> list[SnapshotRecord]:
        """The domain's snapshots, parents before children (libvirt's topological order).

        A snapshot deleted while the list is being read is left out.
        """
        dom = self._lookup(domain)
        missing = f"domain {domain!r} not found"
        with calling("list snapshots", domain, missing):
            snapshots = _list_all_snapshots(dom)
        records = []
        for snap in snapshots:
            try:
                records.append(_record(snap))
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                    continue
                raise convert(exc, "read snapshot", domain, missing) from exc
        return records

    def redefine_snapshot(self, domain: str, xml: str, *, current: bool = False) -> str:
        """Give libvirt a snapshot's metadata back (REDEFINE; with ``current``, CURRENT).

        Nothing is taken: the snapshot's data (internal snapshots, overlay and memory
        files) must already exist.  Returns the snapshot's name.
        """
        dom = self._lookup(domain)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if current:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        with calling("redefine snapshot", domain, f"domain {domain!r} not found"):
            return str(dom.snapshotCreateXML(xml, flags).getName())

    def current_snapshot(self, domain: str) -> str | None:
        """The name of the domain's current snapshot, or None when it has none."""
        dom = self._lookup(domain)
        with calling("read the current snapshot", domain, f"domain {domain!r} not found"):
            if not dom.hasCurrentSnapshot(0):
                return None
            return str(dom.snapshotCurrent(0).getName())

    def revert_snapshot(
        self, domain: str, snapshot: str, *, running: bool = False, paused: bool = False
    ) -> None:
        """Revert the domain to a snapshot; ``running``/``paused`` force the state after."""
        snap = self._snapshot(domain, snapshot)
        flags = 0
        if running:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
        if paused:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        with calling(f"revert to snapshot {snapshot!r}", domain, no_snapshot(domain, snapshot)):
            snap.domain().revertToSnapshot(snap, flags)

    def snapshot_created(self, domain: str, snapshot: str) -> int | None:
        """The creation time of the domain's snapshot by this name, or None if it has none.

        (0 when libvirt's XML gives no creation time.)
        """
        dom = self._lookup(domain)
        try:
            snap = dom.snapshotLookupByName(snapshot, 0)
            text = str(snap.getXMLDesc(0))
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                return None
            raise convert(exc, f"look up snapshot {snapshot!r}", domain, None) from exc
        found = re.search(r"<creationTime>(\d+)</creationTime>", text)
        return int(found.group(1)) if found else 0

    def has_job(self, domain: str) -> bool:
        """Is libvirt running a job on the domain now (a snapshot being made, say)?

        virDomainGetJobInfo answers at once, also during a snapshot job.  False when
        the domain is gone or libvirt cannot say: the caller then goes on without
        waiting.
        """
        try:
            info = self._lookup(domain).jobInfo()
        except (libvirt.libvirtError, LibvirtError, NotFoundError):
            return False
        return int(info[0]) != int(libvirt.VIR_DOMAIN_JOB_NONE)

    def job_progress(self, domain: str, targets: tuple[str, ...] = ()) -> tuple[int, int] | None:
        """(bytes done, bytes in all) of the block jobs on ``targets`` now, or None.

        Deleting an external snapshot merges its data with a block commit, and libvirt
        9.0 reports that only as a block job.  The domain's job statistics are not
        asked: during a snapshot job libvirt 9.0 answers them only when the job has
        ended, so a progress display that asked would freeze until then.  A target
        whose job cannot be read this time (libvirt is between two steps) is left out
        of this sample; the next one asks again.

        Ask on a connection other than the one running the job: on the same
        connection libvirt 9.0 often holds the answer until the job is over.
        """
        try:
            dom = self._lookup(domain)
        except (LibvirtError, NotFoundError):
            return None
        done = total = 0
        for target in targets:
            try:
                info = dom.blockJobInfo(target, 0)
            except libvirt.libvirtError:
                continue
            if info and int(info.get("end", 0)) > 0:
                done += int(info.get("cur", 0))
                total += int(info["end"])
        return (done, total) if total else None

    def delete_snapshot(self, domain: str, snapshot: str, *, metadata_only: bool = False) -> None:
        """Delete one snapshot (not its children); ``metadata_only`` keeps its data."""
        snap = self._snapshot(domain, snapshot)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0
        with calling(f"delete snapshot {snapshot!r}", domain, no_snapshot(domain, snapshot)):
            snap.delete(flags)

    def migrate(
        self,
        domain: str,
        target: Hypervisor,
        *,
        live: bool = False,
        persistent: bool = False,
        undefine_source: bool = False,
        migrate_uri: str | None = None,
        unsafe: bool = False,
    ) -> None:
        """Migrate the domain to ``target`` (virDomainMigrate3, driven by this client:
        no peer-to-peer connection between the libvirtds).  A domain that does not run
        is migrated offline, which defines it there (OFFLINE needs PERSIST_DEST).
        ``migrate_uri``: where the target's QEMU listens (tcp://ADDRESS), when the
        target host's name is not the address the source should use."""
        dom = self._lookup(domain)
        with calling("look up the domain's state", domain, f"domain {domain!r} not found"):
            active = bool(dom.isActive())
        flags = 0
        if live and active:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if persistent or not active:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
        if not active:
            flags |= libvirt.VIR_MIGRATE_OFFLINE
        if undefine_source:
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if unsafe:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        params: dict[str, Any] = {}
        if migrate_uri is not None and active:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
        with calling(f"migrate to {sanitize_uri(target.uri)}", domain):
            dom.migrate3(target._conn, params, flags)
        self._handles.pop(dom.UUIDString().lower(), None)

    def _snapshot(self, domain: str, snapshot: str) -> Any:
        dom = self._lookup(domain)
        with calling(f"look up snapshot {snapshot!r}", domain, no_snapshot(domain, snapshot)):
            return dom.snapshotLookupByName(snapshot, 0)


def _list_all_snapshots(dom: Any) -> list[Any]:
    topological = getattr(libvirt, "VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL", 0)
    if topological:
        try:
            return list(dom.listAllSnapshots(topological))
        except libvirt.libvirtError as exc:
            # A libvirtd older than 5.2 rejects the flag; its plain order has to do.
            if error_code(exc) != libvirt.VIR_ERR_INVALID_ARG:
                raise
    return list(dom.listAllSnapshots(0))


def _record(snap: Any) -> SnapshotRecord:
    return SnapshotRecord(
        name=str(snap.getName()),
        xml=str(snap.getXMLDesc(0)),
        is_current=bool(snap.isCurrent(0)),
        parent=_parent_name(snap),
        has_metadata=bool(snap.hasMetadata(0)),
    )


def _parent_name(snap: Any) -> str | None:
    try:
        parent = snap.getParent(0)
    except libvirt.libvirtError as exc:
        # libvirt reports a root snapshot as VIR_ERR_NO_DOMAIN_SNAPSHOT ("... does not
        # have a parent").
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise
    return str(parent.getName())
