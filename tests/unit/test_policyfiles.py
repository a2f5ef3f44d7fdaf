"""Reading the policy directory and snapshotd.yaml: which files, and whether to trust them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapshotd.adapters.configfiles import (
    LoadResult,
    load_config,
    load_policy_dir,
    load_settings,
    read_trusted,
)
from snapshotd.config.settings import Overrides, Settings
from snapshotd.config.yamlreader import MAX_BYTES
from snapshotd.core.policy import Policy

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
VALID = "schedule:\n  every: 1h\n"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies.d"
    directory.mkdir()
    directory.chmod(0o755)
    return directory


def write(path: Path, text: str = VALID, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def messages(result: LoadResult) -> list[str]:
    return [str(e) for e in result.errors]


def names(result: LoadResult) -> list[str]:
    return [p.name for p in result.policies]


def test_the_example_directory_loads() -> None:
    result = load_policy_dir(str(REPO / "config" / "policies.d"))
    assert result.ok, messages(result)
    assert names(result) == [
        "catalog-backups",
        "hourly-internal",
        "nightly-external",
        "shop",
        "shutoff-only",
    ]


def test_files_are_read_in_sorted_order_and_others_are_skipped(policies: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.yaml"):
        write(policies / name)
    for name in (".b.yaml.swp", ".#a.yaml", "a.yaml~", "#a.yaml#", "notes.txt", "c.yaml.disabled"):
        write(policies / name, "not: [valid")
    (policies / "sub").mkdir()
    result = load_policy_dir(str(policies))
    assert result.ok, messages(result)
    assert names(result) == ["a", "b", "c"]
    assert [p.source for p in result.policies] == [
        str(policies / "a.yml"),
        str(policies / "b.yaml"),
        str(policies / "c.yaml"),
    ]
    assert sorted(result.ignored) == sorted(
        ["#a.yaml#", ".#a.yaml", ".b.yaml.swp", "a.yaml~", "c.yaml.disabled", "notes.txt", "sub"]
    )


def test_one_bad_file_does_not_stop_the_others(policies: Path) -> None:
    write(policies / "good.yaml")
    write(policies / "bad.yaml", "schedule:\n  evry: 1h\n")
    result = load_policy_dir(str(policies))
    assert names(result) == ["good"]
    assert messages(result)[0].startswith(f"{policies / 'bad.yaml'}:2:3: schedule.evry: ")


@pytest.mark.parametrize(
    ("mode", "who"), [(0o664, "group"), (0o646, "others"), (0o666, "group and others")]
)
def test_a_file_others_can_write_is_refused(policies: Path, mode: int, who: str) -> None:
    path = write(policies / "web.yaml", mode=mode)
    result = load_policy_dir(str(policies))
    assert result.policies == ()
    (message,) = messages(result)
    assert message.startswith(f"{path}: the file is writable by its {who} (mode 0{mode:o})")
    assert message.endswith(f"fix: chmod go-w {path}")


@as_root
def test_a_file_not_owned_by_root_is_refused(policies: Path) -> None:
    path = write(policies / "web.yaml")
    os.chown(path, NOBODY, NOBODY)
    (message,) = messages(load_policy_dir(str(policies)))
    assert message == (
        f"{path}: the file is owned by uid {NOBODY}, not root, so that user could change what "
        f"snapshotd does; fix: chown root:root {path}"
    )


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_directory_others_can_write_is_refused(policies: Path, mode: int) -> None:
    write(policies / "web.yaml")
    policies.chmod(mode)
    result = load_policy_dir(str(policies))
    assert result.policies == ()
    (message,) = messages(result)
    assert message.startswith(f"{policies}: the directory is writable by its ")
    assert message.endswith(f"fix: chmod go-w {policies}")


@as_root
def test_a_directory_not_owned_by_root_is_refused(policies: Path) -> None:
    write(policies / "web.yaml")
    os.chown(policies, NOBODY, NOBODY)
    (message,) = messages(load_policy_dir(str(policies)))
    assert message.startswith(f"{policies}: the directory is owned by uid {NOBODY}, not root")
    assert message.endswith(f"fix: chown root:root {policies}")


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    (message,) = messages(load_policy_dir(str(missing)))
    assert message.startswith(f"{missing}: the policy directory does not exist; create it")


def test_a_file_in_place_of_the_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "policies.d")
    assert messages(load_policy_dir(str(path))) == [
        f"{path}: the policy directory is not a directory"
    ]


def test_a_symlink_to_a_trusted_file_is_followed(policies: Path, tmp_path: Path) -> None:
    available = tmp_path / "available"
    available.mkdir()
    available.chmod(0o755)
    target = write(available / "shared.yaml")
    (policies / "web.yaml").symlink_to(target)
    result = load_policy_dir(str(policies))
    assert result.ok, messages(result)
    assert names(result) == ["web"]  # named after the link, which is what the admin sees


def test_a_symlink_into_a_writable_directory_is_refused(policies: Path, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    target = write(drop / "x.yaml")
    link = policies / "web.yaml"
    link.symlink_to(target)
    (message,) = messages(load_policy_dir(str(policies)))
    assert message.startswith(f"{link}: is a symlink to {target}, and the directory is writable")
    assert message.endswith(f"fix: chmod go-w {drop}")


def test_a_symlink_to_a_writable_file_is_refused(policies: Path, tmp_path: Path) -> None:
    target = write(tmp_path / "x.yaml", mode=0o666)
    link = policies / "web.yaml"
    link.symlink_to(target)
    (message,) = messages(load_policy_dir(str(policies)))
    assert message.startswith(f"{link}: is a symlink to {target}, and the file is writable")


@as_root
def test_a_symlink_to_a_file_owned_by_someone_else_is_refused(
    policies: Path, tmp_path: Path
) -> None:
    target = write(tmp_path / "x.yaml")
    os.chown(target, NOBODY, NOBODY)
    (policies / "web.yaml").symlink_to(target)
    (message,) = messages(load_policy_dir(str(policies)))
    assert f"the file is owned by uid {NOBODY}" in message


def test_a_dangling_symlink_is_an_error(policies: Path, tmp_path: Path) -> None:
    link = policies / "web.yaml"
    link.symlink_to(tmp_path / "gone.yaml")
    (message,) = messages(load_policy_dir(str(policies)))
    assert (
        message == f"{link}: is a symlink to {tmp_path / 'gone.yaml'}, and that file does not exist"
    )


def test_special_files_are_refused_without_blocking(policies: Path) -> None:
    os.mkfifo(policies / "fifo.yaml", 0o644)
    (policies / "dir.yaml").mkdir()
    assert messages(load_policy_dir(str(policies))) == [
        f"{policies / 'dir.yaml'}: is not a regular file",
        f"{policies / 'fifo.yaml'}: is not a regular file",
    ]


def test_a_large_file_is_not_read(policies: Path) -> None:
    path = write(policies / "big.yaml", VALID + "#" * MAX_BYTES)
    (message,) = messages(load_policy_dir(str(policies)))
    assert message == f"{path}: is larger than 256 KiB; not read"


def test_a_file_that_is_not_utf8_is_located(policies: Path) -> None:
    path = policies / "latin.yaml"
    path.write_bytes(b"schedule:\n  every: 1h\nname: caf\xe9\n")
    path.chmod(0o644)
    (message,) = messages(load_policy_dir(str(policies)))
    assert message == f"{path}:3:10: the file is not UTF-8 text"


def test_duplicate_names_refuse_both_files(policies: Path) -> None:
    write(policies / "a.yaml", "name: web\n" + VALID)
    write(policies / "web.yaml")
    write(policies / "z.yaml")
    result = load_policy_dir(str(policies))
    assert names(result) == ["z"]
    assert messages(result) == [
        f"{policies / 'a.yaml'}:1:1: name: policy name 'web' is also used by "
        f"{policies / 'web.yaml'}; policy names must be unique (set a different name: or "
        "rename the file)",
        f"{policies / 'web.yaml'}:1:1: name: policy name 'web' is also used by "
        f"{policies / 'a.yaml'}; policy names must be unique (set a different name: or "
        "rename the file)",
    ]


def test_read_trusted_returns_the_text(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "é\n")
    assert read_trusted(str(path)) == "é\n"
    assert str(read_trusted(str(tmp_path / "missing.yaml"))).endswith(": no such file")


# --- snapshotd.yaml ---------------------------------------------------------------------


def test_a_missing_config_means_the_defaults(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "snapshotd.yaml")) == Settings(
        config=str(tmp_path / "snapshotd.yaml")
    )


def test_a_missing_config_that_was_asked_for_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "snapshotd.yaml"
    result = load_config(str(path), required=True)
    assert isinstance(result, list)
    assert [str(e) for e in result] == [f"{path}: no such file"]


def test_the_example_config_loads() -> None:
    path = REPO / "config" / "snapshotd.yaml"
    assert load_config(str(path), required=True) == Settings(config=str(path), config_found=True)


def test_a_config_others_can_write_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "snapshotd.yaml", "state_dir: /tmp/x\n", mode=0o646)
    result = load_config(str(path))
    assert isinstance(result, list)
    assert "chmod go-w" in str(result[0])


def test_a_config_in_a_writable_directory_is_refused(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    etc.chmod(0o777)
    path = write(etc / "snapshotd.yaml", "{}\n")
    result = load_config(str(path))
    assert isinstance(result, list)
    assert str(result[0]).startswith(f"{path}: is in {etc}, and the directory is writable")


def test_settings_apply_overrides_and_collect_errors(tmp_path: Path, policies: Path) -> None:
    config = write(tmp_path / "snapshotd.yaml", f"policy_dir: {policies}\nstate_dir: /srv/s\n")
    write(policies / "web.yaml")
    settings = load_settings(Overrides(config=str(config)))
    assert settings.errors == ()
    assert (settings.policy_dir, settings.state_dir) == (str(policies), "/srv/s")
    assert settings.connect == ("qemu:///system",)
    assert [p.name for p in settings.policies] == ["web"]
    assert isinstance(settings.policies[0], Policy)
    assert settings.config_source == str(config)

    other = load_settings(
        Overrides(config=str(config), policy_dir=str(tmp_path / "none"), state_dir="/x"),
        load_policies=True,
    )
    assert other.state_dir == "/x"
    assert "does not exist" in str(other.errors[0])

    absent = load_settings(default_config=str(tmp_path / "absent.yaml"), load_policies=False)
    assert absent.errors == ()
    assert absent.config_source.endswith("(absent: built-in defaults)")


def test_a_broken_config_does_not_send_settings_to_a_guessed_directory(tmp_path: Path) -> None:
    config = write(tmp_path / "snapshotd.yaml", "policy_dri: /srv/p\n")
    settings = load_settings(Overrides(config=str(config)))
    assert [str(e) for e in settings.errors] == [
        f"{config}:1:1: policy_dri: unknown option 'policy_dri'; did you mean 'policy_dir'?"
    ]
    assert settings.policies == ()


def test_a_reload_parses_only_changed_files_and_sees_every_change(
    policies: Path, tmp_path: Path
) -> None:
    """Parse results are reused by path and content, never across either."""
    write(policies / "a.yaml")
    write(policies / "b.yaml", "schedule:\n  every: 2h\n")
    first = load_policy_dir(str(policies))
    assert first.ok, messages(first)
    again = load_policy_dir(str(policies))
    assert [p is q for p, q in zip(first.policies, again.policies, strict=True)] == [True, True]
    # The same text under another name is that name's policy, not a's.
    twin = tmp_path / "twin.d"
    twin.mkdir(mode=0o755)
    twin.chmod(0o755)
    write(twin / "c.yaml")
    assert names(load_policy_dir(str(twin))) == ["c"]
    # An edit is parsed anew.
    write(policies / "a.yaml", "schedule:\n  every: 3h\n")
    edited = load_policy_dir(str(policies))
    assert edited.policies[0] is not first.policies[0]
    assert edited.policies[0].schedule != first.policies[0].schedule
    # An error is reported every time, not only on the load that first met it.
    write(policies / "b.yaml", "schedule: [not, a, mapping]\n")
    for _ in range(2):
        broken = load_policy_dir(str(policies))
        assert names(broken) == ["a"]
        assert len(broken.errors) == 1
        assert "b.yaml" in messages(broken)[0]
