"""A real Prometheus (Debian's, scripts/host-setup.sh installs it) scraping a real daemon
that takes and fails snapshots of real domains, with contrib/prometheus's rules: the
series the daemon exports are in Prometheus, and the stale-stream and failure alerts
appear for the streams meant to raise them, not for the others."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.domains import DiskSpec, DomainFactory
from tests.integration.target import REPO, connect_line
from tests.integration.test_daemon import Daemon, free_port, metrics_text, write_policy

RULES = REPO / "contrib" / "prometheus" / "snapshotd.rules.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "snapshotd.json"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard's queries read (histogram and counter suffixes
    taken off), its variables' query among them."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"expr", "definition"} and isinstance(value, str):
                    found.update(re.findall(r"\bsnapshotd_[a-z_]+", value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return {next((n.removesuffix(s) for s in _SUFFIXES if n.endswith(s)), n) for n in found}


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """(Prometheus's port, the port it scrapes as job snapshotd), scraping and evaluating
    every second; stopped by its pid after the test."""
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus is missing: scripts/host-setup.sh installs it"
    web, target = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{json.dumps(str(RULES))}]\n"
        "scrape_configs:\n"
        "  - job_name: snapshotd\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/-/ready", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "Prometheus did not get ready"
                time.sleep(0.2)
        yield web, target
    finally:
        proc.terminate()  # by its pid
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=5) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def test_prometheus_scrapes_the_daemon_and_raises_the_alerts_it_should(
    domain_factory: DomainFactory, daemon: Daemon, prometheus: tuple[int, int]
) -> None:
    web, port = prometheus
    good = domain_factory(state="running")
    raw = domain_factory([DiskSpec(format="raw")], state="shutoff")
    config = daemon.root / "snapshotd.yaml"
    config.write_text(connect_line() + f'metrics_address: "127.0.0.1:{port}"\n')
    config.chmod(0o644)

    def body(dom: Any, every: str, extra: str = "") -> str:
        return (
            f'domains: {{include: ["{dom.name}"], states: [running, shutoff]}}\n'
            f"schedule: {{every: {every}}}\n"
            'snapshot: {name: "{policy}-{time:%Y%m%dT%H%M%S%fZ}"' + extra + "}\n"
            "retention: {keep_last: 2}\n"
        )

    # Fresh: a snapshot every 2 s, allowed to be an hour old.  Stale: none since the
    # daemon started (or one at the start), allowed 2 s.  Failing: an internal snapshot
    # of a raw disk, which the state table refuses, every 2 s.
    write_policy(daemon, "fresh", body(good, "2s") + "monitor: {warn: 1h, crit: 2h}\n")
    write_policy(daemon, "stale", body(good, "1h") + "monitor: {warn: 2s, crit: 3s}\n")
    write_policy(daemon, "failing", body(raw, "2s", ", disks: internal"))
    daemon.start()
    daemon.wait_ready()

    def alerts() -> list[dict[str, Any]]:
        return list(api(web, "alerts")["alerts"])

    def raised(name: str, policy: str) -> bool:
        return any(
            a["labels"]["alertname"] == name and a["labels"].get("policy") == policy
            for a in alerts()
        )

    daemon.wait_for(lambda: raised("SnapshotdSnapshotStale", "stale"), 60, "the stale alert")
    daemon.wait_for(lambda: raised("SnapshotdSnapshotFailures", "failing"), 60, "failures")
    # The series, from Prometheus's own store.
    created = api(web, "query", query='snapshotd_snapshots_created_total{policy="fresh"}')
    assert float(created["result"][0]["value"][1]) >= 1, created
    failed = api(web, "query", query='snapshotd_snapshots_failed_total{policy="failing"}')
    assert float(failed["result"][0]["value"][1]) >= 1, failed
    up = api(web, "query", query='up{job="snapshotd"}')
    assert up["result"][0]["value"][1] == "1", up
    warn = api(web, "query", query="snapshotd_monitor_warn_seconds")
    assert {r["metric"]["policy"]: r["value"][1] for r in warn["result"]} == {
        "fresh": "3600",
        "stale": "2",
    }
    connected = api(web, "query", query="snapshotd_connection_up")
    assert [r["value"][1] for r in connected["result"]] == ["1"], connected
    # Not raised for the streams that are well.
    seen = alerts()
    assert not [a for a in seen if a["labels"].get("policy") == "fresh"], seen
    assert not [a for a in seen if a["labels"]["alertname"] == "SnapshotdDown"], seen
    (stale,) = [a for a in seen if a["labels"]["alertname"] == "SnapshotdSnapshotStale"]
    assert stale["labels"]["domain"] == good.name
    assert stale["state"] in {"pending", "firing"}  # pending for the rule's 10 minutes
    # Every query of the Grafana dashboard reads a metric this daemon exports.
    exported = {f.name for f in text_string_to_metric_families(metrics_text(port))}
    wanted = dashboard_metrics()
    assert len(wanted) >= 10, wanted
    assert wanted <= exported, wanted - exported
    assert daemon.stop() == 0
