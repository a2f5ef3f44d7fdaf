"""contrib/prometheus/snapshotd.rules.yml with Debian's promtool (scripts/host-setup.sh
installs it): the rules are valid, each alert fires on the series of
snapshotd.rules.test.yml meant to fire it and on no other, and every metric they read
is one the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from snapshotd.adapters.metrics import Metrics

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: scripts/host-setup.sh installs prometheus"
    return subprocess.run(
        [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> list[dict[str, object]]:
    loaded = yaml.safe_load((RULES / "snapshotd.rules.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_finds_the_rules_valid() -> None:
    done = promtool("check", "rules", "snapshotd.rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_each_alert_fires_on_its_series_and_no_other() -> None:
    done = promtool("test", "rules", "snapshotd.rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load((RULES / "snapshotd.rules.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alerts():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} is never seen firing"


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    """The test file is not one that passes whatever the rules say."""
    text = (RULES / "snapshotd.rules.test.yml").read_text().replace("policy: hourly}", "policy: x}")
    broken = tmp_path / "broken.test.yml"
    broken.write_text(text.replace("snapshotd.rules.yml", str(RULES / "snapshotd.rules.yml")))
    done = promtool("test", "rules", str(broken))
    assert done.returncode != 0


def test_every_metric_the_rules_read_is_exported() -> None:
    exported = {
        sample.name for family in Metrics().registry.collect() for sample in family.samples
    } | {
        family.name + suffix for family in Metrics().registry.collect() for suffix in ("", "_total")
    }
    text = (RULES / "snapshotd.rules.yml").read_text()
    read = set(re.findall(r"\bsnapshotd_[a-z_]+", text))
    assert read, text
    assert read <= exported, read - exported
