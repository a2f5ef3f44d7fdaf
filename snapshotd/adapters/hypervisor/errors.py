"""libvirt's errors as snapshotd's: NotFoundError, or LibvirtError with ``transient``.

Also the import-time check that snapshotd's copies of libvirt's enum values (in
snapshotd.core.model) match the bindings.  Part of the libvirt adapter: only this
package imports libvirt.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from snapshotd.core.model import CreateFlag, DomainState
from snapshotd.errors import LibvirtError, NotFoundError

# --- import-time checks: our copies of libvirt's numbers must match the bindings ----------


def _check_enums() -> None:
    """Refuse to load when model.py's copies of libvirt enums disagree with the bindings."""
    wrong = []
    for flag in CreateFlag:
        name = f"VIR_DOMAIN_SNAPSHOT_CREATE_{flag.name}"
        actual = getattr(libvirt, name, None)
        if actual != flag.value:
            wrong.append(f"{name}: snapshotd has {flag.value}, libvirt-python has {actual}")
    for state in DomainState:
        name = f"VIR_DOMAIN_{state.name}"
        code = getattr(libvirt, name, None)
        if not isinstance(code, int) or DomainState.from_libvirt(code) is not state:
            wrong.append(
                f"{name}: libvirt-python has {code}, which snapshotd does not map to {state}"
            )
    if wrong:
        raise ImportError(
            "snapshotd.core.model does not match the libvirt bindings: " + "; ".join(wrong)
        )


_check_enums()


# --- error classification ---------------------------------------------------------------

# libvirt 11 (not 9.0) reports an agent that did not answer in time with its own code,
# VIR_ERR_AGENT_COMMAND_TIMEOUT; bindings built against 9.0 do not name it.
AGENT_COMMAND_TIMEOUT = int(getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", 112))

# Errors that say "not now" rather than "never": another job holds the domain's state
# change lock, the guest agent is silent or out of sync, or the connection to libvirtd
# broke.  Retrying (on a new connection, for the last kind) may succeed.
_TRANSIENT_CODES = frozenset(
    {
        libvirt.VIR_ERR_OPERATION_TIMEOUT,  # "cannot acquire state change lock"
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_AGENT_UNSYNCED,
        AGENT_COMMAND_TIMEOUT,
        libvirt.VIR_ERR_NO_CONNECT,  # libvirtd not reachable (yet, or any more)
        libvirt.VIR_ERR_INVALID_CONN,  # this connection was closed under us
        libvirt.VIR_ERR_RPC,
    }
)
# Generic codes that are transient only when the RPC layer (the connection) raised them:
# "client socket is closed", "End of file while reading data", "Cannot recv data".
# From a driver the same codes mean a real failure, e.g. "failed to create image file".
_TRANSIENT_RPC_CODES = frozenset({libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_SYSTEM_ERROR})
_TRANSIENT_RPC_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
# VIR_ERR_NO_CONNECT also says that no driver takes the URI: a typo, or a libvirtd whose
# QEMU driver failed to load.  That stays so until someone fixes it.
_PERMANENT_MESSAGES = ("no connection driver available",)
# Wording that marks a transient failure whatever code carries it.
_TRANSIENT_MESSAGES = (
    "cannot acquire state change lock",
    "client socket is closed",
    "end of file while reading data",
    "cannot recv data",
    "cannot write data",
    "connection reset by peer",
    "guest agent is not responding",
)

_NOT_FOUND_CODES = frozenset({libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT})

# "This libvirt (or hypervisor, or configuration) cannot do that": a capability answer.
_UNSUPPORTED_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    }
)


def classify(code: int, domain_code: int, message: str) -> bool:
    """Is this libvirt error transient (True) or permanent (False)?

    ``code`` is the virErrorNumber, ``domain_code`` the virErrorDomain (which part of
    libvirt raised it), ``message`` libvirt's text.  Pure: no connection needed.
    """
    text = message.lower()
    if any(words in text for words in _PERMANENT_MESSAGES):
        return False
    if code in _TRANSIENT_CODES:
        return True
    if code in _TRANSIENT_RPC_CODES and domain_code in _TRANSIENT_RPC_DOMAINS:
        return True
    return any(words in text for words in _TRANSIENT_MESSAGES)


# QEMU's guest agent is missing, not configured or silent: what quiesce: try falls back on.
_AGENT_CODES = frozenset(
    {
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_AGENT_UNSYNCED,
        AGENT_COMMAND_TIMEOUT,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,  # "QEMU guest agent is not configured"
    }
)


def agent_unavailable(error: LibvirtError) -> bool:
    """Did this error come from a guest agent that is absent or not answering?"""
    return error.code in _AGENT_CODES and "agent" in error.reason.lower()


def convert(
    exc: libvirt.libvirtError, operation: str, domain: str | None, missing: str | None
) -> LibvirtError | NotFoundError:
    code = int(exc.get_error_code() or 0)
    domain_code = int(exc.get_error_domain() or 0)
    message = str(exc.get_error_message() or exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN and domain is not None:
        # Also from a call on a kept handle whose domain was undefined since.
        return NotFoundError(no_domain(domain))
    if code in _NOT_FOUND_CODES and missing is not None:
        return NotFoundError(missing)
    return make_error(message, code=code, origin=domain_code, operation=operation, domain=domain)


def make_error(
    message: str, *, code: int, origin: int, operation: str, domain: str | None
) -> LibvirtError:
    """snapshotd's LibvirtError for libvirt's error ``code`` raised by part ``origin``
    (a virErrorDomain) with ``message``."""
    return LibvirtError(
        message,
        operation=operation,
        domain=domain,
        transient=classify(code, origin, message),
        code=code,
        unsupported=code in _UNSUPPORTED_CODES,
    )


@contextmanager
def calling(operation: str, domain: str | None, missing: str | None = None) -> Iterator[None]:
    """Turn a libvirtError raised inside the block into snapshotd's errors.

    ``missing`` is the NotFoundError message for VIR_ERR_NO_DOMAIN(_SNAPSHOT); without
    it those codes become a permanent LibvirtError like any other.
    """
    try:
        yield
    except libvirt.libvirtError as exc:
        raise convert(exc, operation, domain, missing) from exc


def error_code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code() or 0)


def no_domain(name_or_uuid: str) -> str:
    return f"domain {name_or_uuid!r} not found: no domain has that name" + (
        " or UUID" if is_uuid(name_or_uuid) else ""
    )


def no_snapshot(domain: str, snapshot: str) -> str:
    return f"domain {domain!r} has no snapshot {snapshot!r}"


def is_uuid(text: str) -> bool:
    try:
        uuidlib.UUID(text)
    except ValueError:
        return False
    return True
