"""Policies end to end against real libvirt: check, plan, take --policy, prune."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.cli import REPO, make_settings, settings_args, snapshotd
from tests.integration.domains import DomainFactory, ScratchDomain
from tests.integration.target import virsh

CONFIG = REPO / "config"
INVALID = REPO / "tests" / "policies" / "invalid"
# Names with microseconds: several takes within one test never collide.
NAME = "{policy}-{time:%Y%m%dT%H%M%S%fZ}"


def write_policy(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(body)
    path.chmod(0o644)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    make_settings(tmp_path)
    return tmp_path


def snapshot_names(dom: ScratchDomain) -> list[str]:
    return sorted(s.getName() for s in dom.dom.listAllSnapshots(0))


def test_keep_last_two_after_four_takes_and_a_hand_made_lookalike_survives(
    domain_factory: DomainFactory, settings: Path
) -> None:
    dom = domain_factory(state="running")
    write_policy(
        settings / "policies",
        "keep2",
        f"""
name: keep2
domains:
  include: ["{dom.name}"]
schedule:
  cron: "0 * * * *"
snapshot:
  name: "{NAME}"
retention:
  keep_last: 2
""",
    )
    # A snapshot made by hand, named like the policy's own.
    lookalike = "keep2-20200101T000000000000Z"
    subprocess.run(
        virsh("snapshot-create-as", dom.name, lookalike),
        check=True,
        capture_output=True,
    )
    time.sleep(1.1)
    taken, pruned = [], []
    for _ in range(4):
        result = snapshotd("take", "--policy", "keep2", "--json", *settings_args(settings))
        assert result.code == 0, result.err
        (entry,) = json.loads(result.out)
        assert entry["outcome"] == "created"
        taken.append(entry["snapshot"]["name"])
        pruned.append(entry["pruned"])
        time.sleep(1.1)  # libvirt's creation times have one-second resolution
    assert snapshot_names(dom) == sorted([lookalike, *taken[-2:]])
    # Each take prunes right after its own snapshot, which counts as the newest.
    assert pruned == [[], [], [taken[0]], [taken[1]]]


def test_external_disk_only_retention_keeps_a_consistent_chain(
    domain_factory: DomainFactory, settings: Path
) -> None:
    dom = domain_factory(state="running")
    write_policy(
        settings / "policies",
        "ext",
        f"""
domains:
  include: ["{dom.name}"]
schedule:
  every: 1h
snapshot:
  disk_only: true
  name: "{NAME}"
retention:
  keep_last: 1
""",
    )
    names = []
    for _ in range(3):
        result = snapshotd("take", "--policy", "ext", "--json", *settings_args(settings))
        assert result.code == 0, result.err
        names.append(json.loads(result.out)[0]["snapshot"]["name"])
        time.sleep(1.1)
    assert snapshot_names(dom) == [names[-1]]
    newest = dom.directory / f"{dom.name}.vda.{names[-1]}.qcow2"
    blk = subprocess.run(
        virsh("domblklist", dom.name),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert blk == ["vda", str(newest)]
    chain = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(newest)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert [c["filename"] for c in chain] == [str(newest), str(dom.disks["vda"])]
    # No orphaned overlay: the pruned snapshots' files are gone.
    overlays = sorted(p.name for p in dom.directory.glob(f"{dom.name}.vda.*.qcow2"))
    assert overlays == [newest.name]
    assert dom.state() == 1


def test_plan_shows_different_xml_for_running_and_shut_off_domains(
    domain_factory: DomainFactory, settings: Path
) -> None:
    running = domain_factory(state="running")
    shutoff = domain_factory(state="shutoff")
    write_policy(
        settings / "policies",
        "both",
        f"""
domains:
  include: ["{running.name}", "{shutoff.name}"]
schedule:
  cron: "30 2 * * *"
  timezone: Europe/Berlin
snapshot:
  memory: auto
retention:
  daily: 7
""",
    )
    result = snapshotd(
        "plan", "--json", "--at", "2026-11-25T12:00:00+00:00", *settings_args(settings)
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    plans = {p["domain"]: p for p in data["plans"]}
    assert set(plans) == {running.name, shutoff.name}
    hosts = {d["name"]: d for d in data["domains"]}
    assert hosts[running.name] == {"name": running.name, "state": "running", "policies": ["both"]}
    assert hosts[shutoff.name] == {"name": shutoff.name, "state": "shutoff", "policies": ["both"]}
    run, off = plans[running.name]["snapshot"], plans[shutoff.name]["snapshot"]
    assert run["memory"]["snapshot"] == "internal"
    assert run["row"]["number"] == 7
    assert "<memory snapshot='internal'/>" in run["xml"]
    assert off["memory"]["snapshot"] == "no"
    assert off["row"]["number"] == 1
    assert "<memory snapshot='no'/>" in off["xml"]
    assert off["xml"] != run["xml"]
    # 02:30 in Berlin on the 26th is 01:30 UTC.
    assert plans[running.name]["next_due"] == "2026-11-26T01:30:00+00:00"
    assert plans[running.name]["would_delete"] == []
    text = snapshotd("plan", "--at", "2026-11-25T12:00:00+00:00", *settings_args(settings))
    assert text.code == 0, text.err
    assert f"{running.name} (running): both" in text.out
    assert f"== {shutoff.name} (shutoff) by policy both" in text.out
    # Nothing was made.
    assert snapshot_names(running) == []
    assert snapshot_names(shutoff) == []


def test_prune_dry_run_then_prune(domain_factory: DomainFactory, settings: Path) -> None:
    dom = domain_factory(state="shutoff")
    policy = write_policy(
        settings / "policies",
        "p",
        f"""
domains:
  include: ["{dom.name}"]
schedule:
  every: 15m
snapshot:
  name: "{NAME}"
""",
    )
    names = []
    for _ in range(3):
        result = snapshotd("take", "--policy", "p", "--json", *settings_args(settings))
        assert result.code == 0, result.err
        names.append(json.loads(result.out)[0]["snapshot"]["name"])
        time.sleep(1.1)
    # Without retention nothing is ever pruned; now add one.
    policy.write_text(policy.read_text() + "retention:\n  keep_last: 1\n")
    dry = snapshotd("prune", "--dry-run", "--json", *settings_args(settings))
    assert dry.code == 0, dry.err
    (report,) = json.loads(dry.out)
    assert report["would_delete"] == names[:2]
    assert snapshot_names(dom) == sorted(names)
    real = snapshotd("prune", "--policy", "p", "--domain", dom.name, *settings_args(settings))
    assert real.code == 0, real.err
    assert f"deleted {names[0]}, {names[1]}" in real.out
    assert snapshot_names(dom) == [names[2]]


def test_check_accepts_every_example_in_config(tmp_path: Path) -> None:
    result = snapshotd(
        "check",
        "--offline",
        "--config",
        str(CONFIG / "snapshotd.yaml"),
        "--policy-dir",
        str(CONFIG / "policies.d"),
    )
    assert result.code == 0, result.err
    for example in (CONFIG / "policies.d").glob("*.yaml"):
        assert f"({example})" in result.out


@pytest.mark.parametrize(
    "case", sorted(p.stem for p in INVALID.glob("*.yaml")) if INVALID.is_dir() else []
)
def test_check_rejects_each_invalid_corpus_file(tmp_path: Path, case: str) -> None:
    policies = tmp_path / "policies"
    policies.mkdir(mode=0o755)
    target = policies / f"{case}.yaml"
    shutil.copyfile(INVALID / f"{case}.yaml", target)
    target.chmod(0o644)
    expected = (INVALID / f"{case}.expected").read_text().strip()
    config = tmp_path / "snapshotd.yaml"
    config.write_text("{}\n")
    config.chmod(0o644)
    result = snapshotd("check", "--offline", "--policy-dir", str(policies), "--config", str(config))
    assert result.code == 2, result.out
    assert expected in result.err
    assert str(target) in result.err


def test_check_freshness_gives_each_nagios_code(
    domain_factory: DomainFactory, settings: Path
) -> None:
    dom = domain_factory(state="shutoff")
    body = f"""
domains: {{include: ["{dom.name}"]}}
schedule: {{every: 1h}}
snapshot: {{name: "{NAME}"}}
monitor: {{warn: WARN, crit: CRIT}}
"""
    policy = write_policy(
        settings / "policies", "fresh", body.replace("WARN", "1h").replace("CRIT", "2h")
    )

    def freshness() -> tuple[int, str]:
        result = snapshotd("check", "--freshness", *settings_args(settings))
        assert result.out.count("\n") == 1, result.out  # one line, as Nagios reads it
        return result.code, result.out.strip()

    # No snapshot yet: CRITICAL, naming the stream.
    code, line = freshness()
    assert code == 2
    assert line.startswith(f"SNAPSHOTD CRITICAL - {dom.name}/fresh: no snapshot |")
    # A fresh one: OK, with the age in the perfdata.
    result = snapshotd("take", "--policy", "fresh", *settings_args(settings))
    assert result.code == 0, result.err
    code, line = freshness()
    assert code == 0
    assert line.startswith("SNAPSHOTD OK - 1 snapshot streams fresh | ")
    assert f"'{dom.name}/fresh'=" in line
    assert line.endswith(";3600;7200;0;")
    # Older than warn (1s), younger than crit: WARNING.
    policy.write_text(body.replace("WARN", "1s").replace("CRIT", "1h"))
    time.sleep(2.1)
    code, line = freshness()
    assert code == 1
    assert line.startswith(f"SNAPSHOTD WARNING - {dom.name}/fresh: newest is ")
    # libvirt unreachable: UNKNOWN.
    (settings / "snapshotd.yaml").write_text(
        f'connect: ["qemu+unix:///system?socket={settings}/none.sock"]\n'
    )
    code, line = freshness()
    assert code == 3
    assert line.startswith("SNAPSHOTD UNKNOWN - cannot list domains: ")
