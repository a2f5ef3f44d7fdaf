"""What snapshotd would do, changing nothing: which policies select which domains, and
for a policy and a domain at a time the next due time, the snapshot (or why it would be
skipped or refused) and what retention would delete; also an ad hoc snapshot's plan."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from snapshotd.actions import prune, snapshot
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.adapters import files
from snapshotd.catalog import Catalog
from snapshotd.core.group import plan_group, taken_as
from snapshotd.core.model import DomainInfo, SnapshotRequest
from snapshotd.core.plan import Plan, plan_snapshot
from snapshotd.core.policy import Policy
from snapshotd.core.retention import describe
from snapshotd.core.schedule import next_due
from snapshotd.errors import RequestError, SnapshotdError


@dataclass(frozen=True, slots=True)
class Proposed:
    """A snapshot as it would be taken: its plan and the XML, checked against libvirt's
    schema."""

    plan: Plan
    xml: str


@dataclass(frozen=True, slots=True)
class Selection:
    """A domain and the policies that select it."""

    domain: DomainInfo
    policies: tuple[Policy, ...]


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    """What one policy would do for one domain; exactly one of skip, refused and
    snapshot is set."""

    domain: DomainInfo
    policy: str
    next_due: dt.datetime
    skip: str | None = None  # the selector's reason to leave the domain alone
    refused: str | None = None  # why the snapshot could not be taken
    snapshot: Proposed | None = None
    retention: str | None = None  # the rules, described; None: the policy never prunes
    would_delete: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupPreview:
    """What a group policy's next run would do: its members, the order of operations,
    and the pause window its last run had (the catalog's), or why it would be refused."""

    policy: str
    members: tuple[tuple[str, str], ...]  # (domain, hold)
    steps: tuple[str, ...]
    max_pause: float
    last_pause: float | None
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Overview:
    """`plan` for every policy (or one) and every domain (or one) at a time."""

    at: dt.datetime
    selections: tuple[Selection, ...]
    plans: tuple[PolicyPlan, ...]
    groups: tuple[GroupPreview, ...] = ()


def selections(policies: Sequence[Policy], domains: Sequence[DomainInfo]) -> list[Selection]:
    """Each domain with the policies that select it (none, one, or overlapping ones)."""
    return [
        Selection(domain, tuple(p for p in policies if p.selector.matches(domain)))
        for domain in domains
    ]


def selected(hv: HypervisorAPI, policy: Policy, domain_name: str | None) -> list[DomainInfo]:
    """The domains a policy acts on: the named one (refused when the policy does not
    select it), else every domain it selects."""
    if domain_name is not None:
        info = hv.domain(domain_name)
        if not policy.selector.matches(info):
            raise RequestError(f"policy {policy.name!r} does not select domain {info.name!r}")
        return [info]
    return [d for d in hv.list_domains() if policy.selector.matches(d)]


def _proposed(domain: DomainInfo, request: SnapshotRequest) -> Proposed:
    plan = plan_snapshot(domain, request)
    return Proposed(plan, snapshot.render_checked(plan.spec))


def policy_plan(
    hv: HypervisorAPI, catalog: Catalog, policy: Policy, domain: DomainInfo, at: dt.datetime
) -> PolicyPlan:
    """What ``policy`` would do for ``domain`` at ``at``."""
    due = next_due(policy.schedule, at)
    skip = policy.selector.skip_reason(domain)
    refused = proposed = None
    if skip is None:
        try:
            if policy.group is not None:  # as the group run takes it (core/group.py)
                request = policy.request(domain, at, quiesce=False)
                proposed = _proposed(taken_as(policy.group.consistency, domain), request)
            else:
                request = policy.request(domain, at, quiesce=policy.quiesces(domain))
                proposed = _proposed(domain, request)
        except SnapshotdError as exc:
            refused = str(exc)
    if policy.retention is None:
        return PolicyPlan(domain, policy.name, due, skip, refused, proposed)
    report = prune.prune(hv, catalog, policy, domain, at, dry_run=True)
    return PolicyPlan(
        domain,
        policy.name,
        due,
        skip,
        refused,
        proposed,
        retention=describe(policy.retention),
        would_delete=tuple(report.to_delete),
    )


def overview(
    hv: HypervisorAPI,
    catalog: Catalog,
    policies: Sequence[Policy],
    domain_name: str | None,
    at: dt.datetime,
) -> Overview:
    """The plan of every policy for the named domain, or for every domain."""
    domains = [hv.domain(domain_name)] if domain_name else hv.list_domains()
    chosen = selections(policies, domains)
    plans = [policy_plan(hv, catalog, p, s.domain, at) for s in chosen for p in s.policies]
    everyone = domains if not domain_name else hv.list_domains()
    groups = [group_preview(catalog, p, everyone, at) for p in policies if p.group is not None]
    return Overview(at, tuple(chosen), tuple(plans), tuple(groups))


def group_preview(
    catalog: Catalog, policy: Policy, domains: Sequence[DomainInfo], at: dt.datetime
) -> GroupPreview:
    """A group policy's next run over the domains it selects, changing nothing."""
    settings = policy.group
    if settings is None:
        raise ValueError(f"policy {policy.name!r} has no group")
    members = [
        d for d in domains if policy.selector.matches(d) and policy.selector.skip_reason(d) is None
    ]
    past = [g.pause_ms for g in catalog.groups.all(policy.name) if g.pause_ms is not None]
    last = past[-1] / 1000 if past else None
    limit = settings.max_pause.total_seconds()
    try:
        requests = {d.uuid: policy.request(d, at, quiesce=False) for d in members}
        plan = plan_group(policy.name, settings, members, requests)
    except SnapshotdError as exc:
        names = tuple((d.name, "-") for d in members)
        return GroupPreview(policy.name, names, (), limit, last, refused=str(exc))
    held = tuple((m.domain.name, m.hold.value) for m in plan.members)
    return GroupPreview(policy.name, held, tuple(plan.steps()), limit, last)


def adhoc(
    hv: HypervisorAPI, domain_name: str, request: SnapshotRequest
) -> tuple[DomainInfo, Proposed]:
    """An ad hoc snapshot's plan, with the files it would write checked (none made)."""
    domain = hv.domain(domain_name)
    proposed = _proposed(domain, request)
    files.check_targets(proposed.plan.spec, create_dirs=False)
    return domain, proposed
