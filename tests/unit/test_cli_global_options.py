"""The connection and settings options before the verb, as virsh's -c: parsed as the
verb's own, the one after the verb winning, refused for a verb that does not take it."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest

from snapshotd import cli
from snapshotd.cli.parser import build_parser

# Each option given before the verb, its value, and the verb's dest.
OPTIONS = [
    (["-c", "qemu+ssh://host/system"], "connect", "qemu+ssh://host/system"),
    (["--connect", "qemu:///session"], "connect", "qemu:///session"),
    (["--config", "/tmp/x.yaml"], "config", "/tmp/x.yaml"),
    (["--policy-dir", "/tmp/policies"], "policy_dir", "/tmp/policies"),
    (["--state-dir", "/tmp/state"], "state_dir", "/tmp/state"),
]
# Each verb, the arguments it needs, and which of the four options it takes.
VERBS = {
    "check": ([], {"connect", "config", "policy_dir", "state_dir"}),
    "plan": ([], {"connect", "config", "policy_dir", "state_dir"}),
    "take": (["--domain", "web"], {"connect", "config", "policy_dir", "state_dir"}),
    "prune": ([], {"connect", "config", "policy_dir", "state_dir"}),
    "list": (["--domain", "web"], {"connect", "config", "policy_dir", "state_dir"}),
    "import": (["--dry-run", "x.xml"], {"connect", "config", "policy_dir", "state_dir"}),
    "revert": (["--domain", "web", "snap"], {"connect", "config", "policy_dir", "state_dir"}),
    "status": ([], {"config", "policy_dir", "state_dir"}),
    # export and replicate read the catalog (consistency groups) from the state directory.
    "export": (["--domain", "web"], {"connect", "config", "policy_dir", "state_dir"}),
    "replicate": (
        ["--domain", "web", "--to", "qemu+ssh://b/system"],
        {"connect", "config", "policy_dir", "state_dir"},
    ),
}
PAIRS = [(verb, option) for verb in VERBS for option in OPTIONS]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize(("verb", "option"), PAIRS, ids=[f"{v} {o[0][0]}" for v, o in PAIRS])
def test_before_the_verb_parses_as_after_it_or_is_refused(
    verb: str,
    option: tuple[list[str], str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags, dest, value = option
    rest, takes = VERBS[verb]
    if dest in takes:
        before = parse([*flags, verb, *rest])
        assert vars(before) == vars(parse([verb, *flags, *rest]))
        assert getattr(before, dest) == value
        return
    with pytest.raises(SystemExit) as stopped:
        parse([*flags, verb, *rest])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    spelled = "-c/--connect" if dest == "connect" else flags[0]
    assert f"usage: snapshotd {verb} " in err
    assert (
        f"snapshotd {verb}: error: {spelled} was given before the verb, but "
        f"`snapshotd {verb}` has no {spelled} option"
    ) in err


def test_the_issue_s_examples() -> None:
    listed = parse(["-c", "qemu+ssh://host/system", "list", "--domain", "web"])
    assert (listed.verb, listed.connect, listed.domain) == ("list", "qemu+ssh://host/system", "web")
    checked = parse(["--config", "F", "check"])
    assert (checked.verb, checked.config, checked.connect) == ("check", "F", None)


def test_the_namespace_is_the_verb_s_alone() -> None:
    """No trace of where the options were given: the same attributes as without them."""
    plain = parse(["plan"])
    given = parse(["-c", "U", "--config", "C", "--policy-dir", "P", "--state-dir", "S", "plan"])
    assert set(vars(given)) == set(vars(plain))
    assert (given.connect, given.config, given.policy_dir, given.state_dir) == ("U", "C", "P", "S")


@pytest.mark.parametrize(
    ("argv", "dest", "expected"),
    [
        (["-c", "A", "list", "-d", "web", "-c", "B"], "connect", "B"),
        (["--config", "A", "check", "--config", "B"], "config", "B"),
        (["--policy-dir", "A", "prune", "--policy-dir", "B"], "policy_dir", "B"),
        (["--state-dir", "A", "status", "--state-dir", "B"], "state_dir", "B"),
        (["-c", "A", "-c", "B", "list", "-d", "web"], "connect", "B"),  # as after the verb
    ],
)
def test_after_the_verb_wins(argv: list[str], dest: str, expected: str) -> None:
    assert getattr(parse(argv), dest) == expected


def test_one_before_and_another_after_both_apply() -> None:
    args = parse(["--config", "C", "check", "--state-dir", "S"])
    assert (args.config, args.state_dir, args.policy_dir) == ("C", "S", None)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run"], []),
        (["-c", "A", "run"], ["A"]),
        (["-c", "A", "-c", "B", "run"], ["A", "B"]),
        (["--connect", "A", "-c", "B", "run", "--workers", "2"], ["A", "B"]),
        (["run", "-c", "A", "-c", "B"], ["A", "B"]),
        (["-c", "A", "run", "-c", "B"], ["B"]),  # after the verb wins, as for every verb
    ],
)
def test_run_collects_every_connect_before_the_verb(argv: list[str], expected: list[str]) -> None:
    assert parse(argv).connect == expected


def test_the_top_level_help_shows_the_options_and_a_verb_s_help_is_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse(["--help"])
    top = capsys.readouterr().out
    assert top.startswith(
        "usage: snapshotd [-h] [--version] [-c URI] [--config FILE] [--policy-dir DIR]"
    )
    assert "connection and settings:" in top
    assert "accepted before the verb as well as after it" in top
    for option in ("-c URI, --connect URI", "--config FILE", "--policy-dir DIR", "--state-dir DIR"):
        assert option in top
    with pytest.raises(SystemExit):
        parse(["status", "--help"])
    verb = capsys.readouterr().out
    assert verb.startswith("usage: snapshotd status [-h] [--config FILE]")
    assert "connection and settings" not in verb
    assert "--connect" not in verb


# --- in process: check, with its files in tmp_path ---------------------------------------

POLICY = "name: hourly\nschedule:\n  every: 1h\n"


def settings_files(root: Path, policy: str = POLICY) -> tuple[Path, Path, Path]:
    """A config, a policy directory holding one policy, and an empty one; made as
    snapshotd trusts them (the tests run as root: owned by root, writable by it alone)."""
    config = root / "snapshotd.yaml"
    config.write_text(f"connect: [qemu:///system]\nstate_dir: {root / 'state'}\n")
    config.chmod(0o644)
    policies = root / "policies"
    policies.mkdir(mode=0o755)
    path = policies / "hourly.yaml"
    path.write_text(policy)
    path.chmod(0o644)
    empty = root / "empty"
    empty.mkdir(mode=0o755)
    return config, policies, empty


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv, out=out)
    return code, out.getvalue(), err.getvalue()


def test_check_offline_with_the_settings_before_the_verb(tmp_path: Path) -> None:
    config, policies, _empty = settings_files(tmp_path)
    before = ["--config", str(config), "--policy-dir", str(policies), "check", "--offline"]
    code, out, err = run_main(before)
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == [
        f"config: {config}",
        f"policy directory: {policies} (1 policies)",
    ]
    assert "  hourly (" in out
    after = ["check", "--offline", "--config", str(config), "--policy-dir", str(policies)]
    assert run_main(after) == (code, out, err)


def test_check_uses_the_policy_dir_given_after_the_verb(tmp_path: Path) -> None:
    config, policies, empty = settings_files(tmp_path)
    argv = ["--policy-dir", str(empty), "--config", str(config), "check", "--offline"]
    code, out, _err = run_main([*argv, "--policy-dir", str(policies)])
    assert code == 0
    assert f"policy directory: {policies} (1 policies)" in out
    code, out, _err = run_main(argv)
    assert code == 0
    assert f"policy directory: {empty} (0 policies)" in out


def test_check_freshness_reads_the_settings_given_before_the_verb(tmp_path: Path) -> None:
    """No policy has monitor:, so the verdict comes before libvirt is asked."""
    config, policies, _empty = settings_files(tmp_path)
    argv = ["--config", str(config), "--policy-dir", str(policies), "check", "--freshness"]
    code, out, _err = run_main(argv)
    assert (code, out) == (3, "SNAPSHOTD UNKNOWN - no policy has monitor: (warn/crit)\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("workers: many\n")
    broken.chmod(0o644)
    code, out, _err = run_main(["--config", str(broken), "check", "--freshness"])
    assert code == 3
    assert out.startswith("SNAPSHOTD UNKNOWN - configuration not valid: ")


def test_a_refused_option_before_the_verb_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["-c", "qemu:///system", "status", "--state-dir", str(tmp_path / "s")])
    assert stopped.value.code == 2
    assert "`snapshotd status` has no -c/--connect option" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
