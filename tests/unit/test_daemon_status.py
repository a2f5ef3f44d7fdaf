"""What the daemon writes to status.json and says on its status line, from its loop state."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

from snapshotd.adapters import statusfile
from snapshotd.adapters.notify import Notifier
from snapshotd.adapters.statusfile import StatusWriter
from snapshotd.config.settings import Overrides, Settings
from snapshotd.core.model import DomainInfo, DomainState
from snapshotd.daemon.events import LinkChanged, Settled, Stop
from snapshotd.daemon.loop import Daemon
from snapshotd.daemon.runs import Due, Job, Key

NOW = 1_800_000_000.0
LOGIN_URI = "qemu+ssh://root:hunter2@host/system"
WEB = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
DB = "11111111-2222-3333-4444-555555555555"


def _domain(name: str, uuid: str) -> DomainInfo:
    return DomainInfo(name=name, uuid=uuid, state=DomainState.RUNNING)


def _daemon(tmp_path: Path) -> Daemon:
    daemon = Daemon(Overrides(), clock=lambda: NOW)
    daemon.settings = Settings(
        state_dir=str(tmp_path), policy_dir="/etc/p.d", config="/etc/s.yaml", connect=(LOGIN_URI,)
    )
    daemon._status_file = StatusWriter(str(tmp_path))
    daemon.limit = 2
    daemon.domains = {LOGIN_URI: [_domain("web", WEB), _domain("db", DB)]}
    slot = dt.datetime.fromtimestamp(NOW, dt.UTC)
    daemon.due[Key("hourly", LOGIN_URI, WEB)] = Due(NOW + 600.7, slot, "next slot")
    daemon.due[Key("hourly", LOGIN_URI, "gone")] = Due(NOW + 60, slot, "")
    mono = time.monotonic()
    daemon.jobs[Key("hourly", LOGIN_URI, DB)] = Job(
        Key("hourly", LOGIN_URI, DB), "db", mono, mono + 600, NOW - 5.5, overrun=True
    )
    return daemon


def test_status_json_has_the_shape_snapshotd_status_reads(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    daemon._handle(LinkChanged(LOGIN_URI, False, "connection lost"))
    daemon._update_status(NOW)
    data = json.loads((tmp_path / statusfile.STATUS_NAME).read_text())
    assert data == {
        "pid": os.getpid(),
        "started_at": int(daemon._started_at),
        "config": "/etc/s.yaml (absent: built-in defaults)",
        "policy_dir": "/etc/p.d",
        "policies": [],
        "load_errors": [],
        "connections": [
            {"uri": "qemu+ssh://root@host/system", "connected": False, "error": "connection lost"}
        ],
        "workers": 2,
        "operation_timeout": 600.0,
        "scheduled": [
            {
                "policy": "hourly",
                "uri": "qemu+ssh://root@host/system",
                "domain_uuid": WEB,
                "domain": "web",
                "next_due": int(NOW + 600),
                "reason": "next slot",
            },
            {
                "policy": "hourly",
                "uri": "qemu+ssh://root@host/system",
                "domain_uuid": "gone",
                "domain": "gone",  # not listed: its UUID stands in for the name
                "next_due": int(NOW + 60),
                "reason": "",
            },
        ],
        "running": [
            {
                "policy": "hourly",
                "uri": "qemu+ssh://root@host/system",
                "domain_uuid": DB,
                "domain": "db",
                "since": int(NOW - 5.5),
                "overrun": True,
            }
        ],
        "last_error": "qemu+ssh://root@host/system: connection lost",
        "stopping": False,
    }
    assert "hunter2" not in (tmp_path / statusfile.STATUS_NAME).read_text()
    # Read back through the model, it is what was written.
    again = statusfile.read_status(str(tmp_path))
    assert again is not None
    assert again.to_json() == data


def test_the_status_line_and_the_stop(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    daemon.policies = {}
    daemon._update_status(NOW)
    assert daemon.status.line() == "0 policies, 2 domains; next 2027-01-15 08:01:00Z (hourly)"
    daemon._handle(Stop())
    daemon._update_status(NOW)
    written = statusfile.read_status(str(tmp_path))
    assert written is not None
    assert written.stopping is True


def test_settled_lets_the_unsettled_keys_be_planned_again(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    key = Key("hourly", LOGIN_URI, WEB)
    other = Key("hourly", "qemu:///other", WEB)
    daemon._unsettled = {key, other}
    daemon._handle(Settled(LOGIN_URI))
    assert daemon._unsettled == {other}
    assert key not in daemon.due  # planned before its run was settled: planned again


def test_a_notifier_hears_the_status_line(tmp_path: Path) -> None:
    sent: list[str] = []

    class Recording(Notifier):
        def status(self, text: str) -> bool:
            sent.append(text)
            return True

    daemon = _daemon(tmp_path)
    daemon.notifier = Recording(None)
    daemon._update_status(NOW)
    assert sent == [daemon.status.line()]
