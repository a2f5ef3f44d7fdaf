"""The daemon: ``snapshotd run``.  This module is its main loop.

One main loop owns all scheduling state.  It sleeps until the next due time or
an event arrives on its queue (daemon/events.py), never polling the schedule:

* ``Reload``         SIGHUP, or the policy directory changed (inotify, debounced);
* ``Stop``           SIGTERM or SIGINT;
* ``DomainsListed``  a connection's domain list changed (connect, lifecycle event);
* ``JobDone``        a worker finished a snapshot job;
* ``Settled``        a connection's runs left unfinished by a previous process (kill -9,
  a watchdog restart) were reconciled with libvirt: until then those keys get no job;
* ``LinkChanged``    a connection came up or went down;
* ``Wake``           the timeout passed: a due time, a watchdog ping.

Libvirt calls never run on the main loop: each URI has a ``Link`` thread (link.py)
that connects (with backoff), registers domain events and lists domains; each
snapshot job (jobs.py) runs on a thread of its own, at most ``workers`` at a time and
one per domain.  A job that runs past ``operation_timeout`` is reported (journal,
status line, status file) and stops counting against ``workers``; its domain
stays busy until libvirt returns, because a libvirt call cannot be cancelled
safely from outside.  Runs a previous process left unfinished are settled by
recovery.py.  The loop pings systemd's watchdog from its own progress, so a hung
loop gets the daemon restarted.

What the loop schedules and dispatches are runs of keys (runs.py), not domains.  The
daemon holds ``daemon.lock`` in its state directory while it runs and keeps
``status.json`` there up to date for ``snapshotd status`` (adapters/statusfile.py).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from snapshotd.adapters.configfiles import load_settings
from snapshotd.adapters.logs import log_event, sanitize_uri
from snapshotd.adapters.metrics import Metrics
from snapshotd.adapters.notify import Notifier
from snapshotd.adapters.statefile import DaemonLock
from snapshotd.adapters.statusfile import StatusWriter
from snapshotd.catalog import Catalog, RunLog, open_catalog
from snapshotd.catalog.api import CatalogUnavailable
from snapshotd.config.settings import DEFAULT_OPERATION_TIMEOUT, Overrides, Settings
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Policy
from snapshotd.daemon import runs as due_times
from snapshotd.daemon.catalogs import CatalogFactory, CatalogPlace, CatalogPool, Journal
from snapshotd.daemon.events import (
    DomainsListed,
    Event,
    EventQueue,
    JobDone,
    JobOutcome,
    LinkChanged,
    Reload,
    Settled,
    Stop,
    Wake,
)
from snapshotd.daemon.fleetduty import FleetDuty
from snapshotd.daemon.groupjobs import GroupWorker
from snapshotd.daemon.jobs import Worker, log_skipped
from snapshotd.daemon.link import Link
from snapshotd.daemon.recovery import Recovery
from snapshotd.daemon.runs import AnyKey, DomainRun, Due, GroupJobRun, GroupKey, Job, Key
from snapshotd.daemon.status import LoopState, Status, describe
from snapshotd.errors import SnapshotdError

log = logging.getLogger("snapshotd")

STOP_GRACE = 60.0  # how long SIGTERM waits for snapshots in flight
LIST_WAIT = 60.0  # how long after the start groups wait for every connection's domains


# (the policies, each URI's domain list) the keys were worked out from, and those keys
_KeysCache = tuple[tuple[Any, ...], list[tuple[AnyKey, Policy, tuple[str, ...]]]]


class Daemon:
    """The main loop.  ``run()`` returns the process exit status."""

    def __init__(
        self,
        overrides: Overrides,
        *,
        notifier: Notifier | None = None,
        workers: int | None = None,
        clock: Callable[[], float] = time.time,
        catalogs: CatalogFactory = open_catalog,
    ) -> None:
        self.overrides = overrides
        # The wall clock (epoch seconds) that schedules and snapshot names are read from;
        # tests step it to prove how a clock stepped backward or forward is handled.
        self.clock = clock
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.events: EventQueue = queue.Queue()
        self._workers = workers  # None: the config's ``workers``
        self.limit = 1
        self.policies: dict[str, Policy] = {}
        self.domains: dict[str, list[DomainInfo]] = {}
        self.due: dict[AnyKey, Due] = {}
        self.jobs: dict[AnyKey, Job] = {}  # in flight, overrun ones included
        self.status = Status()
        self.links: dict[str, Link] = {}
        self.connected: dict[str, tuple[bool, str | None]] = {}
        self.settings: Settings | None = None
        self.metrics = Metrics()
        self._catalogs = catalogs
        self._catalog_lost: str | None = None  # why the catalog did not answer, if so
        self._stopping = False
        self._stop_at = 0.0
        self._reconciled: set[str] = set()
        # Keys whose last run a previous process left unfinished: not dispatched until
        # recovery has settled it with libvirt (else a catch-up could serve its slot twice).
        self._unsettled: set[Key] = set()
        self._settled_uris: set[str] = set()  # reconciled: a group may hold their domains
        self._keys_cache: _KeysCache | None = None
        self._started_at, self._since = time.time(), self.clock()
        self._status_file: StatusWriter | None = None
        self._pool = CatalogPool(catalogs)
        self.recovery = Recovery(
            events=self.events,
            links=self.links,
            catalogs=catalogs,
            place=self._place,
            clock=self._now,
            operation_timeout=self._operation_timeout,
        )
        self.journal = Journal()
        self.fleet = FleetDuty(self._pool, self.journal)
        self.worker = Worker(
            events=self.events,
            pool=self._pool,
            recovery=self.recovery,
            metrics=self.metrics,
            place=self._place,
            clock=self._now,
            journal=self.journal,
        )
        self.group_worker = GroupWorker(
            events=self.events,
            pool=self._pool,
            metrics=self.metrics,
            place=self._place,
            clock=self._now,
            recovery=self.recovery,
        )

    def _now(self) -> float:
        return self.clock()  # looked up at each call: a test may replace the clock

    @property
    def inflight(self) -> int:
        """Jobs that count against ``workers``: those in flight and not overrun."""
        return sum(1 for job in self.jobs.values() if not job.overrun)

    def _busy(self, key: AnyKey) -> bool:
        """Whether a job in flight works on one of the domains ``key``'s run would."""
        wanted = set(key.domain_uuids)
        return any(wanted.intersection(running.domain_uuids) for running in self.jobs)

    # --- settings -----------------------------------------------------------------

    def _load(self) -> Settings:
        return load_settings(self.overrides)

    def reload(self, *, first: bool = False) -> bool:
        """Load config and policies; apply them only when the whole set is valid.

        At start there is no previous set, so the valid files are used and the
        others reported.  Returns whether the new set is in force.
        """
        settings = self._load()
        errors = [str(e) for e in settings.errors]
        self.status.load_errors = errors
        self.metrics.load_errors.set(len(errors))
        for error in errors:
            log.error("policy error: %s", error)
        if errors and not first:
            log.error("reload refused: %d errors; the previous policies stay in force", len(errors))
            return False
        self.settings = settings
        self.policies = {p.name: p for p in settings.policies}
        self.metrics.policies(self.policies.values())
        self.due.clear()
        log.info("policies in force: %s", ", ".join(sorted(self.policies)) or "none")
        return True

    def _place(self) -> CatalogPlace:
        if self.settings is None:
            raise RuntimeError("the daemon has no settings yet")
        return CatalogPlace.of(self.settings)

    def _operation_timeout(self) -> float:
        settings = self.settings
        timeout = settings.operation_timeout if settings is not None else DEFAULT_OPERATION_TIMEOUT
        return timeout.total_seconds()

    # --- scheduling ---------------------------------------------------------------

    def _keys(self) -> list[tuple[AnyKey, Policy, tuple[str, ...]]]:
        """Every (policy, domain) pair a policy selects, and one key per group policy
        for all its members; each with the domain UUIDs whose run log it resumes from.

        Worked out again only when the policies or a URI's domain list were replaced
        (both are only ever replaced, never changed in place): every wake-up asks, and
        one libvirt event of any domain on the host is a wake-up.
        """
        basis = (self.policies, tuple(self.domains.items()))
        cached = self._keys_cache
        if (
            cached is not None
            and cached[0][0] is basis[0]
            and len(cached[0][1]) == len(basis[1])
            and all(
                a[0] == b[0] and a[1] is b[1] for a, b in zip(cached[0][1], basis[1], strict=True)
            )
        ):
            return cached[1]
        keys: list[tuple[AnyKey, Policy, tuple[str, ...]]] = []
        grouped: dict[str, list[tuple[str, str]]] = {}
        for uri, domains in self.domains.items():
            for domain in domains:
                for policy in self.policies.values():
                    if not policy.selector.matches(domain):
                        continue
                    if policy.group is not None:
                        grouped.setdefault(policy.name, []).append((uri, domain.uuid))
                    else:
                        key = Key(policy.name, uri, domain.uuid)
                        keys.append((key, policy, (domain.uuid,)))
        for name, members in grouped.items():
            group = GroupKey(name, tuple(sorted(members)))
            keys.append((group, self.policies[name], group.domain_uuids))
        self._keys_cache = (basis, keys)
        return keys

    def _schedule(self, runs: RunLog, now: float) -> None:
        """Work out when each key is due, for keys that have no due time yet."""
        live: set[AnyKey] = set()
        lost: CatalogUnavailable | None = None
        names: dict[str, str] | None = None
        for key, policy, uuids in self._keys():
            live.add(key)
            if key in self.due or key in self.jobs:
                continue  # already scheduled, or its run is in flight
            # A group resumes from the latest slot any member's run log served.
            try:
                found = [runs.get(policy.name, u) for u in uuids]
            except CatalogUnavailable as exc:
                lost = exc  # scheduled once the catalog answers; the others go on
                continue
            slots = [r.last_slot for r in found if r is not None]
            last_slot = max((s for s in slots if s is not None), default=None)
            self.due[key] = due_times.first_due(policy, key, last_slot, now)
            names = names or {d.uuid: d.name for ds in self.domains.values() for d in ds}
            streams = [(r.domain_name, r.last_success) if r else (names.get(u), None)
                       for u, r in zip(uuids, found, strict=True)]  # fmt: skip
            self.metrics.seed_last_success(policy, streams)
        for key in list(self.due):
            if key not in live:
                del self.due[key]
        if lost is not None:
            raise lost

    def _dispatch(self, runs: RunLog, now: float) -> None:
        """Hand each due key's run to a worker, while workers are free."""
        ready = sorted(((d.at, k) for k, d in self.due.items() if d.at <= now), key=lambda x: x[0])
        for _at, key in ready:
            if self._stopping or self.inflight >= self.limit:
                break  # the rest stay due and go as soon as a worker is free
            run = self._runnable(key)
            if run is None:
                continue  # blocked: busy, unsettled, unknown or not connected; stays due
            self.due.pop(key)
            due_times.catch_up(run.policy, run.due, now)
            mono = time.monotonic()
            deadline = mono + self._operation_timeout()
            if isinstance(run, GroupJobRun):
                self.jobs[key] = Job(key, f"group {key.policy}", mono, deadline, now)
                self.group_worker.start(run)
                continue
            skip = run.policy.selector.skip_reason(run.domain)
            if skip is not None:
                log_skipped(run.domain, run.policy.name, skip)
                runs.finish(run.policy.name, run.domain.uuid, slot=None, error=None, now=int(now))
                continue
            self.jobs[key] = Job(key, run.domain.name, mono, deadline, now)
            self.worker.start(run)

    def _runnable(self, key: AnyKey) -> DomainRun | GroupJobRun | None:
        """The run of ``key`` a worker can start now, or None while something blocks it."""
        if isinstance(key, GroupKey):
            return self._runnable_group(key)
        if self._busy(key) or key in self._unsettled:
            return None
        policy = self.policies.get(key.policy)
        domain = self._domain(key.uri, key.uuid)
        link = self.links.get(key.uri)
        if policy is None or domain is None or link is None:
            return None
        hv = link.hypervisor
        if hv is None:
            return None  # not connected: the key stays due and runs after reconnect
        return DomainRun(key, policy, domain, hv, self.due[key])

    def _runnable_group(self, key: GroupKey) -> GroupJobRun | None:
        """A group runs when every member's connection is up and reconciled (a hold a
        killed daemon left is released first) and no member is busy or unsettled; in the
        first LIST_WAIT seconds, when every connection is (a member may be on one)."""
        policy = self.policies.get(key.policy)
        if policy is None or self._busy(key):
            return None
        if self.clock() < self._since + LIST_WAIT and not set(self.links) <= self._settled_uris:
            return None
        members = []
        for uri, uuid in key.members:
            link = self.links.get(uri)
            domain = self._domain(uri, uuid)
            hv = link.hypervisor if link is not None else None
            unsettled = Key(key.policy, uri, uuid) in self._unsettled
            if hv is None or domain is None or unsettled or uri not in self._settled_uris:
                return None
            members.append((hv, domain))
        return GroupJobRun(key, policy, tuple(members), self.due[key])

    def _domain(self, uri: str, uuid: str) -> DomainInfo | None:
        for domain in self.domains.get(uri, []):
            if domain.uuid == uuid:
                return domain
        return None

    def _check_overruns(self) -> None:
        """Report each job that has run past ``operation_timeout``, once."""
        mono = time.monotonic()
        for job in self.jobs.values():
            if job.overrun or mono < job.deadline:
                continue
            job.overrun = True
            seconds = int(mono - job.started)
            message = (
                f"{job.domain}: snapshot by {job.key.policy} still running after {seconds} s "
                f"(operation_timeout {self._operation_timeout():g} s); its worker goes to the "
                f"next job, and {job.domain} gets no other operation until libvirt returns "
                "(is its QEMU process stopped or hung?)"
            )
            log_event(
                log,
                logging.ERROR,
                message,
                policy=job.key.policy,
                domain=job.domain,
                operation="create",
                duration_ms=seconds * 1000,
                uri=job.key.uri,
            )
            self.status.last_error = message[:120]

    def _finished(self, key: AnyKey, due: Due, outcome: JobOutcome) -> None:
        """A job ended: a transient failure is retried, a permanent one waits for the
        next slot, a success is scheduled again from the run log."""
        job = self.jobs.pop(key, None)
        if job is not None and job.overrun:
            log.warning(
                "%s: the overrun snapshot by %s ended after %d s (%s)",
                job.domain,
                key.policy,
                int(time.monotonic() - job.started),
                outcome.kind,
            )
        error = outcome.error
        policy = self.policies.get(key.policy)
        if outcome.kind == "transient":
            self.due[key] = due_times.retry(due, error, self.clock())
        elif outcome.kind == "failed" and policy is not None:
            self.due[key] = due_times.after_failure(policy, key, due, error, self.clock())
        elif outcome.kind == "elsewhere" and policy is not None:
            why = f"after another host's slot: {error}"
            self.due[key] = due_times.next_slot(policy, key, due, self.clock(), why)
            return  # not an error of this host's
        elif outcome.kind == "guarded" and policy is not None:
            why = f"after a slot the guard skipped: {error}"
            self.due[key] = due_times.next_slot(policy, key, due, self.clock(), why)
        elif outcome.kind == "journaled" and policy is not None:
            # The run log that would say which slot it served cannot be read now.
            why = "after a slot recorded in this host's journal"
            self.due[key] = due_times.next_slot(policy, key, due, self.clock(), why)
        if error:
            self.status.last_error = error.splitlines()[0][:120]

    # --- the loop -----------------------------------------------------------------

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        self.events.put(Reload() if signum == signal.SIGHUP else Stop())

    def _update_status(self, _now: float) -> None:
        self.status.count(len(self.policies), self.domains)
        self.status.next_run(self.due)
        self.notifier.status(self.status.line())
        if self._status_file is not None:
            try:
                self._status_file.write(describe(self._loop_state()))
            except OSError as exc:
                log.warning("cannot write the status file: %s", exc)

    def _loop_state(self) -> LoopState:
        return LoopState(
            pid=os.getpid(),
            started_at=self._started_at,
            settings=self.settings,
            policies=self.policies,
            domains=self.domains,
            connected=self.connected,
            due=self.due,
            jobs=self.jobs,
            workers=self.limit,
            operation_timeout=self._operation_timeout(),
            status=self.status,
            stopping=self._stopping,
        )

    def _start(self, watcher_factory: Any) -> tuple[Any, Catalog]:
        """Signals, first policy load, the catalog, metrics, one Link per URI, the
        directory watcher; (the watcher, the catalog)."""
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signal)
        self.reload(first=True)
        if self.settings is None:
            raise RuntimeError("no settings after the first load")
        # Before any connection: a catalog it cannot use (one a newer snapshotd wrote)
        # stops the start with its message, nothing touched.
        catalog = CatalogPlace.of(self.settings).open(self._catalogs)
        workers = self._workers if self._workers is not None else self.settings.workers
        self.limit = max(1, workers)
        self._status_file = StatusWriter(self.settings.state_dir)
        shared = self.settings.catalog is not None
        self._serve_metrics(self.settings.metrics_address, catalog.host_id if shared else None)
        for uri in self.settings.connect:
            self.links[uri] = Link(uri, self.events)
            self.links[uri].start()
        if watcher_factory is None:
            return None, catalog
        watcher = watcher_factory(self.settings.policy_dir, lambda: self.events.put(Reload()))
        watcher.start()
        return watcher, catalog

    def _serve_metrics(self, address: str | None, host_id: str | None) -> None:
        if not address:
            return
        try:
            self.metrics.serve(address, host_id=host_id)
            log.info("metrics on http://%s/metrics", address)
        except (OSError, SnapshotdError) as exc:
            # Snapshots matter more than metrics: go on, and say so everywhere.
            log.error("metrics not served on %s: %s", address, exc)
            self.status.last_error = f"metrics not served: {exc}"[:120]

    def _timeout(self, now: float) -> float:
        """How long the loop may sleep: until the next due time, a watchdog ping or a stop check.

        Called after this pass's dispatch: a key that is due by ``now`` and still waits is
        blocked (no free worker, its domain busy or unsettled, not connected), and only an
        event frees it (done, settled, link, domains, reload), which wakes the loop anyway.
        Counting it here would make the loop spin while a backlog waits for workers.
        """
        timeout = min((d.at for d in self.due.values() if d.at > now), default=now + 3600) - now
        mono = time.monotonic()
        for job in self.jobs.values():
            if not job.overrun:
                timeout = min(timeout, job.deadline - mono + 0.01)
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            timeout = min(timeout, interval)
        if self._stopping:
            timeout = min(timeout, 0.5)
        return max(timeout, 0.0)

    def run(self, *, watcher_factory: Any = None) -> int:
        lock = self._lock()
        try:
            watcher, catalog = self._start(watcher_factory)
        except BaseException:
            lock.release()
            raise
        runs = catalog.runs
        self.fleet.host_id = catalog.host_id
        self._unsettled = {Key(r.policy, r.uri, r.domain_uuid) for r in runs.unfinished()}
        try:
            self._loop(runs)
        finally:
            if watcher is not None:
                watcher.stop()
            for link in self.links.values():
                link.stop()
            catalog.close()
            self._pool.close()
            lock.release()
        return 0

    def _loop(self, runs: RunLog) -> None:
        """Pass after pass until a stop has let the jobs in flight finish (or STOP_GRACE)."""
        ready = False
        while True:
            now = self.clock()
            self.tick(runs, now)
            if not ready and (self.domains or not self.links):
                ready = True
                self.notifier.ready(self.status.line())
            if self._stopping and (self.inflight == 0 or time.time() - self._stop_at > STOP_GRACE):
                if self.inflight:
                    log.error("stopping with %d snapshots still in flight", self.inflight)
                return
            event: Event
            try:
                event = self.events.get(timeout=self._timeout(now))
            except queue.Empty:
                event = Wake()
            self.notifier.watchdog()  # the loop made progress
            self._handle(event)

    def tick(self, runs: RunLog, now: float) -> None:
        """One pass of the loop at wall time ``now``: overruns, due times, jobs, status.

        A catalog that cannot be reached (a shared database down) holds up what needs
        it (new keys' first due times) until it answers again; keys already due are
        dispatched (their jobs decide: journal or skip), the links and status go on."""
        self._check_overruns()
        lost: CatalogUnavailable | None = None
        for step in (self._schedule, self._dispatch):
            try:
                step(runs, now)
            except CatalogUnavailable as exc:
                lost = exc
        if lost is None:
            try:
                self.fleet.tick(self.settings, runs, now)
            except CatalogUnavailable as exc:
                lost = exc
        if lost is not None:
            if self._catalog_lost is None:
                log.warning(
                    "the catalog cannot be reached: domains that run here are recorded in "
                    "this host's journal, the others wait for it: %s",
                    lost,
                )
            self._catalog_lost = str(lost)
            self.status.last_error = str(lost)[:120]
        elif self._catalog_lost is not None:
            log.info("the catalog answers again")
            self._catalog_lost = None
        self._update_status(now)

    def _lock(self) -> DaemonLock:
        """The state directory's lock, taken before anything else happens."""
        settings = self._load()
        lock = DaemonLock(settings.state_dir)
        lock.acquire()
        return lock

    def _handle(self, event: Event) -> None:
        match event:
            case Stop() if not self._stopping:
                self._stopping = True
                self._stop_at = time.time()
                log.info("stopping: %d snapshots in flight", self.inflight)
                self.notifier.stopping(f"stopping; {self.inflight} snapshots in flight")
            case Reload():
                self.notifier.reloading("reloading policies")
                self.reload()
                self.notifier.ready(self.status.line())
            case DomainsListed(uri, domains):
                self._listed(uri, domains)
            case JobDone(key, due, outcome):
                self._finished(key, due, outcome)
            case Settled(uri):
                self._settled_uris.add(uri)
                for key in [k for k in self._unsettled if k.uri == uri]:
                    self._unsettled.discard(key)
                    self.due.pop(key, None)  # planned from its run before that was settled
            case LinkChanged(uri, up, error):
                self.connected[uri] = (up, error)
                self.metrics.connected.labels(uri=sanitize_uri(uri)).set(1 if up else 0)
                if not up and error:
                    # Without its password: last_error goes to status.json and the status line.
                    self.status.last_error = f"{sanitize_uri(uri)}: {error}"[:120]

    def _listed(self, uri: str, domains: list[DomainInfo]) -> None:
        """A URI's domains; on its first connection, its unfinished runs are settled."""
        self.domains[uri] = domains
        link = self.links.get(uri)
        hv = link.hypervisor if link is not None else None
        if uri not in self._reconciled and hv is not None:
            self._reconciled.add(uri)
            self.recovery.start(uri, hv)
