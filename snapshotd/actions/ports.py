"""What the actions need from a hypervisor: ``HypervisorAPI``, the port they are typed with.

Exactly the methods and attributes of snapshotd.adapters.hypervisor.Hypervisor that
actions/snapshot.py, prune.py, policyrun.py and metadata.py call.  The real Hypervisor
satisfies it structurally (mypy checks it wherever one is passed in); so does
tests/fakes/hypervisor.py's FakeHypervisor, which lets a policy run, retention and the
metadata actions be tested in milliseconds, without libvirtd.

The errors are snapshotd's own, as the adapter raises them: NotFoundError for a domain
or snapshot that does not exist, LibvirtError (with its code and ``transient``) for
anything libvirt refused or failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from snapshotd.adapters.hypervisor import SnapshotRecord
from snapshotd.core.model import CreateFlag, DomainInfo, DomainState


class HypervisorAPI(Protocol):
    """One connection to a hypervisor, as the actions use it."""

    @property
    def uri(self) -> str:
        """The URI the connection was opened with."""
        ...

    def libvirt_version(self) -> tuple[int, int, int]: ...

    # --- domains ----------------------------------------------------------------------

    def list_domains(self) -> list[DomainInfo]:
        """Every domain of the connection, running or not."""
        ...

    def domain(self, name_or_uuid: str) -> DomainInfo:
        """One domain, by name or UUID; NotFoundError if there is none."""
        ...

    def domain_state(self, uuid: str) -> DomainState | None:
        """The domain's state now, or None if it is gone."""
        ...

    def domain_xml(self, name: str, *, inactive: bool = False, secure: bool = False) -> str: ...

    # --- snapshots --------------------------------------------------------------------

    def capabilities(self) -> str:
        """The host's capabilities XML."""
        ...

    def pool_space(self, path: str) -> tuple[str, int, int] | None:
        """(storage pool, free bytes, capacity) of the active pool holding ``path``, or
        None when no pool does."""
        ...

    def list_snapshots(self, domain: str) -> list[SnapshotRecord]:
        """The domain's snapshots, parents before children."""
        ...

    def snapshot_xml(self, domain: str, snapshot: str, *, secure: bool = False) -> str: ...

    def snapshot_created(self, domain: str, snapshot: str) -> int | None:
        """The creation time of the snapshot by this name, or None if there is none."""
        ...

    def current_snapshot(self, domain: str) -> str | None: ...

    def create_snapshot_secure(
        self,
        domain: str,
        xml: str,
        flags: CreateFlag,
        *,
        uuid: str | None = None,
        after: Callable[[], object] | None = None,
    ) -> tuple[str, str]:
        """Create a snapshot from ``<domainsnapshot>`` XML; (its XML, its secure XML).
        With NO_METADATA both are the request ``xml``.  ``after`` is called once the
        create returned, before its XML is read (a group releases its member there)."""
        ...

    def redefine_snapshot(self, domain: str, xml: str, *, current: bool = False) -> str: ...

    def delete_snapshot(
        self, domain: str, snapshot: str, *, metadata_only: bool = False
    ) -> None: ...

    def revert_snapshot(
        self, domain: str, snapshot: str, *, running: bool = False, paused: bool = False
    ) -> None: ...

    def migrate(
        self,
        domain: str,
        target: Any,
        *,
        live: bool = False,
        persistent: bool = False,
        undefine_source: bool = False,
        migrate_uri: str | None = None,
        unsafe: bool = False,
    ) -> None:
        """Move the domain to ``target`` (a connection of the same kind); a domain that
        does not run is migrated offline (defined there)."""
        ...

    # Holding domains still: a consistency group (actions/grouprun.py).
    def suspend(self, domain: str) -> None: ...

    def resume(self, domain: str) -> None: ...

    def freeze(self, domain: str) -> None:
        """Freeze the guest's file systems; raises LibvirtError (the agent's code when
        the guest agent does not answer)."""
        ...

    def thaw(self, domain: str) -> bool:
        """Thaw them; True once the guest agent answered."""
        ...
