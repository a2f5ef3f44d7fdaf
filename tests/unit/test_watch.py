"""snapshotd.adapters.watch with real inotify on tmp_path."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapshotd.adapters.inotify import INotify
from snapshotd.adapters.watch import IN_CREATE, PolicyWatcher

DEBOUNCE = 0.2
MARGIN = 0.5  # scheduling slack on a busy test machine

POLICY = "name: web\nschedule: {every: 1h}\n"


class Calls:
    """Counts on_change calls and checks that they never overlap."""

    def __init__(self, hold: float = 0.0) -> None:
        self.times: list[float] = []
        self.hold = hold
        self.active = 0
        self.overlapped = False
        self.lock = threading.Lock()
        self.event = threading.Event()

    def __call__(self) -> None:
        with self.lock:
            self.active += 1
            self.overlapped |= self.active > 1
        time.sleep(self.hold)
        with self.lock:
            self.active -= 1
            self.times.append(time.monotonic())
        self.event.set()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.times)

    def wait(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count >= count:
                return True
            time.sleep(0.01)
        return self.count >= count

    def settle(self, quiet: float = DEBOUNCE + 0.25) -> int:
        """The count once no call has come for ``quiet`` seconds."""
        seen = -1
        while seen != self.count:
            seen = self.count
            time.sleep(quiet)
        return seen


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies.d"
    directory.mkdir()
    return directory


@pytest.fixture
def watch(policies: Path) -> Iterator[Callable[..., tuple[PolicyWatcher, Calls]]]:
    started: list[PolicyWatcher] = []

    def make(
        directory: Path = policies, *, retry: float = 1.0, max_wait: float = 1.0
    ) -> tuple[PolicyWatcher, Calls]:
        calls = Calls()
        watcher = PolicyWatcher(str(directory), calls, retry=retry, max_wait=max_wait)
        watcher.start()
        started.append(watcher)
        time.sleep(0.05)  # let the thread add its watch
        return watcher, calls

    yield make
    for watcher in started:
        watcher.stop()


def test_single_write_is_reported_once_and_promptly(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    _, calls = watch()
    written = time.monotonic()
    (policies / "web.yaml").write_text(POLICY)
    assert calls.wait(1, DEBOUNCE + MARGIN)
    # "A change is in force within one second of the write."
    assert calls.times[0] - written < 1.0
    assert calls.times[0] - written >= DEBOUNCE * 0.9
    assert calls.settle() == 1


def test_write_temp_then_rename_is_one_change(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    (policies / "web.yaml").write_text(POLICY)
    _, calls = watch()
    (policies / ".web.yaml.swp").write_text("swap")
    (policies / "web.yaml.tmp").write_text(POLICY + "# edited\n")
    (policies / "web.yaml").rename(policies / "web.yaml~")
    (policies / "web.yaml.tmp").replace(policies / "web.yaml")  # os.replace
    (policies / "web.yaml~").unlink()
    (policies / ".web.yaml.swp").unlink()
    assert calls.wait(1, DEBOUNCE + MARGIN)
    assert calls.settle() == 1


def test_irrelevant_names_wake_nobody(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    _, calls = watch()
    (policies / ".web.yaml.swp").write_text("swap")
    (policies / "web.yaml~").write_text("backup")
    (policies / "notes.txt").write_text("x")
    (policies / "web.yaml.tmp").write_text("x")
    assert calls.settle() == 0


def test_rapid_writes_coalesce(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    _, calls = watch()
    for i in range(20):
        (policies / f"p{i % 3}.yaml").write_text(POLICY + f"# {i}\n")
    assert calls.wait(1, DEBOUNCE + MARGIN)
    assert calls.settle() <= 2


def test_delete_and_recreate(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    path = policies / "web.yaml"
    path.write_text(POLICY)
    _, calls = watch()
    path.unlink()
    assert calls.wait(1, DEBOUNCE + MARGIN)
    calls.settle()
    before = calls.count
    path.write_text(POLICY)
    assert calls.wait(before + 1, DEBOUNCE + MARGIN)
    path.chmod(0o600)
    assert calls.wait(before + 2, DEBOUNCE + MARGIN)


def test_rename_out_and_in(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    path = policies / "web.yaml"
    path.write_text(POLICY)
    _, calls = watch()
    path.rename(policies / "web.yaml.disabled")
    assert calls.wait(1, DEBOUNCE + MARGIN)
    assert calls.settle() == 1
    (policies / "web.yaml.disabled").rename(path)
    assert calls.wait(2, DEBOUNCE + MARGIN)


def test_directory_removed_and_recreated(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    (policies / "web.yaml").write_text(POLICY)
    watcher, calls = watch(retry=0.2)
    shutil.rmtree(policies)
    assert calls.wait(1, DEBOUNCE + MARGIN)  # the policies are gone: a change
    calls.settle()
    before = calls.count
    time.sleep(0.5)  # a few retries while the directory is missing
    assert calls.count == before
    policies.mkdir()
    assert calls.wait(before + 1, 0.2 + DEBOUNCE + MARGIN)  # it is back
    calls.settle()
    before = calls.count
    (policies / "db.yaml").write_text(POLICY)  # and watched again
    assert calls.wait(before + 1, DEBOUNCE + MARGIN)
    assert watcher.running


def test_directory_replaced_by_rename(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path, tmp_path: Path
) -> None:
    _, calls = watch()
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "web.yaml").write_text(POLICY)
    policies.rename(tmp_path / "old")
    staged.rename(policies)  # replaced before the watcher looks: no retry wait
    assert calls.wait(1, DEBOUNCE + MARGIN)
    calls.settle()
    before = calls.count
    (tmp_path / "old" / "x.yaml").write_text(POLICY)  # the old one is no longer watched
    (policies / "db.yaml").write_text(POLICY)
    assert calls.wait(before + 1, DEBOUNCE + MARGIN)
    assert calls.settle() == before + 1


def test_directory_missing_at_start(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], tmp_path: Path
) -> None:
    directory = tmp_path / "later"
    _, calls = watch(directory, retry=0.1)
    time.sleep(0.3)
    assert calls.count == 0
    directory.mkdir()
    assert calls.wait(1, 0.1 + DEBOUNCE + MARGIN)
    (directory / "web.yaml").write_text(POLICY)
    assert calls.wait(2, DEBOUNCE + MARGIN)


def test_activity_that_never_pauses_is_still_reported(
    watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path
) -> None:
    _, calls = watch(max_wait=0.5)
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        (policies / "web.yaml").write_text(POLICY)
        time.sleep(0.05)
    assert calls.count >= 1


def test_calls_never_overlap(policies: Path) -> None:
    calls = Calls(hold=0.4)
    watcher = PolicyWatcher(str(policies), calls, debounce=0.05)
    watcher.start()
    try:
        time.sleep(0.05)
        for _ in range(8):
            (policies / "web.yaml").write_text(POLICY)
            time.sleep(0.1)
        assert calls.wait(2, 3)
    finally:
        watcher.stop()
    assert not calls.overlapped


def test_handler_exception_does_not_stop_watching(policies: Path) -> None:
    seen: list[int] = []

    def flaky() -> None:
        seen.append(1)
        if len(seen) == 1:
            raise RuntimeError("first call fails")

    watcher = PolicyWatcher(str(policies), flaky)
    watcher.start()
    try:
        time.sleep(0.05)
        (policies / "a.yaml").write_text(POLICY)
        time.sleep(DEBOUNCE + MARGIN)
        (policies / "b.yaml").write_text(POLICY)
        time.sleep(DEBOUNCE + MARGIN)
        assert len(seen) == 2
        assert watcher.running
    finally:
        watcher.stop()


def test_stop_is_prompt(watch: Callable[..., tuple[PolicyWatcher, Calls]], policies: Path) -> None:
    watcher, calls = watch()
    (policies / "web.yaml").write_text(POLICY)  # a call pending: stop must not wait for it
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 0.2
    assert not watcher.running
    watcher.stop()  # twice is fine
    time.sleep(DEBOUNCE + 0.1)
    assert calls.count == 0


def test_stop_while_directory_missing_is_prompt(tmp_path: Path) -> None:
    watcher = PolicyWatcher(str(tmp_path / "absent"), lambda: None)
    watcher.start()
    time.sleep(0.05)
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 0.2
    assert not watcher.running


def test_stop_before_start_and_from_the_handler(policies: Path) -> None:
    PolicyWatcher(str(policies), lambda: None).stop()
    holder: list[PolicyWatcher] = []
    stopped = threading.Event()

    def stop_self() -> None:
        holder[0].stop()
        stopped.set()

    watcher = PolicyWatcher(str(policies), stop_self)
    holder.append(watcher)
    watcher.start()
    time.sleep(0.05)
    (policies / "web.yaml").write_text(POLICY)
    assert stopped.wait(DEBOUNCE + MARGIN)
    deadline = time.monotonic() + 1
    while watcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watcher.running
    watcher.stop()


def test_no_descriptors_leak(policies: Path) -> None:
    fds = set(Path("/proc/self/fd").iterdir())
    for _ in range(5):
        watcher = PolicyWatcher(str(policies), lambda: None)
        watcher.start()
        watcher.stop()
    assert set(Path("/proc/self/fd").iterdir()) == fds


def test_inotify_reports_each_event_with_its_name_and_never_blocks(tmp_path: Path) -> None:
    """adapters/inotify.py alone: a watch, two files made, their names read back in one
    read; nothing queued reads as nothing; a missing path is refused with its errno."""
    notify = INotify()
    try:
        assert notify.read() == []
        wd = notify.add_watch(str(tmp_path), IN_CREATE)
        (tmp_path / "a.yaml").touch()
        (tmp_path / "b\udcff.yaml").touch()  # a name that is not UTF-8: byte 0xff
        events = notify.read()
        assert [(e.wd, e.name) for e in events] == [(wd, "a.yaml"), (wd, "b\udcff.yaml")]
        assert all(e.mask & IN_CREATE for e in events)
        with pytest.raises(FileNotFoundError):
            notify.add_watch(str(tmp_path / "missing"), IN_CREATE)
        notify.rm_watch(wd)
    finally:
        notify.close()
