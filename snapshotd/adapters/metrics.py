"""Prometheus metrics of the daemon (off unless snapshotd.yaml sets metrics_address).

Counted whether or not they are served, so the code paths are the same either way;
served by prometheus-client's own HTTP server thread on the address given.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

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
        self.load_errors = Gauge(
            "snapshotd_policy_load_errors",
            "Errors in the policy files at the last load (0: the set in force is the files').",
            registry=r,
        )
        self.connected = Gauge(
            "snapshotd_connection_up", "1 when the libvirt connection is up.", ["uri"], registry=r
        )

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
