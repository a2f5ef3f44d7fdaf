"""snapshotd's quiesced snapshots of a real Linux guest (tests/integration/guest.py):
the guest's own fsfreeze hook shows what happened inside it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from snapshotd.adapters.hypervisor.connection import AGENT_WAIT, THAW_WAIT
from tests.integration.cli import Result, make_settings, settings_args, snapshotd
from tests.integration.guest import DATA_TARGET, Guest


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
    started = time.time()
    result = take_quiesced(guest, "q1", tmp_path, "--json")
    ended = time.time()
    assert result.code == 0, result
    assert "QUIESCE" in json.loads(result.out)["flags"]
    events = [(at, what) for at, what in guest.freeze_log() if started - 1 <= at <= ended + 1]
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
