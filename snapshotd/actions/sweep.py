"""The `prune` verb's work: retention for every policy that has it (or one) and every
domain the policy selects (or one), one prune report each (actions/prune.py does one)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from snapshotd.actions import prune
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.catalog import Catalog
from snapshotd.core.model import DomainInfo
from snapshotd.core.policy import Policy

# Around each domain's prune: given the connection's URI and the domain (e.g. a
# terminal's progress display of the merges the deletions start).
Around = Callable[[str, DomainInfo], AbstractContextManager[object]]


def _nothing(_uri: str, _domain: DomainInfo) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


def prune_selected(
    hv: HypervisorAPI,
    catalog: Catalog,
    policies: Sequence[Policy],
    domain_name: str | None,
    now: dt.datetime,
    *,
    dry_run: bool,
    around: Around = _nothing,
) -> list[prune.PruneReport]:
    """Prune (or, dry_run, judge) each selected domain under each policy with retention,
    policy by policy."""
    domains = [hv.domain(domain_name)] if domain_name else hv.list_domains()
    reports = []
    for policy in policies:
        if policy.retention is None:
            continue
        for domain in domains:
            if not policy.selector.matches(domain):
                continue
            with around(hv.uri, domain):
                reports.append(prune.prune(hv, catalog, policy, domain, now, dry_run=dry_run))
    return reports
