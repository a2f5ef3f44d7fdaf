"""Prometheus metrics of the daemon (off unless snapshotd.yaml sets metrics_address).

Counted whether or not they are served, so the code paths are the same either way;
served by prometheus-client's own HTTP server thread on the address given.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from snapshotd.core.policy import Policy
from snapshotd.errors import RequestError


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.created = Counter(
            "snapshotd_snapshots_created", "Snapshots created.", ["policy"], registry=r
        )
        self.failed = Counter(
            "snapshotd_snapshots_failed",
            "Snapshots that failed or were refused (skips by state are not counted).",
            ["policy"],
            registry=r,
        )
        self.skipped = Counter(
            "snapshotd_snapshots_skipped",
            "Snapshots a policy's guard skipped, by the guard (min_free, max_chain).",
            ["policy", "guard"],
            registry=r,
        )
        self.pruned = Counter(
            "snapshotd_snapshots_pruned", "Snapshots deleted by retention.", ["policy"], registry=r
        )
        self.last_success = Gauge(
            "snapshotd_last_success_timestamp_seconds",
            "When the newest snapshot of a domain under a policy was taken (Unix time).",
            ["policy", "domain"],
            registry=r,
        )
        self.duration = Histogram(
            "snapshotd_operation_duration_seconds",
            "How long operations took, by kind (create, prune).",
            ["operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.group_pause = Histogram(
            "snapshotd_group_pause_seconds",
            "A consistency group's pause window: its first member held still (suspended or "
            "frozen) to its last released.",
            ["policy"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.group_last_pause = Gauge(
            "snapshotd_group_last_pause_seconds",
            "The pause window of a consistency group's last run.",
            ["policy"],
            registry=r,
        )
        self.group_max_pause = Gauge(
            "snapshotd_group_max_pause_seconds",
            "A group policy's group.max_pause: the longest any member may stay held still.",
            ["policy"],
            registry=r,
        )
        self.monitor_warn = Gauge(
            "snapshotd_monitor_warn_seconds",
            "A monitored policy's monitor.warn: its newest snapshot older than this is WARNING.",
            ["policy"],
            registry=r,
        )
        self.monitor_crit = Gauge(
            "snapshotd_monitor_crit_seconds",
            "A monitored policy's monitor.crit: older than this (or none) is CRITICAL.",
            ["policy"],
            registry=r,
        )
        self.load_errors = Gauge(
            "snapshotd_policy_load_errors",
            "Errors in the policy files at the last load (0: the set in force is the files').",
            registry=r,
        )
        self.connected = Gauge(
            "snapshotd_connection_up", "1 when the libvirt connection is up.", ["uri"], registry=r
        )

    def policies(self, policies: Iterable[Policy]) -> None:
        """The limits of the policies in force (monitor ages, groups' max_pause), as gauges
        the alert rules compare with (contrib/prometheus/snapshotd.rules.yml)."""
        for gauge in (self.monitor_warn, self.monitor_crit, self.group_max_pause):
            gauge.clear()
        for policy in policies:
            # Each policy's counters exist from 0 on: Prometheus's increase() sees the
            # first failure (a series that appears at 1 has not increased).
            for counter in (self.created, self.failed, self.pruned):
                counter.labels(policy=policy.name)
            for name in ("min_free", "max_chain"):
                if policy.guard.active:
                    self.skipped.labels(policy=policy.name, guard=name)
            monitor = policy.monitor
            if monitor is not None and monitor.warn is not None:
                self.monitor_warn.labels(policy=policy.name).set(monitor.warn.total_seconds())
            if monitor is not None and monitor.crit is not None:
                self.monitor_crit.labels(policy=policy.name).set(monitor.crit.total_seconds())
            if policy.group is not None:
                pause = policy.group.max_pause.total_seconds()
                self.group_max_pause.labels(policy=policy.name).set(pause)

    def seed_last_success(
        self, policy: Policy, streams: Iterable[tuple[str | None, int | None]]
    ) -> None:
        """Each stream's (domain name, last success) from the run log as it is scheduled
        (fleet-wide with a shared catalog), so that after a restart the freshness alerts
        see the age the catalog knows; a monitored stream that never succeeded shows 0
        (as old as can be: CRITICAL, as `check --freshness` says).  A group's members
        are set as the group runs."""
        if policy.group is not None:
            return
        for name, when in streams:
            if name is None or (when is None and policy.monitor is None):
                continue
            self.last_success.labels(policy=policy.name, domain=name).set(when or 0)

    def serve(self, address: str, *, host_id: str | None = None) -> None:
        """Serve /metrics on HOST:PORT (an IPv6 host in brackets); with ``host_id`` (a
        host of a shared catalog) every sample has the label ``host`` too."""
        host, port = parse_address(address)
        served = self.registry
        if host_id:
            served = CollectorRegistry()
            served.register(_HostLabelled(self.registry, host_id))
        start_http_server(port, addr=host, registry=served)


class _HostLabelled:
    """Every sample of ``registry`` with ``host="HOST_ID"`` added: the fleet's hosts
    share metric names, and a query across them tells them apart by it."""

    def __init__(self, registry: CollectorRegistry, host_id: str) -> None:
        self._registry = registry
        self._host_id = host_id

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [
                Sample(s.name, {**s.labels, "host": self._host_id}, s.value, s.timestamp,
                       s.exemplar)
                for s in metric.samples
            ]  # fmt: skip
            yield labelled


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise RequestError(
            f"metrics_address {address!r} is not HOST:PORT, for example 127.0.0.1:9477"
        )
    return host.strip("[]"), int(port)
