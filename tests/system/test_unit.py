"""systemd/snapshotd.service: static checks, and real runs under the namespace's systemd."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.system.conftest import IMAGES, SystemdNamespace, remove_domain

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "snapshotd.service"
OPERATIONS = REPO / "docs" / "operations.md"
STANDIN = Path(__file__).with_name("standin.py")
PYTHON = sys.executable
# ProtectHome=yes hides /root and /home.  A venv whose base interpreter lives there (pyenv
# under /root on developer machines) cannot start under it; the test drop-ins then relax
# it to read-only.  An installed snapshotd's venv is based on /usr/bin/python3.
_REAL_PYTHON = Path(PYTHON).resolve()
HOME_FIX = (
    "ProtectHome=read-only\n"
    if any(_REAL_PYTHON.is_relative_to(h) for h in ("/root", "/home", "/run/user"))
    else ""
) + (
    # PrivateTmp=yes gives the service its own /tmp: a checkout (and its venv) under /tmp,
    # as a CI clone may be, is bound back in read-only.
    f"BindReadOnlyPaths={REPO}\n"
    if any(REPO.is_relative_to(t) for t in ("/tmp", "/var/tmp"))
    else ""
)

STANDIN_UNIT = f"""\
[Unit]
Description=tests/system stand-in Type=notify service

[Service]
Type=notify
NotifyAccess=main
ExecStart={PYTHON} {STANDIN} 1.5
WatchdogSec=2s
Restart=on-failure
RestartSec=200ms
TimeoutStopSec=5s
"""


def test_verify_is_clean() -> None:
    """`systemd-analyze verify` prints nothing for the unit as shipped.

    verify insists that ExecStart's binary exists, so it runs in a private mount namespace
    with a tmpfs over /usr/local/bin holding a stub: the host's /usr/local/bin is not touched.
    """
    script = (
        "set -e; mount -t tmpfs -o mode=0755 verify /usr/local/bin; "
        "printf '#!/bin/sh\\n' >/usr/local/bin/snapshotd; chmod 0755 /usr/local/bin/snapshotd; "
        'exec systemd-analyze verify --man=no "$1"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.fixture
def standin(systemd_ns: SystemdNamespace) -> Iterator[str]:
    name = systemd_ns.install_unit(STANDIN_UNIT, "standin.service")
    yield name
    systemd_ns.remove_unit(name)


def _journal(ns: SystemdNamespace, unit: str) -> list[dict[str, str]]:
    out = ns.journalctl("-u", unit, "-o", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_start_waits_for_ready(systemd_ns: SystemdNamespace, standin: str) -> None:
    started = time.monotonic()
    systemd_ns.systemctl("start", standin, check=True)
    took = time.monotonic() - started
    assert took >= 1.4, f"systemctl start returned after {took:.2f}s, before READY=1"
    props = systemd_ns.show(standin, "ActiveState", "SubState", "StatusText", "MainPID")
    assert props["ActiveState"] == "active"
    assert props["SubState"] == "running"
    assert props["StatusText"] == "ready after 1.5s"
    assert int(props["MainPID"]) > 1


def test_journal_has_structured_fields(systemd_ns: SystemdNamespace, standin: str) -> None:
    systemd_ns.systemctl("start", standin, check=True)
    pid = systemd_ns.show(standin, "MainPID")["MainPID"]
    entries = _journal(systemd_ns, standin)
    ready = [e for e in entries if e.get("STANDIN_EVENT") == "ready"]
    assert ready, entries
    assert ready[-1]["STANDIN_PID"] == pid
    assert ready[-1]["_SYSTEMD_UNIT"] == standin
    assert ready[-1]["MESSAGE"] == "standin ready"


def test_watchdog_kills_and_restarts_a_hung_service(
    systemd_ns: SystemdNamespace, standin: str
) -> None:
    systemd_ns.systemctl("start", standin, check=True)
    props = systemd_ns.show(standin, "MainPID", "NRestarts")
    pid, restarts = props["MainPID"], int(props["NRestarts"])
    # The namespace's PID as the host sees it: signal it from inside.
    systemd_ns.run("kill", "-STOP", pid, check=True)
    systemd_ns.wait_for(standin, "NRestarts", lambda v: int(v or 0) > restarts, timeout=15)
    systemd_ns.wait_for(standin, "ActiveState", lambda v: v == "active", timeout=15)
    assert systemd_ns.show(standin, "MainPID")["MainPID"] != pid
    messages = [e.get("MESSAGE", "") for e in _journal(systemd_ns, standin)]
    assert any("Watchdog timeout" in m for m in messages), messages


def test_the_hardened_unit_runs_python(systemd_ns: SystemdNamespace) -> None:
    """snapshotd.service's sandbox as shipped (MemoryDenyWriteExecute, the system call
    filter, no capabilities, ...) with the stand-in as ExecStart: CPython, systemd-python
    and the notify protocol work under it."""
    name = systemd_ns.install_unit(UNIT, "snapshotd.service")
    try:
        systemd_ns.install_dropin(
            name,
            f"[Service]\nExecStart=\nExecStart={PYTHON} {STANDIN} 0.2\nWatchdogSec=2s\n{HOME_FIX}",
        )
        systemd_ns.systemctl("start", name, check=True)
        systemd_ns.systemctl("reload", name, check=True)  # ExecReload: kill -HUP $MAINPID
        deadline = time.monotonic() + 5
        while not any(e.get("STANDIN_EVENT") == "reload" for e in _journal(systemd_ns, name)):
            assert time.monotonic() < deadline, "SIGHUP did not reach the main process"
            time.sleep(0.1)
        props = systemd_ns.show(name, "ActiveState", "NRestarts", "MainPID")
        assert props["ActiveState"] == "active", props
        stopped = time.monotonic()
        systemd_ns.systemctl("stop", name, check=True)
        assert time.monotonic() - stopped < 5
        assert systemd_ns.show(name, "Result")["Result"] == "success"
    finally:
        systemd_ns.remove_unit(name)


def _install_steps() -> str:
    """The shell block of docs/operations.md that installs the unit and the config."""
    text = OPERATIONS.read_text()
    match = re.search(r"<!-- tested: install-steps -->\s*```sh\n(.*?)```", text, re.DOTALL)
    assert match, "docs/operations.md lost its <!-- tested: install-steps --> block"
    return match.group(1)


@pytest.fixture
def installed(systemd_ns: SystemdNamespace) -> Iterator[SystemdNamespace]:
    """docs/operations.md's install steps, run inside the namespace (whose /etc, /opt,
    /usr/local and /var/lib are throwaway overlays).  The virtualenv step is replaced by a
    symlink to this checkout's .venv, which has snapshotd installed the same way."""
    venv = systemd_ns.root / "opt/snapshotd/bin"
    venv.mkdir(parents=True, exist_ok=True)
    link = venv / "snapshotd"
    if not link.is_symlink():
        link.symlink_to(Path(PYTHON).with_name("snapshotd"))
    steps = _install_steps()
    result = systemd_ns.run("bash", "-euxc", f"cd {REPO}\n{steps}")
    assert result.returncode == 0, result.stderr
    yield systemd_ns
    systemd_ns.systemctl("disable", "snapshotd.service")
    systemd_ns.remove_unit("snapshotd.service")


def test_install_steps(installed: SystemdNamespace) -> None:
    root = installed.root
    # Absolute symlinks resolve against the host's root from here: read them one by one.
    assert str((root / "usr/local/bin/snapshotd").readlink()) == "/opt/snapshotd/bin/snapshotd"
    assert (root / "etc/systemd/system/snapshotd.service").read_text() == UNIT.read_text()
    policies = root / "etc/snapshotd/policies.d"
    assert (policies.stat().st_mode & 0o7777, policies.stat().st_uid) == (0o755, 0)
    config = root / "etc/snapshotd/snapshotd.yaml"
    assert (config.stat().st_mode & 0o7777, config.stat().st_uid) == (0o644, 0)
    assert installed.systemctl("is-enabled", "snapshotd.service").stdout.strip() == "enabled"
    # The host's /etc saw none of it.
    assert not Path("/etc/systemd/system/snapshotd.service").exists()
    assert not Path("/etc/snapshotd").exists()


def test_cli_reaches_libvirt_inside_the_sandbox(installed: SystemdNamespace) -> None:
    """`snapshotd plan` (lists every domain over qemu:///system) as a oneshot with the
    unit's sandbox: no capabilities, read-only /run, the installed /etc/snapshotd."""
    installed.install_dropin(
        "snapshotd.service",
        "[Service]\nType=oneshot\nExecStart=\nExecStart=/usr/local/bin/snapshotd plan\n"
        f"ExecReload=\nWatchdogSec=0\nRestart=no\n{HOME_FIX}",
    )
    result = installed.systemctl("start", "snapshotd.service")
    props = installed.show("snapshotd.service", "Result", "ExecMainStatus")
    messages = [e.get("MESSAGE", "") for e in _journal(installed, "snapshotd.service")]
    assert result.returncode == 0, (result.stderr, props, messages)
    assert props["Result"] == "success"
    assert any(m.startswith("plan at ") for m in messages), messages
    # The state directory was made by StateDirectory=, 0700 (in the namespace's /var/lib).
    state = installed.root / "var/lib/snapshotd"
    assert state.stat().st_mode & 0o7777 == 0o700


def test_namespace_is_isolated(systemd_ns: SystemdNamespace) -> None:
    """PID 1 inside is our systemd; /etc is a throwaway overlay; libvirtd's socket is there."""
    assert systemd_ns.run("cat", "/proc/1/comm", check=True).stdout.strip() == "systemd"
    probe = systemd_ns.root / "etc/snapshotd-harness-probe"
    probe.write_text("x")
    try:
        assert not Path("/etc/snapshotd-harness-probe").exists()
    finally:
        probe.unlink()
    assert (systemd_ns.root / "run/libvirt/libvirt-sock").is_socket()
    mounts = systemd_ns.run("findmnt", "-n", "-o", "FSTYPE", "/tmp", check=True).stdout
    assert mounts.strip() == "tmpfs"


def test_the_daemon_under_its_unit(installed: SystemdNamespace) -> None:
    """`snapshotd run` as installed, the unit unchanged (but for HOME_FIX): start waits
    for READY=1, the status line is set, reload keeps it running, stop is clean."""
    if HOME_FIX:
        installed.install_dropin("snapshotd.service", f"[Service]\n{HOME_FIX}")
    result = installed.systemctl("start", "snapshotd.service")
    props = installed.show("snapshotd.service", "ActiveState", "StatusText", "MainPID", "Result")
    messages = [e.get("MESSAGE", "") for e in _journal(installed, "snapshotd.service")]
    assert result.returncode == 0, (result.stderr, props, messages)
    assert props["ActiveState"] == "active", (props, messages)
    assert props["StatusText"], props
    pid = props["MainPID"]
    installed.systemctl("reload", "snapshotd.service", check=True)
    time.sleep(0.5)
    props = installed.show("snapshotd.service", "ActiveState", "MainPID", "NRestarts")
    assert (props["ActiveState"], props["MainPID"], props["NRestarts"]) == ("active", pid, "0")
    entries = _journal(installed, "snapshotd.service")
    assert any(e.get("_PID") == pid for e in entries), entries
    stopped = time.monotonic()
    installed.systemctl("stop", "snapshotd.service", check=True)
    assert time.monotonic() - stopped < 10
    assert installed.show("snapshotd.service", "Result")["Result"] == "success"


# --- the real daemon, with its configuration in a test directory ----------------------

SYSTEST = "/etc/snapshotd-systest"  # config and policies.d, in the namespace's /etc overlay
SYSTEST_STATE = "/var/lib/snapshotd-systest"  # the catalog, in its /var/lib overlay
# Images of the throwaway domains: libvirtd (on the host) must reach them; the harness
# binds this host directory into the namespace.


def _configure(ns: SystemdNamespace, policies: dict[str, str], dropin: str = "") -> str:
    """A test config, policy directory and state directory; the unit pointed at them by a
    drop-in (plus `dropin`).  Policy files root-owned 0644 in a 0755 directory."""
    base = ns.root / SYSTEST.lstrip("/")
    shutil.rmtree(base, ignore_errors=True)
    (base / "policies.d").mkdir(parents=True)
    for directory in (base, base / "policies.d"):
        directory.chmod(0o755)
    files = {"snapshotd.yaml": 'connect: ["qemu:///system"]\n'}
    files |= {f"policies.d/{name}.yaml": text for name, text in policies.items()}
    for name, text in files.items():
        (base / name).write_text(text)
        (base / name).chmod(0o644)
    state = ns.root / SYSTEST_STATE.lstrip("/")
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(mode=0o700, parents=True)
    args = (
        f"--config {SYSTEST}/snapshotd.yaml --policy-dir {SYSTEST}/policies.d "
        f"--state-dir {SYSTEST_STATE}"
    )
    check = ns.run("/usr/local/bin/snapshotd", "check", *args.split())
    assert check.returncode == 0, (check.stdout, check.stderr)
    ns.install_dropin(
        "snapshotd.service",
        f"[Service]\nExecStart=\nExecStart=/usr/local/bin/snapshotd run {args}\n"
        f"ReadWritePaths={SYSTEST_STATE}\n{HOME_FIX}{dropin}",
    )
    return "snapshotd.service"


def _start(ns: SystemdNamespace, unit: str) -> dict[str, str]:
    result = ns.systemctl("start", unit)
    props = ns.show(unit, "ActiveState", "MainPID", "NRestarts")
    messages = [e.get("MESSAGE", "") for e in _journal(ns, unit)]
    assert result.returncode == 0, (result.stderr, props, messages)
    assert props["ActiveState"] == "active", (props, messages)
    return props


def test_the_daemon_is_killed_and_restarted_by_the_watchdog(
    installed: SystemdNamespace,
) -> None:
    """`snapshotd run` stopped dead (SIGSTOP): WatchdogSec= expires, systemd kills it and
    Restart=on-failure brings up a new one (after the unit's own RestartSec=)."""
    unit = _configure(installed, {}, "WatchdogSec=2s\nLimitCORE=0\n")
    props = _start(installed, unit)
    pid, restarts = props["MainPID"], int(props["NRestarts"])
    # Left alone for longer than WatchdogSec=, it feeds the watchdog: nothing happens.
    time.sleep(3)
    props = installed.show(unit, "ActiveState", "MainPID", "NRestarts")
    assert (props["ActiveState"], props["MainPID"], props["NRestarts"]) == (
        "active",
        pid,
        str(restarts),
    ), props
    installed.run("kill", "-STOP", pid, check=True)
    installed.wait_for(unit, "NRestarts", lambda v: int(v or 0) > restarts, timeout=20)
    installed.wait_for(unit, "ActiveState", lambda v: v == "active", timeout=20)
    assert installed.show(unit, "MainPID")["MainPID"] not in {pid, "0"}
    messages = [e.get("MESSAGE", "") for e in _journal(installed, unit)]
    assert any("Watchdog timeout" in m for m in messages), messages


def _virt_type(conn: Any) -> str:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except (OSError, libvirt.libvirtError):
        return "qemu"
    return "kvm"


def _domain_xml(name: str, virt_type: str, image: Path) -> str:
    return f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{image}'/><target dev='vda' bus='virtio'/></disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture
def shutoff_domain() -> Iterator[str]:
    """A throwaway shut-off domain with one qcow2 disk; gone afterwards, pass or fail."""
    name = f"snapshotd-systest-{secrets.token_hex(4)}"
    directory = IMAGES / name
    conn = libvirt.open("qemu:///system")
    try:
        directory.mkdir(parents=True)
        image = directory / "vda.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
        conn.defineXML(_domain_xml(name, _virt_type(conn), image))
        yield name
    finally:
        remove_domain(conn, name, directory)


def test_the_daemon_logs_structured_fields_to_the_journal(
    installed: SystemdNamespace, shutoff_domain: str
) -> None:
    """A scheduled snapshot by `snapshotd run` under its unit: stderr is the journal, so
    the entry carries POLICY=, DOMAIN=, SNAPSHOT=, OPERATION=, DURATION_MS= and URI=."""
    policy = (
        f"domains: {{include: [{shutoff_domain}]}}\n"
        "schedule: {every: 2s}\n"
        'snapshot: {name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"}\n'
        "retention: {keep_last: 2}\n"
    )
    unit = _configure(installed, {"systest": policy})
    try:
        pid = _start(installed, unit)["MainPID"]
        deadline = time.monotonic() + 20
        while True:
            # This process's entries only: the namespace's journal holds the earlier tests'
            # daemons under the same unit.
            entries = [e for e in _journal(installed, unit) if e.get("_PID") == pid]
            created = [e for e in entries if e.get("OPERATION") == "create" and "SNAPSHOT" in e]
            if created or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert created, [e.get("MESSAGE") for e in entries]
        entry = created[0]
        assert entry["POLICY"] == "systest"
        assert entry["DOMAIN"] == shutoff_domain
        assert entry["SNAPSHOT"].startswith("systest-")
        assert int(entry["DURATION_MS"]) >= 0
        assert entry["URI"] == "qemu:///system"
        assert entry["SYSLOG_IDENTIFIER"] == "snapshotd"
        assert entry["PRIORITY"] == "6"
    finally:
        installed.systemctl("stop", unit)
