"""libvirt's process-wide set-up, done once before the first connection: its error
handler quieted (errors are raised as exceptions anyway) and its default event loop
registered and run on a thread of its own (keepalive and domain events need it)."""

from __future__ import annotations

import threading

import libvirt

from snapshotd.errors import LibvirtError

_setup_lock = threading.Lock()
_event_loop: threading.Thread | None = None


def _ignore_error(_ctx: object, _error: object) -> None:
    """libvirt error callback: say nothing, the error is raised as an exception anyway."""


def _run_event_loop() -> None:
    while True:
        # Returns -1 only on an internal error of the poll loop; carry on regardless,
        # a stopped loop would silently kill every connection's keepalive.
        libvirt.virEventRunDefaultImpl()


def setup() -> None:
    """Once per process: quiet libvirt's stderr, register and run the default event loop."""
    global _event_loop  # noqa: PLW0603 - one event loop per process is libvirt's model
    with _setup_lock:
        if _event_loop is not None:
            return
        libvirt.registerErrorHandler(_ignore_error, None)
        if libvirt.virEventRegisterDefaultImpl() < 0:
            raise LibvirtError(
                "virEventRegisterDefaultImpl failed",
                operation="start the libvirt event loop",
                domain=None,
                transient=False,
            )
        thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
        thread.start()
        _event_loop = thread
