"""One policy run for one domain: hooks around the policy's snapshot, with quiesce:
try's fallback."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from snapshotd.actions.snapshot import Created, create
from snapshotd.adapters import hooks
from snapshotd.adapters.hypervisor import Hypervisor, agent_unavailable
from snapshotd.catalog.sqlite import Catalog
from snapshotd.core.model import (
    DomainInfo,
)
from snapshotd.core.policy import BeforeFailure, Policy, Quiesce
from snapshotd.errors import LibvirtError, SnapshotdError


def create_for_policy(
    hv: Hypervisor, catalog: Catalog, policy: Policy, domain: DomainInfo, now: dt.datetime
) -> Created:
    """One snapshot of ``domain`` under ``policy``, with quiesce: try's fallback."""
    mode = policy.snapshot.quiesce
    quiesce = policy.quiesces(domain)
    request = policy.request(domain, now, quiesce=quiesce)
    try:
        return create(hv, catalog, domain, request, policy=policy.name, now=now)
    except LibvirtError as exc:
        if not (quiesce and mode is Quiesce.TRY and agent_unavailable(exc)):
            raise
        fallback = policy.request(domain, now, quiesce=False)
        made = create(hv, catalog, domain, fallback, policy=policy.name, now=now)
        note = f"quiesce: try: taken without quiesce, the guest agent did not help ({exc.reason})"
        return Created(made.plan, made.info, note)


class HookSkipped(SnapshotdError):
    """A ``before`` hook failed and the policy says ``before_failure: skip``."""


def snapshot_with_hooks(
    hv: Hypervisor, catalog: Catalog, policy: Policy, domain: DomainInfo, now: dt.datetime
) -> Created:
    """The policy's snapshot of ``domain`` with its hooks around it.

    before hooks; if one failed and before_failure is skip, the snapshot is skipped
    (HookSkipped) and on_failure hooks run; otherwise the snapshot is taken, then
    after hooks (success) or on_failure hooks (failure, which is re-raised).
    """
    spec = policy.hooks
    timeout = spec.timeout.total_seconds()
    context = hooks.Context(
        policy=policy.name,
        domain=domain.name,
        domain_uuid=domain.uuid,
        snapshot=policy.snapshot_name(domain.name, now),
        state=domain.state.value,
    )
    failed = [o for o in hooks.run_all("before", spec.before, context, timeout) if not o.ok]
    if failed and spec.before_failure is BeforeFailure.SKIP:
        why = "; ".join(o.problem or "" for o in failed)
        skipped = replace(context, result="skipped", error=why)
        hooks.run_all("on_failure", spec.on_failure, skipped, timeout)
        raise HookSkipped(f"snapshot skipped: {why} (hooks.before_failure: skip)")
    try:
        made = create_for_policy(hv, catalog, policy, domain, now)
    except SnapshotdError as exc:
        hooks.run_all(
            "on_failure",
            spec.on_failure,
            replace(context, result="failed", error=str(exc)),
            timeout,
        )
        raise
    hooks.run_all("after", spec.after, replace(context, result="ok"), timeout)
    return made
