"""The daemon: ``snapshotd run``.

One main loop owns all scheduling state.  It sleeps until the next due time or
an event arrives on its queue, never polling the schedule:

* ``reload``   SIGHUP, or the policy directory changed (inotify, debounced);
* ``stop``     SIGTERM or SIGINT;
* ``domains``  a connection's domain list changed (connect, lifecycle event);
* ``done``     a worker finished a snapshot job;
* ``settled``  a connection's runs left unfinished by a previous process (kill -9, a
  watchdog restart) were reconciled with libvirt: until then those keys get no job;
* ``wake``     anything else that wants the loop to look again.

Libvirt calls never run on the main loop: each URI has a ``Link`` thread that
connects (with backoff), registers domain events and lists domains; each
snapshot job runs on a thread of its own, at most ``workers`` at a time and one
per domain.  A job that runs past ``operation_timeout`` is reported (journal,
status line, status file) and stops counting against ``workers``; its domain
stays busy until libvirt returns, because a libvirt call cannot be cancelled
safely from outside.  The loop pings systemd's watchdog from its own progress,
so a hung loop gets the daemon restarted.

The daemon holds ``daemon.lock`` in its state directory while it runs and keeps
``status.json`` there up to date for ``snapshotd status``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from snapshotd.actions import policyrun, prune, snapshot
from snapshotd.adapters.configfiles import load_settings
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.adapters.logs import log_event, sanitize_uri
from snapshotd.adapters.metrics import Metrics
from snapshotd.adapters.notify import Notifier
from snapshotd.adapters.statefile import DaemonLock, StatusWriter
from snapshotd.catalog import Catalog, open_catalog
from snapshotd.catalog.sqlite import Run, RunLog
from snapshotd.config.settings import DEFAULT_OPERATION_TIMEOUT, Overrides, Settings
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Policy
from snapshotd.core.schedule import decide, jitter_for, next_due
from snapshotd.errors import LibvirtError, SnapshotdError

log = logging.getLogger("snapshotd")

# Retry a transient failure after these delays (seconds), then keep the last one.
RETRY_BACKOFF = (10.0, 30.0, 60.0, 300.0)
RECONNECT_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_GRACE = 60.0  # how long SIGTERM waits for snapshots in flight
RECONNECT_WAIT = 60.0  # how long a job cut off by a lost connection waits for the next
SETTLE_POLL = 0.5  # seconds between looks at a job a previous process left running


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """One scheduled stream of snapshots: a policy for a domain on a connection."""

    policy: str
    uri: str
    uuid: str


@dataclass(slots=True)
class Due:
    """When a key runs next, and the slot that run serves."""

    at: float  # epoch seconds, jitter included
    slot: dt.datetime
    reason: str
    retries: int = 0


@dataclass(slots=True)
class Job:
    """A snapshot job in flight."""

    key: Key
    domain: str
    started: float  # time.monotonic()
    deadline: float  # time.monotonic() past which it is overrun
    since: float  # time.time() when it started, for the status file
    overrun: bool = False


@dataclass(slots=True)
class Status:
    """What the systemd status line and `snapshotd status` show."""

    policies: int = 0
    domains: int = 0
    next_due: str = "-"
    last_error: str | None = None
    load_errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.policies} policies, {self.domains} domains; next {self.next_due}"
        if self.load_errors:
            text += f"; policy errors: {self.load_errors[0]}"
            if len(self.load_errors) > 1:
                text += f" (+{len(self.load_errors) - 1} more)"
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return text


class Link:
    """One libvirt connection, kept alive by its own thread."""

    def __init__(self, uri: str, events: queue.Queue[tuple[str, Any]]) -> None:
        self.uri = uri
        self._events = events
        self._wanted = threading.Event()  # set: list domains again (or reconnect)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._hv: Hypervisor | None = None
        self._thread = threading.Thread(target=self._run, name=f"link {uri}", daemon=True)

    def start(self) -> None:
        self._wanted.set()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._thread.join(timeout=5)
        with self._lock:
            hv, self._hv = self._hv, None
        if hv is not None:
            with contextlib.suppress(SnapshotdError):
                hv.close()

    @property
    def hypervisor(self) -> Hypervisor | None:
        with self._lock:
            return self._hv

    def refresh(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._wanted.wait()
            self._wanted.clear()
            if self._stop.is_set():
                return
            hv = self.hypervisor
            if hv is None or not hv.alive():
                hv = self._connect()
                if hv is None:
                    delay = RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)]
                    attempt += 1
                    self._stop.wait(delay)
                    self._wanted.set()
                    continue
                attempt = 0
            try:
                domains = hv.list_domains()
            except SnapshotdError as exc:
                log.warning("%s: cannot list domains: %s", sanitize_uri(self.uri), exc)
                self._drop()
                self._wanted.set()
                continue
            self._events.put(("domains", (self.uri, domains)))

    def _connect(self) -> Hypervisor | None:
        try:
            hv = Hypervisor.open(self.uri)
            hv.watch(self._on_domain, self._on_close)
        except SnapshotdError as exc:
            log.warning("%s: not connected: %s", sanitize_uri(self.uri), exc)
            self._events.put(("link", (self.uri, False, str(exc))))
            return None
        with self._lock:
            self._hv = hv
        log.info("%s: connected", sanitize_uri(self.uri))
        self._events.put(("link", (self.uri, True, None)))
        return hv

    def _drop(self) -> None:
        with self._lock:
            hv, self._hv = self._hv, None
        if hv is not None:
            with contextlib.suppress(SnapshotdError):
                hv.close()
        self._events.put(("link", (self.uri, False, "connection lost")))

    def _on_domain(self, _event: str, _uuid: str) -> None:
        self._wanted.set()

    def _on_close(self, reason: str) -> None:
        log.warning("%s: connection closed: %s", sanitize_uri(self.uri), reason)
        self._wanted.set()


class Daemon:
    """The main loop.  ``run()`` returns the process exit status."""

    def __init__(
        self,
        overrides: Overrides,
        *,
        notifier: Notifier | None = None,
        workers: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.overrides = overrides
        # The wall clock (epoch seconds) that schedules and snapshot names are read from;
        # tests step it to prove how a clock stepped backward or forward is handled.
        self.clock = clock
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._workers = workers  # None: the config's ``workers``
        self.limit = 1
        self.policies: dict[str, Policy] = {}
        self.domains: dict[str, list[DomainInfo]] = {}
        self.due: dict[Key, Due] = {}
        self.jobs: dict[Key, Job] = {}  # in flight, overrun ones included
        self.status = Status()
        self.links: dict[str, Link] = {}
        self.connected: dict[str, tuple[bool, str | None]] = {}
        self.settings: Settings | None = None
        self._stopping = False
        self._stop_at = 0.0
        self._reconciled: set[str] = set()
        # Keys whose last run a previous process left unfinished: not dispatched until
        # _reconcile has settled it with libvirt (else a catch-up could serve its slot twice).
        self._unsettled: set[Key] = set()
        self._pool: dict[str, list[Catalog]] = {}  # see _pooled_catalog
        self._keys_cache: tuple[Any, list[tuple[Key, Policy, DomainInfo]]] | None = None
        self._pool_lock = threading.Lock()
        self._started_at = time.time()
        self._status_file: StatusWriter | None = None
        self.metrics = Metrics()

    @property
    def inflight(self) -> int:
        """Jobs that count against ``workers``: those in flight and not overrun."""
        return sum(1 for job in self.jobs.values() if not job.overrun)

    def _busy(self, uuid: str) -> bool:
        return any(key.uuid == uuid for key in self.jobs)

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
        self.due.clear()
        log.info("policies in force: %s", ", ".join(sorted(self.policies)) or "none")
        return True

    # --- scheduling ---------------------------------------------------------------

    def _state_dir(self) -> str:
        if self.settings is None:
            raise RuntimeError("the daemon has no settings yet")
        return self.settings.state_dir

    @contextlib.contextmanager
    def _pooled_catalog(self) -> Iterator[Catalog]:
        """A catalog connection for one job, kept open for the next job afterwards.

        Opening SQLite costs more than a snapshot's whole planning; connections are
        per state directory (a reload may change it) and used by one job at a time.
        """
        state_dir = self._state_dir()
        with self._pool_lock:
            idle = self._pool.setdefault(state_dir, [])
            catalog = idle.pop() if idle else None
        if catalog is None:
            catalog = open_catalog(state_dir, shared=True)
        try:
            yield catalog
        except BaseException:
            catalog.close()  # a failure may have left it mid-transaction: not reused
            raise
        with self._pool_lock:
            self._pool.setdefault(state_dir, []).append(catalog)

    def _keys(self) -> list[tuple[Key, Policy, DomainInfo]]:
        """Every (policy, domain) pair a policy selects.

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
        keys = []
        for uri, domains in self.domains.items():
            for domain in domains:
                for policy in self.policies.values():
                    if policy.selector.matches(domain):
                        keys.append((Key(policy.name, uri, domain.uuid), policy, domain))
        self._keys_cache = (basis, keys)
        return keys

    def _schedule(self, runs: RunLog, now: float) -> None:
        """Work out when each key is due, for keys that have no due time yet."""
        live = set()
        for key, policy, domain in self._keys():
            live.add(key)
            if key in self.due or key in self.jobs:
                continue  # already scheduled, or its run is in flight
            run = runs.get(policy.name, domain.uuid)
            last = _utc(run.last_slot) if run and run.last_slot is not None else None
            decision = decide(policy.schedule, last, _utc(now))
            if decision.due and decision.slot is not None:
                self.due[key] = Due(now, decision.slot, decision.reason)
            else:
                slot = decision.next_slot
                delay = jitter_for(policy.schedule, f"{policy.name}/{domain.uuid}", slot)
                self.due[key] = Due((slot + delay).timestamp(), slot, decision.reason)
        for key in list(self.due):
            if key not in live:
                del self.due[key]

    def _dispatch(self, runs: RunLog, now: float) -> None:
        ready = sorted(((d.at, k) for k, d in self.due.items() if d.at <= now), key=lambda x: x[0])
        for _at, key in ready:
            if self._stopping or self.inflight >= self.limit:
                break  # the rest stay due and go as soon as a worker is free
            if self._busy(key.uuid) or key in self._unsettled:
                continue
            policy = self.policies.get(key.policy)
            domain = self._domain(key)
            link = self.links.get(key.uri)
            if policy is None or domain is None or link is None:
                continue
            hv = link.hypervisor
            if hv is None:
                continue  # not connected: the key stays due and runs after reconnect
            due = self.due.pop(key)
            if due.retries == 0:
                # The loop may wake long after the slot it planned for (the clock was
                # stepped forward, or the host slept): the run serves the latest slot
                # that has passed, so the stale one does not get a run of its own and
                # then a catch-up run right after it.
                later = decide(policy.schedule, due.slot, _utc(now))
                if later.due and later.slot is not None:
                    due.slot, due.reason = later.slot, later.reason
            skip = policy.selector.skip_reason(domain)
            if skip is not None:
                log.info("%s: skipped by %s: %s", domain.name, policy.name, skip)
                runs.finish(policy.name, domain.uuid, slot=None, error=None, now=int(now))
                continue
            mono = time.monotonic()
            self.jobs[key] = Job(key, domain.name, mono, mono + self._operation_timeout(), now)
            threading.Thread(
                target=self._job,
                args=(key, policy, domain, hv, due),
                name=f"job {domain.name}",
                daemon=True,
            ).start()

    def _operation_timeout(self) -> float:
        settings = self.settings
        timeout = settings.operation_timeout if settings is not None else DEFAULT_OPERATION_TIMEOUT
        return timeout.total_seconds()

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

    def _domain(self, key: Key) -> DomainInfo | None:
        for domain in self.domains.get(key.uri, []):
            if domain.uuid == key.uuid:
                return domain
        return None

    def _job(self, key: Key, policy: Policy, domain: DomainInfo, hv: Hypervisor, due: Due) -> None:
        """One scheduled snapshot and its retention, on a worker thread."""
        started = time.monotonic()
        outcome: tuple[str, Any]
        try:
            with self._pooled_catalog() as catalog:
                runs = catalog.runs
                now = _utc(self.clock())
                name = policy.snapshot_name(domain.name, now)
                runs.start(
                    Run(policy.name, domain.uuid, key.uri, domain.name),
                    name,
                    int(due.slot.timestamp()),
                    int(now.timestamp()),
                )
                try:
                    made = policyrun.snapshot_with_hooks(hv, catalog, policy, domain, now)
                except SnapshotdError as exc:
                    if self._made_before_the_link_broke(exc, key, hv, catalog, runs, name):
                        self.events.put(("done", (key, due, ("ok", None))))
                        return
                    runs.finish(
                        policy.name, domain.uuid, slot=None, error=str(exc), now=int(self.clock())
                    )
                    self.metrics.failed.labels(policy=policy.name).inc()
                    raise
                self.metrics.created.labels(policy=policy.name).inc()
                self.metrics.last_success.labels(policy=policy.name, domain=domain.name).set(
                    made.info.creation_time or time.time()
                )
                self.metrics.duration.labels(operation="create").observe(time.monotonic() - started)
                runs.finish(
                    policy.name,
                    domain.uuid,
                    slot=int(due.slot.timestamp()),
                    error=None,
                    now=int(self.clock()),
                )
                ms = int((time.monotonic() - started) * 1000)
                fields = {"policy": policy.name, "domain": domain.name, "uri": key.uri}
                log_event(
                    log,
                    logging.INFO,
                    f"{domain.name}: created {made.info.name} ({ms} ms)",
                    snapshot=made.info.name,
                    operation="create",
                    duration_ms=ms,
                    **fields,
                )
                if made.note:
                    log_event(log, logging.WARNING, f"{domain.name}: {made.note}", **fields)
                pruning = time.monotonic()
                report = prune.prune(hv, catalog, policy, domain, _utc(self.clock()))
                self.metrics.duration.labels(operation="prune").observe(time.monotonic() - pruning)
                self.metrics.pruned.labels(policy=policy.name).inc(len(report.deleted))
                for deleted in report.deleted:
                    log_event(
                        log,
                        logging.INFO,
                        f"{domain.name}: pruned {deleted}",
                        snapshot=deleted,
                        operation="delete",
                        **fields,
                    )
                for level, verb, entries in (
                    (logging.ERROR, "could not prune", report.failed),
                    (logging.INFO, "kept", report.kept),
                ):
                    for name, why in entries:
                        log_event(
                            log,
                            level,
                            f"{domain.name}: {verb} {name}: {why}",
                            snapshot=name,
                            operation="delete",
                            **fields,
                        )
            outcome = ("ok", None)
        except SnapshotdError as exc:
            # libvirt failed it (maybe transient), or snapshotd refused it before libvirt.
            by_libvirt = isinstance(exc, LibvirtError)
            log_event(
                log,
                logging.ERROR,
                f"{domain.name}: snapshot {'failed' if by_libvirt else 'refused'}: {exc}",
                policy=policy.name,
                domain=domain.name,
                operation="create",
                uri=key.uri,
            )
            transient = isinstance(exc, LibvirtError) and exc.transient
            outcome = ("transient" if transient else "failed", str(exc))
        except Exception as exc:
            log.exception("%s: snapshot by %s crashed", domain.name, policy.name)
            outcome = ("failed", f"internal error: {exc}")
        self.events.put(("done", (key, due, outcome)))

    def _reconcile(self, uri: str, hv: Hypervisor) -> None:
        """Settle runs a previous process left unfinished (kill -9, watchdog restart).

        If libvirt made the snapshot, it is adopted into the catalog and its slot
        counts as served; if not, the run is closed as interrupted and the schedule's
        catch-up takes it again.  Nothing is deleted.
        """
        try:
            with open_catalog(self._state_dir()) as catalog:
                runs = catalog.runs
                for run in runs.unfinished():
                    if run.uri != uri or run.in_progress is None:
                        continue
                    self._settle(hv, catalog, runs, run, run.in_progress)
        except Exception:
            log.exception("%s: reconciling unfinished runs failed", uri)
        finally:
            self.events.put(("settled", uri))

    def _made_before_the_link_broke(  # noqa: PLR0917 - the job's state, passed once
        self,
        exc: SnapshotdError,
        key: Key,
        hv: Hypervisor,
        catalog: Catalog,
        runs: RunLog,
        name: str,
    ) -> bool:
        """A snapshot call cut off by a lost connection (libvirtd restarted under it).

        Whether libvirt made the snapshot cannot be known until libvirtd answers again,
        so this waits (up to RECONNECT_WAIT) for the Link's new connection and settles
        the run as a restart would: adopted when libvirt has the snapshot (True), closed
        as interrupted when not (False: the error stands and the retry takes the slot,
        so a slot never gets two snapshots).
        """
        if not (isinstance(exc, LibvirtError) and exc.transient) or hv.alive():
            return False
        link = self.links.get(key.uri)
        deadline = time.monotonic() + RECONNECT_WAIT
        fresh = None
        while link is not None and fresh is None and time.monotonic() < deadline:
            candidate = link.hypervisor
            if candidate is not None and candidate is not hv and candidate.alive():
                fresh = candidate
            else:
                time.sleep(0.2)
        run = runs.get(key.policy, key.uuid)
        if fresh is None or run is None or run.in_progress != name:
            return False
        self._settle(fresh, catalog, runs, run, name)
        return catalog.find(key.uuid, name) is not None

    def _settle(self, hv: Hypervisor, catalog: Catalog, runs: RunLog, run: Run, name: str) -> None:
        now = int(self.clock())
        try:
            names = {r.name for r in hv.list_snapshots(run.domain_uuid)}
        except SnapshotdError as exc:
            runs.finish(run.policy, run.domain_uuid, slot=None, error=str(exc), now=now)
            return
        if name not in names:
            log.warning(
                "%s: snapshot %s was interrupted before libvirt made it; catch-up takes it again",
                run.domain_name,
                name,
            )
            runs.finish(
                run.policy,
                run.domain_uuid,
                slot=None,
                error=f"snapshot {name} was interrupted",
                now=now,
            )
            return
        # libvirt lists a snapshot as soon as it starts making it: one still being made
        # (its job outlived the process that asked) is recorded once it is complete.
        waited_until = time.monotonic() + self._operation_timeout()
        while hv.has_job(run.domain_uuid):
            if time.monotonic() > waited_until:
                log.warning(
                    "%s: libvirt is still busy with the domain after %d s; recording "
                    "snapshot %s as libvirt describes it now",
                    run.domain_name,
                    int(self._operation_timeout()),
                    name,
                )
                break
            time.sleep(SETTLE_POLL)
        snapshot.adopt(hv, catalog, run.domain_uuid, name, policy=run.policy)
        log.info("%s: snapshot %s was made before an interruption; recorded", run.domain_name, name)
        runs.finish(run.policy, run.domain_uuid, slot=run.in_progress_slot, error=None, now=now)

    def _finished(self, key: Key, due: Due, outcome: tuple[str, Any]) -> None:
        job = self.jobs.pop(key, None)
        if job is not None and job.overrun:
            log.warning(
                "%s: the overrun snapshot by %s ended after %d s (%s)",
                job.domain,
                key.policy,
                int(time.monotonic() - job.started),
                outcome[0],
            )
        kind, error = outcome
        policy = self.policies.get(key.policy)
        if kind == "transient":
            backoff = RETRY_BACKOFF[min(due.retries, len(RETRY_BACKOFF) - 1)]
            self.due[key] = Due(
                self.clock() + backoff, due.slot, f"retry: {error}", due.retries + 1
            )
        elif kind == "failed" and policy is not None:
            # A permanent failure is not retried for the same slot: on to the next one.
            slot = next_due(policy.schedule, max(due.slot, _utc(self.clock())))
            delay = jitter_for(policy.schedule, f"{policy.name}/{key.uuid}", slot)
            self.due[key] = Due((slot + delay).timestamp(), slot, f"after failure: {error}")
        if error:
            self.status.last_error = error.splitlines()[0][:120]

    # --- the loop -----------------------------------------------------------------

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        self.events.put(("reload" if signum == signal.SIGHUP else "stop", None))

    def _update_status(self, now: float) -> None:
        self.status.policies = len(self.policies)
        self.status.domains = sum(len(d) for d in self.domains.values())
        if self.due:
            key, due = min(self.due.items(), key=lambda kv: kv[1].at)
            when = _utc(due.at).strftime("%Y-%m-%d %H:%M:%SZ")
            self.status.next_due = f"{when} ({key.policy})"
        else:
            self.status.next_due = "-"
        self.notifier.status(self.status.line())
        if self._status_file is not None:
            try:
                self._status_file.write(self._status_dict())
            except OSError as exc:
                log.warning("cannot write the status file: %s", exc)

    def _status_dict(self) -> dict[str, Any]:
        """What ``snapshotd status`` shows besides the catalog: see statefile.py."""
        names = {(uri, d.uuid): d.name for uri, ds in self.domains.items() for d in ds}
        settings = self.settings
        return {
            "pid": os.getpid(),
            "started_at": int(self._started_at),
            "config": settings.config_source if settings is not None else None,
            "policy_dir": settings.policy_dir if settings is not None else None,
            "policies": sorted(self.policies),
            "load_errors": self.status.load_errors,
            "connections": [
                {"uri": sanitize_uri(uri), "connected": up, "error": error}
                for uri, (up, error) in sorted(self.connected.items())
            ],
            "workers": self.limit,
            "operation_timeout": self._operation_timeout(),
            "scheduled": [
                {
                    "policy": key.policy,
                    "uri": sanitize_uri(key.uri),
                    "domain_uuid": key.uuid,
                    "domain": names.get((key.uri, key.uuid), key.uuid),
                    "next_due": int(due.at),
                    "reason": due.reason,
                }
                for key, due in sorted(self.due.items())
            ],
            "running": [
                {
                    "policy": key.policy,
                    "uri": sanitize_uri(key.uri),
                    "domain_uuid": key.uuid,
                    "domain": job.domain,
                    "since": int(job.since),
                    "overrun": job.overrun,
                }
                for key, job in sorted(self.jobs.items())
            ],
            "last_error": self.status.last_error,
            "stopping": self._stopping,
        }

    def _start(self, watcher_factory: Any) -> Any:
        """Signals, first policy load, one Link per URI, the directory watcher."""
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signal)
        self.reload(first=True)
        if self.settings is None:
            raise RuntimeError("no settings after the first load")
        workers = self._workers if self._workers is not None else self.settings.workers
        self.limit = max(1, workers)
        self._status_file = StatusWriter(self.settings.state_dir)
        if self.settings.metrics_address:
            try:
                self.metrics.serve(self.settings.metrics_address)
                log.info("metrics on http://%s/metrics", self.settings.metrics_address)
            except (OSError, SnapshotdError) as exc:
                # Snapshots matter more than metrics: go on, and say so everywhere.
                log.error("metrics not served on %s: %s", self.settings.metrics_address, exc)
                self.status.last_error = f"metrics not served: {exc}"[:120]
        for uri in self.settings.connect:
            self.links[uri] = Link(uri, self.events)
            self.links[uri].start()
        if watcher_factory is None:
            return None
        watcher = watcher_factory(
            self.settings.policy_dir, lambda: self.events.put(("reload", None))
        )
        watcher.start()
        return watcher

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
            watcher = self._start(watcher_factory)
        except BaseException:
            lock.release()
            raise
        catalog = open_catalog(self._state_dir())
        runs = catalog.runs
        self._unsettled = {Key(r.policy, r.uri, r.domain_uuid) for r in runs.unfinished()}
        ready = False
        try:
            while True:
                now = self.clock()
                self.tick(runs, now)
                if not ready and (self.domains or not self.links):
                    ready = True
                    self.notifier.ready(self.status.line())
                if self._stopping and (
                    self.inflight == 0 or time.time() - self._stop_at > STOP_GRACE
                ):
                    if self.inflight:
                        log.error("stopping with %d snapshots still in flight", self.inflight)
                    break
                try:
                    kind, payload = self.events.get(timeout=self._timeout(now))
                except queue.Empty:
                    kind, payload = "wake", None
                self.notifier.watchdog()  # the loop made progress
                self._handle(kind, payload)
        finally:
            if watcher is not None:
                watcher.stop()
            for link in self.links.values():
                link.stop()
            catalog.close()
            with self._pool_lock:
                for idle in self._pool.values():
                    for pooled in idle:
                        pooled.close()
                self._pool.clear()
            lock.release()
        return 0

    def tick(self, runs: RunLog, now: float) -> None:
        """One pass of the loop at wall time ``now``: overruns, due times, jobs, status."""
        self._check_overruns()
        self._schedule(runs, now)
        self._dispatch(runs, now)
        self._update_status(now)

    def _lock(self) -> DaemonLock:
        """The state directory's lock, taken before anything else happens."""
        settings = self._load()
        lock = DaemonLock(settings.state_dir)
        lock.acquire()
        return lock

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "stop" and not self._stopping:
            self._stopping = True
            self._stop_at = time.time()
            log.info("stopping: %d snapshots in flight", self.inflight)
            self.notifier.stopping(f"stopping; {self.inflight} snapshots in flight")
        elif kind == "reload":
            self.notifier.reloading("reloading policies")
            self.reload()
            self.notifier.ready(self.status.line())
        elif kind == "domains":
            uri, domains = payload
            self.domains[uri] = domains
            link = self.links.get(uri)
            hv = link.hypervisor if link is not None else None
            if uri not in self._reconciled and hv is not None:
                self._reconciled.add(uri)
                threading.Thread(
                    target=self._reconcile, args=(uri, hv), name=f"reconcile {uri}", daemon=True
                ).start()
        elif kind == "done":
            key, due, outcome = payload
            self._finished(key, due, outcome)
        elif kind == "settled":
            for key in [k for k in self._unsettled if k.uri == payload]:
                self._unsettled.discard(key)
                self.due.pop(key, None)  # planned from its run before that was settled
        elif kind == "link":
            uri, up, error = payload
            self.connected[uri] = (up, error)
            self.metrics.connected.labels(uri=sanitize_uri(uri)).set(1 if up else 0)
            if not up and error:
                self.status.last_error = f"{uri}: {error}"[:120]
