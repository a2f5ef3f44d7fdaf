"""snapshotd's quiesced snapshots of a real Linux guest (tests/integration/guest.py):
the guest's own fsfreeze hook shows what happened inside it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import libvirt
from lxml import etree

from snapshotd.adapters.hypervisor.connection import AGENT_WAIT, THAW_WAIT
from tests.integration.cli import Result, make_settings, settings_args, snapshotd
from tests.integration.guest import DATA_TARGET, Guest
from tests.integration.test_daemon import Daemon, policy, snapshots, status, write_policy


def take_quiesced(guest: Guest, name: str, root: Path, *extra: str) -> Result:
    """`snapshotd take --disk-only --quiesce` of the guest, with ``root``'s settings."""
    return snapshotd(
        "take",
        "--domain",
        guest.name,
        "--disk-only",
        "--quiesce",
        "--name",
        name,
        *extra,
        *settings_args(root),
        timeout=180,
    )


def read_in_image(image: Path, path: str, scratch: Path) -> str:
    """A file of the ext4 filesystem in ``image`` (its backing chain followed), offline."""
    raw = scratch / "fs.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
        check=True,
        capture_output=True,
    )
    try:
        out = subprocess.run(
            ["debugfs", "-R", f"cat {path}", str(raw)], check=True, capture_output=True, text=True
        )
        return out.stdout
    finally:
        raw.unlink()


def test_quiesced_snapshot_freezes_then_thaws_and_holds_the_synced_file(
    guest: Guest, tmp_path: Path
) -> None:
    make_settings(tmp_path)
    code, _, err = guest.exec(["sh", "-c", "echo before > /data/f && sync"], timeout=30)
    assert code == 0, err
    image = guest.directory / "data.qcow2"
    # The log's entries since now (by position: their times are the guest's clock, which
    # may be a second or more off the host's under load).
    seen = len(guest.freeze_log())
    result = take_quiesced(guest, "q1", tmp_path, "--json")
    assert result.code == 0, result
    assert "QUIESCE" in json.loads(result.out)["flags"]
    events = guest.freeze_log()[seen:]
    assert [what for _, what in events] == ["freeze", "thaw"], guest.freeze_log()
    assert not guest.fs_frozen()
    # The snapshot's state is the image the overlay now sits on: the file is in it, and
    # what the guest writes afterwards is not.
    code, _, err = guest.exec(["sh", "-c", "echo after > /data/f && sync"], timeout=30)
    assert code == 0, err
    assert read_in_image(image, "/f", tmp_path) == "before\n"
    live = guest.directory / f"{guest.name}.{DATA_TARGET}.q1.qcow2"
    assert live.exists(), sorted(p.name for p in guest.directory.iterdir())


def test_quiesce_with_a_hung_agent_fails_in_bounded_time_and_leaves_nothing(
    guest: Guest, tmp_path: Path
) -> None:
    make_settings(tmp_path)
    # The agent stops itself (SIGSTOP) right after answering: the channel stays, the agent
    # is there, and it never answers again.  libvirt alone would wait for it forever.
    guest.command("guest-exec", {"path": "/bin/sh", "arg": ["-c", "kill -STOP $(pidof qemu-ga)"]})
    time.sleep(2)
    before = sorted(p.name for p in guest.directory.iterdir())
    started = time.monotonic()
    result = take_quiesced(guest, "q2", tmp_path)
    took = time.monotonic() - started
    assert result.code != 0, result
    assert took < AGENT_WAIT + THAW_WAIT + 20, took
    assert "guest agent" in result.err.lower(), result.err
    assert "domfsthaw" in result.err  # it could not confirm a thaw, and says what to do
    assert guest.dom.snapshotListNames(0) == []
    assert sorted(p.name for p in guest.directory.iterdir()) == before


def test_a_freeze_that_hangs_past_the_bound_fails_and_the_guest_is_thawed(
    guest: Guest, tmp_path: Path
) -> None:
    """The fsfreeze hook sleeps past AGENT_WAIT: libvirt gives up on the freeze, the
    guest freezes later anyway; snapshotd thaws it and the guest is never left frozen."""
    make_settings(tmp_path)
    delay = AGENT_WAIT + 5
    guest.set_freeze_delay(delay)
    before = sorted(p.name for p in guest.directory.iterdir())
    result = take_quiesced(guest, "q3", tmp_path)
    assert result.code != 0, result
    assert "the guest's file systems are thawed" in result.err, result.err
    guest.set_freeze_delay(None)
    assert not guest.fs_frozen()
    events = [what for _, what in guest.freeze_log()]
    assert events[-3:] == [f"freeze-delay {delay}", "freeze", "thaw"], events
    assert guest.dom.snapshotListNames(0) == []
    assert sorted(p.name for p in guest.directory.iterdir()) == before


def dump_from_image(image: Path, path: str, scratch: Path) -> bytes:
    """A file's bytes from the ext4 filesystem in ``image`` (backing chain followed)."""
    raw, out = scratch / "fs.raw", scratch / "dumped"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            ["debugfs", "-R", f"dump {path} {out}", str(raw)], check=True, capture_output=True
        )
        return out.read_bytes()
    finally:
        raw.unlink()
        out.unlink(missing_ok=True)


def write_random(guest: Guest, name: str) -> str:
    """1 MiB of random bytes in /data/<name>, synced; its SHA-256 as the guest saw it."""
    script = f"dd if=/dev/urandom of=/data/{name} bs=64k count=16 2>/dev/null && sync"
    code, out, err = guest.exec(["sh", "-c", f"{script} && sha256sum /data/{name}"], timeout=60)
    assert code == 0, err
    return out.decode().split()[0]


def backing_chain(image: Path) -> list[Path]:
    """``image`` and every image under it, top first (qemu-img info --backing-chain)."""
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [Path(layer["filename"]) for layer in json.loads(info)]


def test_retention_merging_a_live_external_chain_keeps_every_block(
    guest: Guest, tmp_path: Path
) -> None:
    """keep_last 1 over three disk-only external snapshots of the running guest: the two
    older overlays are merged away, and every block the guest wrote before, between and
    after the snapshots is there, read in the guest with its page cache dropped and read
    offline from the image chain once the guest is off."""
    make_settings(tmp_path)
    policy = tmp_path / "policies" / "chain.yaml"
    policy.write_text(
        f"""
domains: {{include: ["{guest.name}"]}}
schedule: {{every: 1h}}
snapshot:
  name: "{{policy}}-{{time:%Y%m%dT%H%M%S%fZ}}"
  disk_only: true
  disks: external
retention: {{keep_last: 1}}
"""
    )
    policy.chmod(0o644)
    base = guest.directory / "data.qcow2"
    sums: dict[str, str] = {}
    taken = []
    for i in range(3):
        sums[f"b{i}"] = write_random(guest, f"b{i}")
        result = snapshotd(
            "take", "--policy", "chain", "--json", *settings_args(tmp_path), timeout=180
        )
        assert result.code == 0, result
        (entry,) = json.loads(result.out)
        taken.append(entry)
        time.sleep(1.1)  # a new name each second; libvirt's creation times are in seconds
    sums["b3"] = write_random(guest, "b3")  # into the active overlay, after the last one
    names = [t["snapshot"]["name"] for t in taken]
    assert [t["pruned"] for t in taken] == [[], [names[0]], [names[1]]], taken
    assert guest.dom.snapshotListNames(0) == [names[2]]
    xml = etree.fromstring(guest.dom.XMLDesc(0).encode())
    (source,) = xml.xpath(f"./devices/disk[target/@dev='{DATA_TARGET}']/source")
    top = Path(source.get("file") or "")
    assert backing_chain(top) == [top, base]  # the older overlays are gone from the chain
    overlays = sorted(p.name for p in guest.directory.glob("*.qcow2") if p != base)
    assert overlays == [top.name], overlays
    listed = " ".join(f"/data/{name}" for name in sorted(sums))
    code, out, err = guest.exec(
        ["sh", "-c", f"sync && echo 3 > /proc/sys/vm/drop_caches && sha256sum {listed}"],
        timeout=60,
    )
    assert code == 0, err
    assert {
        line.split()[1].removeprefix("/data/"): line.split()[0]
        for line in out.decode().splitlines()
    } == sums
    guest.exec(["sync"], timeout=30)
    guest.dom.destroy()
    for name, digest in sums.items():
        data = dump_from_image(top, f"/{name}", tmp_path)
        assert hashlib.sha256(data).hexdigest() == digest, name


def _write_text(guest: Guest, text: str) -> None:
    code, _, err = guest.exec(["sh", "-c", f"echo {text} > /data/f && sync"], timeout=30)
    assert code == 0, err


def _read_from_disk(guest: Guest) -> bytes:
    """/data/f as the guest reads it from its disk, its page cache dropped first."""
    guest.boot(60)  # after a revert the agent may need a moment to answer again
    code, out, err = guest.exec(
        ["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches && cat /data/f"], timeout=30
    )
    assert code == 0, err
    return out


def test_revert_to_a_memory_snapshot_gives_the_guest_back_its_data(
    guest: Guest, tmp_path: Path
) -> None:
    """A full snapshot (memory and disk, internal) of the running guest: what the guest
    wrote before it is what it reads after ``snapshotd revert``, running again."""
    make_settings(tmp_path)
    _write_text(guest, "before")
    taken = snapshotd(
        "take",
        "--domain",
        guest.name,
        "--name",
        "r1",
        "--memory",
        "internal",
        *settings_args(tmp_path),
        timeout=180,
    )
    assert taken.code == 0, taken
    _write_text(guest, "after")
    assert _read_from_disk(guest) == b"after\n"
    result = snapshotd(
        "revert", "--domain", guest.name, "r1", *settings_args(tmp_path), timeout=180
    )
    assert result.code == 0, result
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert _read_from_disk(guest) == b"before\n"


def test_revert_to_a_disk_only_external_snapshot_where_libvirt_can(
    guest: Guest, tmp_path: Path
) -> None:
    """A disk-only external snapshot of the running guest, then the guest stopped.
    Where libvirt reverts to external snapshots (it says so by succeeding; libvirt 9.0
    refuses as unsupported), the guest boots to what it wrote before the snapshot; else
    snapshotd passes libvirt's refusal on and the disk is untouched."""
    make_settings(tmp_path)
    _write_text(guest, "before")
    taken = snapshotd(
        "take",
        "--domain",
        guest.name,
        "--name",
        "r2",
        "--disk-only",
        "--disks",
        "external",
        *settings_args(tmp_path),
        timeout=180,
    )
    assert taken.code == 0, taken
    _write_text(guest, "after")
    guest.dom.destroy()
    disk = guest.dom.XMLDesc(0)
    result = snapshotd(
        "revert", "--domain", guest.name, "r2", *settings_args(tmp_path), timeout=180
    )
    if result.code == 2 and "not supported" in result.err:
        assert guest.dom.connect().getLibVersion() < 9_009_000, result
        assert guest.dom.XMLDesc(0) == disk
        guest.dom.create()
        assert _read_from_disk(guest) == b"after\n"
        return
    assert result.code == 0, result
    if not guest.dom.isActive():
        guest.dom.create()
    assert _read_from_disk(guest) == b"before\n"


def test_the_daemon_records_a_hung_freeze_thaws_the_guest_and_goes_on(
    guest: Guest, daemon: Daemon
) -> None:
    """``quiesce: true`` under the daemon with a freeze that hangs past AGENT_WAIT: the
    run fails in bounded time, the failure is in the journal and the domain's status,
    the guest is thawed, and once the agent answers again the next run is a quiesced
    snapshot, from the same daemon."""
    guest.set_freeze_delay(AGENT_WAIT + 5)
    extra = "  disk_only: true\n  disks: external\n  quiesce: true"
    text = policy(guest, every="3s", keep=3, extra=extra, states="  states: [running]")  # type: ignore[arg-type]
    write_policy(daemon, "q", text)
    daemon.start()
    daemon.wait_ready()
    daemon.wait_for(
        lambda: "snapshot failed" in daemon.log.read_text(),
        AGENT_WAIT + THAW_WAIT + 30,
        "the hung freeze's failure",
    )
    line = next(s for s in daemon.log.read_text().splitlines() if "snapshot failed" in s)
    assert "guest agent" in line.lower(), line
    assert "thawed" in line, line
    code, data = status(daemon)
    assert code == 0
    (row,) = [d for d in data["domains"] if d["domain"] == guest.name]
    assert row["last_error"] is not None, row
    assert "guest agent" in row["last_error"]["message"].lower(), row
    assert guest.dom.snapshotListNames(0) == []  # no run got past a hung freeze
    # The daemon goes on trying every 3 s; once the hook stops hanging (a freeze already
    # inside it may still hang and fail once more) a run takes the quiesced snapshot.
    guest.set_freeze_delay(None)
    started = time.time()
    daemon.wait_for(
        lambda: bool(snapshots(guest)),  # type: ignore[arg-type]
        AGENT_WAIT + THAW_WAIT + 60,
        "a quiesced snapshot once the agent answered again",
    )
    assert daemon.proc is not None
    assert daemon.proc.poll() is None  # the same daemon
    assert daemon.stop() == 0
    # Never left frozen: every freeze the guest saw was followed by a thaw, and the
    # snapshot's freeze came after the hook stopped hanging.
    assert not guest.fs_frozen()
    events = [what for _, what in guest.freeze_log() if what in {"freeze", "thaw"}]
    assert events, guest.freeze_log()
    assert events == ["freeze", "thaw"] * (len(events) // 2), events
    (made, _, _), *_ = snapshots(guest)  # type: ignore[arg-type]
    assert any(what == "freeze" and at >= started - 1 for at, what in guest.freeze_log())
    assert made >= int(started) - 1
