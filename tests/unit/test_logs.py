"""snapshotd.adapters.logs: the stderr line, the journald fields, sanitize_uri, the XML guard."""

from __future__ import annotations

import inspect
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapshotd.adapters import logs
from snapshotd.adapters.logs import WITHHELD, log_event, quote, sanitize_uri, setup

SNAPSHOT_XML = (
    "<domainsnapshot><name>s1</name><disks><disk name='vda'>"
    "<source protocol='rbd'><auth username='admin'><secret type='ceph' uuid='x'/></auth>"
    "</source></disk></disks></domainsnapshot>"
)
DOMAIN_XML = "<domain type='kvm'><graphics type='vnc' passwd='hunter2'/></domain>"


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    logger = logging.getLogger("snapshotd")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _stderr_logger(level: int = logging.DEBUG) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = setup(journal=False, level=level, stream=stream)
    return logger, stream


class FakeSend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.calls.append((message, fields))


# --- stderr -----------------------------------------------------------------------


def test_stderr_line_with_fields() -> None:
    logger, stream = _stderr_logger()
    log_event(
        logger,
        logging.INFO,
        "snapshot taken",
        policy="web-hourly",
        domain="web",
        snapshot="web-hourly-20240101T0000Z",
        operation="create",
        duration_ms=812,
        uri="qemu+ssh://root:hunter2@host/system",
    )
    assert stream.getvalue() == (
        "INFO snapshot taken policy=web-hourly domain=web snapshot=web-hourly-20240101T0000Z"
        " operation=create duration_ms=812 uri=qemu+ssh://root@host/system\n"
    )


def test_stderr_extra_fields_and_quoting() -> None:
    logger, stream = _stderr_logger()
    logger.warning(
        "retrying %s", "web", extra={"fields": {"domain": "my web", "policy": "", "x": None}}
    )
    logging.getLogger("snapshotd.child").error("two\nlines")
    assert stream.getvalue().splitlines() == [
        'WARNING retrying web domain="my web" policy=""',
        "ERROR two\\nlines",
    ]


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("/var/lib/x.qcow2", "/var/lib/x.qcow2"),
        ("", '""'),
        ("a b", '"a b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("k=v", '"k=v"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("bell\x07", '"bell\\x07"'),
        ("naïve", "naïve"),
    ],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote(value) == quoted


def test_stderr_exception_stays_one_line() -> None:
    logger, stream = _stderr_logger()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"fields": {"domain": "web"}})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('ERROR failed domain=web traceback="Traceback (most recent call')
    assert "ValueError: boom" in lines[0]


def test_level_filters() -> None:
    logger, stream = _stderr_logger(level=logging.INFO)
    logger.debug("hidden")
    logger.info("shown")
    assert stream.getvalue() == "INFO shown\n"


def test_setup_twice_keeps_one_handler() -> None:
    setup(journal=False, stream=io.StringIO())
    logger, stream = _stderr_logger()
    assert len([h for h in logger.handlers if h.get_name() == "snapshotd.logs"]) == 1
    logger.info("once")
    assert stream.getvalue() == "INFO once\n"
    assert logger.propagate is False


# --- journald ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, "2"),
        (logging.ERROR, "3"),
        (logging.WARNING, "4"),
        (logging.INFO, "6"),
        (logging.DEBUG, "7"),
        (25, "6"),
    ],
)
def test_journal_priority(level: int, priority: str) -> None:
    send = FakeSend()
    logger = setup(journal=True, level=logging.DEBUG, send=send)
    logger.log(level, "hello")
    ((message, fields),) = send.calls
    assert message == "hello"
    assert fields["PRIORITY"] == priority


def test_journal_fields() -> None:
    send = FakeSend()
    logger = setup(journal=True, send=send)
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    log_event(
        logger,
        logging.ERROR,
        "snapshot failed",
        policy="web-hourly",
        domain="web",
        snapshot="s1",
        operation="create",
        duration_ms=1500,
        uri="qemu+tcp://admin:pw@host/system?password=pw",
        extra_thing=None,
    )
    assert send.calls == [
        (
            "snapshot failed",
            {
                "CODE_FILE": __file__,
                "CODE_LINE": line,
                "CODE_FUNC": "test_journal_fields",
                "PRIORITY": "3",
                "SYSLOG_IDENTIFIER": "snapshotd",
                "POLICY": "web-hourly",
                "DOMAIN": "web",
                "SNAPSHOT": "s1",
                "OPERATION": "create",
                "DURATION_MS": "1500",
                "URI": "qemu+tcp://admin@host/system?password=***",
            },
        )
    ]


def test_journal_reserved_fields_cannot_be_overridden() -> None:
    send = FakeSend()
    logger = setup(journal=True, send=send)
    logger.info("x", extra={"fields": {"priority": 0, "syslog_identifier": "evil", "a-b": 1}})
    ((_, fields),) = send.calls
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "snapshotd"
    assert fields["A_B"] == "1"


def test_journal_exception_in_message() -> None:
    send = FakeSend()
    logger = setup(journal=True, send=send)
    try:
        raise RuntimeError("lost connection")
    except RuntimeError:
        logger.exception("link down")
    ((message, _),) = send.calls
    assert message.startswith("link down\nTraceback")
    assert message.endswith("RuntimeError: lost connection")


def test_journal_default_send_is_systemd_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    from systemd import journal  # noqa: PLC0415 - a declared dependency, imported lazily

    send = FakeSend()
    monkeypatch.setattr(journal, "send", send)
    logger = setup(journal=True)
    logger.info("via systemd-python")
    assert send.calls[0][0] == "via systemd-python"


# Run in a mount namespace of its own, with a tmpfs on /run: the journal socket there is
# this script's, bound as journald binds it, and systemd-python's send() reaches it.
_JOURNALD = """
import logging, socket, sys
from pathlib import Path
Path("/run/systemd/journal").mkdir(parents=True)
journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
journald.bind("/run/systemd/journal/socket")
journald.settimeout(10)
from snapshotd.adapters.logs import log_event, setup
logger = setup(journal=True)  # the real send: systemd.journal.send
log_event(logger, logging.WARNING, "made\\nlate", domain="web", uri="qemu+ssh://u:pw@h/system")
try:
    raise RuntimeError("lost")
except RuntimeError:
    logger.exception("link down")
for _ in range(2):
    print(journald.recv(65536).hex(), flush=True)
"""


def _native(datagram: bytes) -> dict[str, str]:
    """journald's native protocol: NAME=value lines, or NAME, a 64-bit length, the bytes."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, rest = rest.partition(b"\n")
        name, eq, value = line.partition(b"=")
        if not eq:
            size = int.from_bytes(rest[:8], "little")
            value, rest = rest[8 : 8 + size], rest[8 + size + 1 :]
        fields[name.decode()] = value.decode()
    return fields


def test_journal_entries_reach_a_journal_socket_through_systemd_python(tmp_path: Path) -> None:
    script = tmp_path / "journald.py"
    script.write_text(_JOURNALD)
    done = subprocess.run(
        [
            "unshare",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            f'mount -t tmpfs tmpfs /run && exec "$0" {script}',
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, second = (_native(bytes.fromhex(line)) for line in done.stdout.split())
    assert first == {
        "MESSAGE": "made\nlate",
        "CODE_FILE": str(script),
        "CODE_LINE": "10",
        "CODE_FUNC": "<module>",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "snapshotd",
        "DOMAIN": "web",
        "URI": "qemu+ssh://u@h/system",
    }
    assert second["PRIORITY"] == "3"
    assert second["MESSAGE"].startswith("link down\nTraceback")
    assert second["MESSAGE"].endswith("RuntimeError: lost")


def test_journal_stream_detection(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    path.write_text("")
    with path.open("w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.journal_stream_connected(env, f.fileno())
        assert not logs.journal_stream_connected({"JOURNAL_STREAM": f"{st.st_dev}:1"}, f.fileno())
        assert not logs.journal_stream_connected({"JOURNAL_STREAM": "junk"}, f.fileno())
        assert not logs.journal_stream_connected({}, f.fileno())
        send = FakeSend()
        logger = setup(environ=env, send=send)  # journal=None: decided by JOURNAL_STREAM
        assert not send.calls
        # setup() looks at fd 2, which is not this file: stderr it is.
        assert not any(isinstance(h, logs.JournalHandler) for h in logger.handlers)


def test_journal_send_failure_is_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(message: str, **fields: Any) -> None:
        raise OSError(2, "No such file or directory")

    monkeypatch.setattr(logging, "raiseExceptions", False)
    logger = setup(journal=True, send=broken)
    logger.error("nowhere to go")  # must not raise


# --- sanitize_uri -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "clean"),
    [
        ("qemu:///system", "qemu:///system"),
        ("qemu+ssh://root:hunter2@host/system?keyfile=/x", "qemu+ssh://root@host/system?keyfile=/x"),
        ("qemu+ssh://root@host/system", "qemu+ssh://root@host/system"),
        ("qemu+tcp://user:p%40ss@[::1]:16509/system", "qemu+tcp://user@[::1]:16509/system"),
        ("qemu+tcp://:secret@host/system", "qemu+tcp://@host/system"),
        ("test:///default", "test:///default"),
        ("esx://u:pw@h/?no_verify=1&password=pw", "esx://u@h/?no_verify=1&password=***"),
        ("qemu+ssh://h/system?passwd=a&key=b&PASSWORD=c", "qemu+ssh://h/system?passwd=***&key=***&PASSWORD=***"),
        ("qemu+libssh2://u@h/system?sshauth=password", "qemu+libssh2://u@h/system?sshauth=password"),
        ("qemu+ssh://h/system?keyfile=/root/.ssh/id&token=t#frag", "qemu+ssh://h/system?keyfile=/root/.ssh/id&token=***#frag"),
        ("qemu+ssh://h/system?password", "qemu+ssh://h/system?password"),
        ("", ""),
        ("not a uri", "not a uri"),
    ],
)  # fmt: skip
def test_sanitize_uri(uri: str, clean: str) -> None:
    assert sanitize_uri(uri) == clean
    assert sanitize_uri(clean) == clean


# --- the XML guard ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        SNAPSHOT_XML,
        DOMAIN_XML,
        "<domainsnapshot>\n  <name>x</name>\n</domainsnapshot>",
        "<domain>\n</domain>",
        "created from <secret ephemeral='no'>",
    ],
)
def test_guard_withholds_xml_in_message(text: str) -> None:
    logger, stream = _stderr_logger()
    logger.debug("creating snapshot: %s", text, extra={"fields": {"domain": "web"}})
    assert stream.getvalue() == f"WARNING {WITHHELD} domain=web\n"


def test_guard_withholds_xml_in_fields_and_exceptions() -> None:
    send = FakeSend()
    logger = setup(journal=True, send=send)
    log_event(logger, logging.INFO, "snapshot taken", domain="web", xml=SNAPSHOT_XML)
    try:
        raise RuntimeError("libvirt refused " + DOMAIN_XML)
    except RuntimeError:
        logger.exception("create failed")
    assert [(m, f["PRIORITY"], f.get("DOMAIN"), "XML" in f) for m, f in send.calls] == [
        (WITHHELD, "4", "web", False),
        (WITHHELD, "3", None, False),
    ]
    assert all("hunter2" not in m and "<" not in m for m, _ in send.calls)


def test_guard_lets_names_through() -> None:
    logger, stream = _stderr_logger()
    log_event(logger, logging.INFO, "domain web: snapshot s1 <ok>", snapshot="s1")
    assert stream.getvalue() == "INFO domain web: snapshot s1 <ok> snapshot=s1\n"


def test_guard_covers_child_loggers() -> None:
    logger, stream = _stderr_logger()
    logging.getLogger("snapshotd.actions.snapshot").info("xml: %s", DOMAIN_XML)
    assert logger.handlers
    assert stream.getvalue() == f"WARNING {WITHHELD}\n"
