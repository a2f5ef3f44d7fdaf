"""A stand-in Type=notify service for tests/system: proves the harness, not snapshotd.

    standin.py [READY_DELAY]

Sleeps READY_DELAY seconds (default 1), logs a structured journal entry, sends READY=1,
then sends WATCHDOG=1 every WATCHDOG_USEC/4 (when systemd asks for a watchdog) and a
heartbeat entry every second, until SIGTERM; logs a reload entry on SIGHUP.  Talks to
NOTIFY_SOCKET directly (no library) so that the protocol itself is what the tests exercise.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from systemd import journal


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def main() -> int:
    delay = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    stop = False

    def on_term(_signo: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    def on_hup(_signo: int, _frame: object) -> None:
        journal.send("standin reload", STANDIN_EVENT="reload")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    time.sleep(delay)
    journal.send("standin ready", STANDIN_EVENT="ready", STANDIN_PID=str(os.getpid()))
    notify(f"READY=1\nSTATUS=ready after {delay}s\nMAINPID={os.getpid()}")
    usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    interval = usec / 4e6 if usec else 1.0
    beats = 0
    while not stop:
        notify("WATCHDOG=1")
        beats += 1
        if beats % max(1, round(1 / interval)) == 0:
            journal.send("standin heartbeat", STANDIN_EVENT="heartbeat", STANDIN_BEATS=str(beats))
        time.sleep(interval)
    notify("STOPPING=1")
    journal.send("standin stopping", STANDIN_EVENT="stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
