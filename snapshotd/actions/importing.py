"""The `import` verb's work on top of actions/metadata.py: the documents checked alone
(--dry-run without a domain), the catalog's snapshots added (--from-catalog), then the
checked import plan and its run; the groups an export's index records are checked
against the catalog before, and recorded in it after (actions/groupindex.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from snapshotd.actions import groupindex, metadata
from snapshotd.actions.ports import HypervisorAPI
from snapshotd.catalog import catalog_exists, open_catalog
from snapshotd.config.settings import DatabaseSettings
from snapshotd.core.hierarchy import ImportPlan, Item
from snapshotd.core.model import DomainInfo, SnapshotInfo


def redefine_lacks(info: SnapshotInfo) -> list[str]:
    """What REDEFINE would still need of a well-formed snapshot document: its <state>,
    <creationTime> and <domain> (said, not refused, when documents are checked alone)."""
    return [
        f"<{tag}>"
        for tag, value in (
            ("state", info.state),
            ("creationTime", info.creation_time),
            ("domain", info.domain_xml),
        )
        if value is None
    ]


def refuse_invalid(docs: metadata.Documents) -> None:
    """Documents checked alone: refuse when one of them is not snapshot XML."""
    if docs.problems:
        raise metadata.ImportRefused("\n  ".join(["invalid:", *map(str, docs.problems)]))


def refuse_problems(docs: metadata.Documents) -> None:
    """Documents to import: refuse, before libvirt is asked, when one of them is bad."""
    if docs.problems:
        # metadata's own refusal, so that the message is the one check_import gives.
        raise metadata.import_refused(docs.problems)


def _catalog_items(
    hv: HypervisorAPI,
    domain: DomainInfo,
    state_dir: str,
    snapshots: Sequence[str],
    database: DatabaseSettings | None,
) -> list[Item]:
    """The catalog's snapshots of the domain that libvirt does not have (all the named
    ones, when ``snapshots`` names some)."""
    with open_catalog(state_dir, database=database) as catalog:
        existing = {r.name for r in hv.list_snapshots(domain.name)}
        chosen = metadata.catalog_items(catalog, domain, snapshots)
    return [i for i in chosen if i.name not in existing or bool(snapshots)]


@dataclass(frozen=True, slots=True)
class Prepared:
    plan: ImportPlan
    notes: tuple[str, ...] = ()  # what the run would record in the catalog's groups


def prepare(
    hv: HypervisorAPI,
    domain: DomainInfo,
    docs: metadata.Documents,
    *,
    state_dir: str | None,
    from_catalog: bool,
    snapshots: Sequence[str],
    current: str | None,
    database: DatabaseSettings | None = None,
) -> Prepared:
    """The checked plan for the documents (and, ``from_catalog``, the catalog's snapshots
    in ``state_dir``); raises ImportRefused, also when the catalog has an imported
    snapshot in another group than its index says."""
    items = list(docs.items)
    if from_catalog and state_dir is not None:
        items += _catalog_items(hv, domain, state_dir, snapshots, database)
    plan = metadata.check_import(hv, domain, items, current=current or docs.current)
    if not docs.groups or state_dir is None:
        return Prepared(plan)
    if catalog_exists(state_dir, database):
        with open_catalog(state_dir, database=database) as catalog:
            problems = groupindex.conflicts(catalog, domain, plan, docs.groups)
        if problems:
            raise metadata.import_refused(problems)
    return Prepared(plan, tuple(groupindex.planned(plan, domain, docs.groups)))


def define(
    hv: HypervisorAPI,
    domain: DomainInfo,
    plan: ImportPlan,
    *,
    state_dir: str | None,
    groups: dict[str, groupindex.IndexedGroup] | None = None,
    database: DatabaseSettings | None = None,
) -> tuple[tuple[str, ...], list[str]]:
    """Run the plan; with ``state_dir`` the catalog records that libvirt has the
    metadata again, and each snapshot that ``groups`` names a member of a group is
    recorded in it.  Returns what was defined, and what was recorded in groups."""
    if state_dir is None:
        return metadata.run_import(hv, domain, plan), []
    with open_catalog(state_dir, database=database) as catalog:
        defined = metadata.run_import(hv, domain, plan, catalog=catalog)
        said = groupindex.record_imported(hv, catalog, domain, plan, groups or {})
    return defined, said
