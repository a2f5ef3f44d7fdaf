"""snapshotd.adapters.notify against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotd.adapters.notify import STATUS_MAX, Notifier, status_text


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def _nothing_waiting(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    return False


def test_ready_stopping_status(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("3 policies, 5 domains")
    assert _received(sock) == "READY=1\nSTATUS=3 policies, 5 domains"
    assert notifier.ready()
    assert _received(sock) == "READY=1"
    assert notifier.stopping("stopping; 0 snapshots in flight")
    assert _received(sock) == "STOPPING=1\nSTATUS=stopping; 0 snapshots in flight"
    assert notifier.stopping()
    assert _received(sock) == "STOPPING=1"
    assert notifier.status("idle")
    assert _received(sock) == "STATUS=idle"


def test_reloading_sends_monotonic_usec(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading policies")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = _received(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    name, _, value = lines[1].partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert lines[2:] == ["STATUS=reloading policies"]


def test_status_is_one_capped_line(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("first\nsecond\r\nthird")
    assert _received(sock) == "STATUS=first second third"
    notifier.status("x" * 1000)
    text = _received(sock).removeprefix("STATUS=")
    assert len(text) == STATUS_MAX
    assert text.endswith("...")
    assert "\n" not in status_text("a\nb\n")


def test_abstract_socket() -> None:
    name = f"snapshotd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready("up")
        assert _received(sock) == "READY=1\nSTATUS=up"


@pytest.mark.parametrize(
    ("extra", "enabled"),
    [
        ({"WATCHDOG_USEC": "30000000"}, True),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, True),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, False),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "junk"}, False),
        ({"WATCHDOG_USEC": "0"}, False),
        ({"WATCHDOG_USEC": "soon"}, False),
        ({}, False),
    ],
)
def test_watchdog(
    listener: tuple[str, socket.socket], extra: dict[str, str], enabled: bool
) -> None:
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path, **extra})
    if enabled:
        assert notifier.watchdog_interval() == 15.0
        assert notifier.watchdog()
        assert _received(sock) == "WATCHDOG=1"
    else:
        assert notifier.watchdog_interval() is None
        assert not notifier.watchdog()
        assert _nothing_waiting(sock)


def test_no_socket_is_a_no_op() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert not notifier.ready("up")
    assert not notifier.reloading("r")
    assert not notifier.stopping("s")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert notifier.watchdog_interval() is None
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_from_env_defaults_to_os_environ(
    listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    assert notifier.watchdog_interval() == 1.0
    notifier.watchdog()
    assert _received(sock) == "WATCHDOG=1"


def test_unreachable_socket_is_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert not notifier.ready("up")


# A notify socket nobody reads, filled from a thread by one sender; the main thread
# wakes after the queue is full and says how many notifications went out, twice.
_FILL = """
import os, socket, sys, threading, time
sender, path = sys.argv[1], sys.argv[2]
receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
receiver.bind(path)  # never read: the queue fills, as when PID 1 is busy
if sender == "systemd-python":
    os.environ["NOTIFY_SOCKET"] = path
    from systemd.daemon import notify
    send = lambda: notify("STATUS=busy")
else:
    from snapshotd.adapters.notify import Notifier
    notifier = Notifier(path)
    send = lambda: notifier.status("busy")
sent = 0
def fill():
    global sent
    while True:
        send()
        sent += 1
threading.Thread(target=fill, daemon=True).start()
time.sleep(0.5)  # the queue holds a few hundred datagrams: full long before this
print(sent, flush=True)
time.sleep(0.2)
print(sent, flush=True)
"""


def _fill(sender: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _FILL, sender, str(path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )


def test_a_full_notify_queue_stops_only_the_sender(tmp_path: Path) -> None:
    # The sender's thread waits for systemd to read; the daemon's other threads go on.
    first, second = _fill("snapshotd", tmp_path / "notify").stdout.split()
    assert int(first) > 0
    assert first == second  # blocked: nothing more went out


def test_systemd_python_notify_stops_every_thread_on_a_full_queue(tmp_path: Path) -> None:
    # Why notify.py sends its own datagrams (its docstring): systemd.daemon.notify keeps
    # the GIL while it waits, so the main thread never wakes.  Should a later
    # systemd-python release the GIL, this fails: then notify.py can use it.
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        subprocess.run(
            [sys.executable, "-c", _FILL, "systemd-python", str(tmp_path / "notify")],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    assert not stopped.value.stdout  # the main thread printed nothing
