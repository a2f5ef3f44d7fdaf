"""`take --policy`'s work: one PolicyRun (hooks, snapshot, retention) per domain the
policy acts on, all at the same instant, one RunResult each; for a policy with
``group:``, one GroupRun of all of them, then the group's retention."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from snapshotd.actions import prune as pruning
from snapshotd.actions.grouprun import GroupOutcome, GroupResult, GroupRun
from snapshotd.actions.policyrun import Outcome, PolicyRun, RetentionProgress, RunResult
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.actions.prune import PruneReport
from snapshotd.catalog import Catalog
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Policy
from snapshotd.errors import SnapshotdError


def run_policy(
    hv: HypervisorAPI,
    catalog: Catalog,
    policy: Policy,
    domains: Sequence[DomainInfo],
    now: dt.datetime,
    *,
    clock: Callable[[], dt.datetime],
    retention_progress: RetentionProgress | None = None,
) -> list[RunResult]:
    """The policy's run for each domain, in order; a failed one does not stop the next."""
    results = []
    for domain in domains:
        try:
            run = PolicyRun(policy, domain, now)
        except SnapshotdError as exc:
            results.append(_not_run(policy, domain, exc))
            continue
        results.append(run.execute(hv, catalog, clock=clock, retention_progress=retention_progress))
    return results


def _not_run(policy: Policy, domain: DomainInfo, error: SnapshotdError) -> RunResult:
    """The name template gives no valid name for this domain: a skipped domain is still
    reported as skipped, any other as failed with that error."""
    skip = policy.selector.skip_reason(domain)
    if skip is not None:
        return RunResult(policy.name, domain, "", Outcome.SKIPPED, reason=skip)
    return RunResult(policy.name, domain, "", Outcome.FAILED, error=error)


def run_group(
    catalog: Catalog,
    policy: Policy,
    members: Sequence[tuple[HypervisorAPI, DomainInfo]],
    now: dt.datetime,
    *,
    clock: Callable[[], dt.datetime],
) -> tuple[GroupResult, list[PruneReport]]:
    """The group's run over ``members`` (each on its own host's connection); after a
    group was made (whole or partial), the policy's retention for each member (groups
    go as units: actions/prune.py)."""
    result = GroupRun(policy, list(members), now).execute(catalog)
    if result.outcome is GroupOutcome.FAILED or policy.retention is None:
        return result, []
    hv_of = {d.uuid: hv for hv, d in members}
    made = [(hv_of[m.domain.uuid], m.domain) for m in result.members]
    return result, pruning.prune_group(catalog, policy, made, clock())
