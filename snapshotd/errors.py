"""snapshotd's own error types.

Every error a person can see is one of these.  Each says what went wrong, names
the thing it went wrong with (domain, disk, file, snapshot) and, where there is
one, what to do about it.  The CLI turns them into exit codes: ``exit_code``
is 2 for a request that was refused before anything was changed, 1 for a
failure while doing the work.
"""

from __future__ import annotations


class SnapshotdError(Exception):
    """Base class: a message meant for people."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RequestError(SnapshotdError):
    """The request is wrong or cannot be done; nothing was changed."""

    exit_code = 2


class PlanError(RequestError):
    """The state table or a disk rule refuses the request.

    ``kind`` is "invalid" (the combination makes no sense), "unsupported" (it
    makes sense but neither libvirt nor snapshotd can do it) or "refused" (the
    domain's state or a disk rules it out).  ``row`` is the seed table row that
    applied, when one did.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        domain: str,
        row: int | None = None,
        disk: str | None = None,
    ) -> None:
        where = f"domain {domain!r}"
        if disk is not None:
            where += f", disk {disk}"
        table = f" [seed table row {row}]" if row is not None else ""
        # Table refusals already begin with their kind ("invalid combination ...").
        said = message if message.startswith(kind) else f"{kind}: {message}"
        super().__init__(f"{where}: {said}{table}")
        self.kind = kind
        self.reason = message
        self.domain = domain
        self.row = row
        self.disk = disk


class XMLError(RequestError):
    """A snapshot or domain XML document that cannot be used."""


class LibvirtError(SnapshotdError):
    """libvirt refused or failed an operation.

    ``transient`` errors (state change lock held, guest agent silent, connection
    lost) may succeed when retried; permanent ones will not.  ``unsupported``: libvirt
    said this libvirt, hypervisor or configuration cannot do it at all (its
    VIR_ERR_NO_SUPPORT, VIR_ERR_CONFIG_UNSUPPORTED or VIR_ERR_OPERATION_UNSUPPORTED),
    which is how snapshotd learns what a host cannot do without comparing versions.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        domain: str | None,
        transient: bool,
        code: int | None = None,
        unsupported: bool = False,
    ) -> None:
        where = f"domain {domain!r}: " if domain else ""
        kind = "transient" if transient else "permanent"
        super().__init__(f"{where}{operation} failed ({kind} libvirt error): {message}")
        self.operation = operation
        self.domain = domain
        self.transient = transient
        self.code = code
        self.reason = message
        self.unsupported = unsupported


class NotFoundError(RequestError):
    """A domain or snapshot the user named does not exist."""
