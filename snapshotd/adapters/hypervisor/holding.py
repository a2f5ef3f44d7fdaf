"""Holding a domain still and letting it go: suspend and resume, freeze and thaw.

A consistency group (snapshotd.actions.grouprun) holds every running member still
while their snapshots are made; a quiesced snapshot that failed on the agent thaws the
guest (connection.py).  Each function takes a virDomain handle and the name it is
known by in messages.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import libvirt

from snapshotd.adapters.hypervisor.errors import AGENT_COMMAND_TIMEOUT, calling, error_code

THAW_TRY = 2  # seconds each try of a thaw waits for the agent

# The agent did not answer in time, or is out of step: a freeze may be pending in the guest.
AGENT_SILENT = frozenset(
    {libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED, AGENT_COMMAND_TIMEOUT}
)


def suspend(dom: Any, domain: str) -> None:
    """virDomainSuspend: the vCPUs stop; nothing the guest does reaches its disks."""
    with calling("suspend", domain, f"domain {domain!r} not found"):
        dom.suspend()


def resume(dom: Any, domain: str) -> None:
    """virDomainResume."""
    with calling("resume", domain, f"domain {domain!r} not found"):
        dom.resume()


def freeze(dom: Any, domain: str, wait: int) -> None:
    """virDomainFSFreeze of every mounted file system, the agent given ``wait`` seconds
    to answer (then back to libvirt's default).  A freeze that timed out may still
    happen in the guest: the caller thaws after a failure too."""
    with calling("freeze file systems", domain, f"domain {domain!r} not found"):
        dom.agentSetResponseTimeout(wait, 0)
        try:
            dom.fsFreeze(None, 0)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.agentSetResponseTimeout(libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT, 0)


def thaw(dom: Any, within: float) -> bool:
    """Thaw the guest's file systems, retrying while its agent is silent; True once the
    agent answered a thaw (it thaws what is frozen, and nothing when nothing is)."""
    deadline = time.monotonic() + within
    with contextlib.suppress(libvirt.libvirtError):
        dom.agentSetResponseTimeout(THAW_TRY, 0)  # many short tries, not one long one
    try:
        while True:
            try:
                dom.fsThaw(None, 0)
                return True
            except libvirt.libvirtError as exc:
                if error_code(exc) not in AGENT_SILENT or time.monotonic() >= deadline:
                    return False
            time.sleep(1)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.agentSetResponseTimeout(libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT, 0)
