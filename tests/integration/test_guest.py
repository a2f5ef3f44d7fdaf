"""The real Linux test guest (tests/integration/guest.py) boots, and its agent does what
snapshotd's quiescing relies on: runs commands, reads and writes files, freezes and thaws
the data disk's filesystem, and can be made to hang in a freeze for real."""

from __future__ import annotations

import time

import libvirt
import pytest

from tests.integration.guest import (
    DATA_MOUNT,
    AgentError,
    Guest,
)

BOOT_BOUND = 60.0  # seconds from define to a running agent: 7-16 s seen under TCG here
FREEZE_DELAY = 4  # seconds the fsfreeze hook sleeps in the hang tests


def test_boots_to_a_running_agent(guest: Guest) -> None:
    assert guest.boot_seconds is not None
    print(f"{guest.name}: define to running agent in {guest.boot_seconds:.1f} s")
    assert guest.boot_seconds < BOOT_BOUND
    info = guest.command("guest-info")
    enabled = {c["name"] for c in info["supported_commands"] if c["enabled"]}
    assert {"guest-exec", "guest-file-open", "guest-fsfreeze-freeze"} <= enabled
    print(f"qemu-ga {info['version']}")
    assert "qemu-ga started" in guest.console_log.read_text()


def test_exec_writes_a_file_on_data_and_reads_it_back(guest: Guest) -> None:
    mounts = guest.read_file("/proc/mounts").decode().splitlines()
    data = [m.split() for m in mounts if m.split()[1] == DATA_MOUNT]
    assert data, mounts
    assert data[0][2] == "ext4"
    print(f"data disk in the guest: {data[0][0]}")

    code, out, err = guest.exec(["sh", "-c", f"echo hello from $(uname -r) >{DATA_MOUNT}/f; sync"])
    assert (code, err) == (0, b""), (out, err)
    assert guest.read_file(f"{DATA_MOUNT}/f").startswith(b"hello from ")

    guest.write_file(f"{DATA_MOUNT}/g", b"\x00\xffbinary" * 10000)
    code, out, _ = guest.exec(["cat", f"{DATA_MOUNT}/g"])
    assert (code, out) == (0, b"\x00\xffbinary" * 10000)

    code, out, err = guest.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (code, out, err) == (7, b"out\n", b"err\n")


def test_fsfreeze_then_thaw_is_logged_and_seen_frozen_between(guest: Guest) -> None:
    assert not guest.fs_frozen()
    assert guest.dom.fsFreeze() == 1  # one filesystem: /data (tmpfs and rootfs are skipped)
    try:
        assert guest.fs_frozen()
        with pytest.raises(AgentError, match="guest-exec"):  # refused while frozen
            guest.exec(["true"])
    finally:
        assert guest.dom.fsThaw() == 1
    assert not guest.fs_frozen()
    assert [what for _, what in guest.freeze_log()] == ["freeze", "thaw"]


def test_freeze_delay_makes_a_freeze_hang(guest: Guest) -> None:
    guest.set_freeze_delay(FREEZE_DELAY)
    # libvirt 9's default agent timeout is "block": fsFreeze would wait forever for a hung
    # agent.  Bound it well above the delay, so a broken hook fails the test instead.
    guest.dom.agentSetResponseTimeout(FREEZE_DELAY + 30, 0)
    start = time.monotonic()
    assert guest.dom.fsFreeze() == 1
    took = time.monotonic() - start
    print(f"fsFreeze with a {FREEZE_DELAY} s hook delay took {took:.1f} s")
    try:
        assert took >= FREEZE_DELAY
        assert guest.fs_frozen()
    finally:
        guest.dom.fsThaw()
    assert not guest.fs_frozen()
    log = guest.freeze_log()
    assert [what for _, what in log] == [f"freeze-delay {FREEZE_DELAY}", "freeze", "thaw"]
    assert log[1][0] - log[0][0] >= FREEZE_DELAY - 0.1  # the guest's clock agrees


def test_agent_response_timeout_bounds_a_hung_freeze(guest: Guest) -> None:
    guest.set_freeze_delay(FREEZE_DELAY)
    guest.dom.agentSetResponseTimeout(1, 0)
    start = time.monotonic()
    with pytest.raises(libvirt.libvirtError) as raised:
        guest.dom.fsFreeze()
    took = time.monotonic() - start
    print(f"fsFreeze gave up after {took:.1f} s: {raised.value}")
    # libvirt 9.0 says "unresponsive", libvirt 11 "command timed out" (code 112)
    assert raised.value.get_error_code() in {libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 112}
    assert took < FREEZE_DELAY

    # The guest goes on freezing once the hook returns; libvirt drops the late reply.  Until
    # then every command times out the same way (libvirt's guest-sync waits the 1 s first).
    deadline = time.monotonic() + FREEZE_DELAY + 20
    while True:
        try:
            frozen = guest.fs_frozen()
            break
        except AgentError:
            if time.monotonic() > deadline:
                raise
    assert frozen
    guest.dom.agentSetResponseTimeout(10, 0)
    assert guest.dom.fsThaw() == 1
    assert not guest.fs_frozen()
    guest.set_freeze_delay(None)
    assert [what for _, what in guest.freeze_log()] == [
        f"freeze-delay {FREEZE_DELAY}",
        "freeze",
        "thaw",
    ]
