"""How the command line shows progress: on a terminal only."""

from __future__ import annotations

import io
import os
import pty
import time

from snapshotd.cli import output


def read_all(fd: int) -> str:
    """Everything the terminal has to give now (several reads may be needed)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_progress_is_drawn_on_a_terminal() -> None:
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    try:
        samples = iter([None, (50 << 20, 100 << 20), (100 << 20, 100 << 20)])
        with output.progress("snapshot of web", lambda: next(samples, None), stream, 0.05):
            time.sleep(0.4)
        text = read_all(master)
    finally:
        stream.close()
        os.close(master)
    assert "\rsnapshot of web:  50% (50 of 100 MiB)" in text
    assert "\rsnapshot of web: 100% (100 of 100 MiB)" in text
    assert text.endswith("\r\n")  # the line is finished (the terminal turns \n into \r\n)


def test_progress_is_quiet_elsewhere_and_when_there_is_nothing_to_show() -> None:
    stream = io.StringIO()
    with output.progress("x", lambda: (1, 2), stream, 0.01):
        time.sleep(0.1)
    assert stream.getvalue() == ""
    master, slave = pty.openpty()
    tty = os.fdopen(slave, "w")
    try:
        with output.progress("x", lambda: None, tty, 0.01):
            time.sleep(0.1)
        text = read_all(master)
    finally:
        tty.close()
        os.close(master)
    assert text == ""
