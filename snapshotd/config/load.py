"""Loading: a policy file's or snapshotd.yaml's text in, a typed value or located errors out.

Pure: the functions here take the text and the file's name; reading files (size
cap, owners, modes, symlinks) is ``snapshotd.adapters.configfiles``.  Each runs
the steps of ``snapshotd.config`` in order, every step collecting all the problems
it finds before the next runs on what is left, and returns them in file order.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from snapshotd.config import crossfield
from snapshotd.config.reader import Failed, Reader
from snapshotd.config.schema import CONFIG_SCHEMA, POLICY_SCHEMA, Option
from snapshotd.config.settings import DatabaseSettings, Settings
from snapshotd.config.yamlreader import LocatedError, describe, is_null
from snapshotd.core import guard, naming, schedule
from snapshotd.core.group import Consistency, Fallback, GroupSettings, OnMemberFailure
from snapshotd.core.guard import Guard
from snapshotd.core.model import DomainState, Request
from snapshotd.core.policy import (
    BeforeFailure,
    Hooks,
    Metadata,
    Monitor,
    Policy,
    Quiesce,
    Selector,
    SnapshotSettings,
)
from snapshotd.core.retention import Retention
from snapshotd.core.schedule import Schedule


def _read(text: str, filename: str, schema: tuple[Option, ...]) -> Reader | None:
    """Steps 1 to 4.  None when the file is empty."""
    r = Reader(filename, schema)
    root = r.document(text)
    if isinstance(root, Failed):
        return r
    if root is None or is_null(root):
        return None
    r.root = root
    if not isinstance(root, yaml.MappingNode):
        names = ", ".join(o.path for o in schema if not o.parent)
        r.error(root, "", f"the file must be a mapping of options ({names}), not {describe(root)}")
        return r
    r.check_keys(root)
    r.structure(root, "")
    r.read_values()
    return r


def parse_policy(text: str, filename: str) -> Policy | list[LocatedError]:
    """One policy file's text -> a Policy, or every problem found, in file order."""
    r = _read(text, filename, POLICY_SCHEMA)
    if r is None:
        return [
            LocatedError(
                filename, 1, 1, "", "the file is empty; a policy needs at least a schedule:"
            )
        ]
    if r.root is None:
        return r.sorted_errors()
    name, retention = crossfield.check_policy(r, filename)
    if r.errors or name is None:
        return r.sorted_errors()
    policy = _build_policy(r, name, filename, retention)
    # The scheduler's own check must agree; if it ever does not, refuse here, not later.
    problem = schedule.check_schedule(policy.schedule)
    if problem is not None:
        r.error(r.nodes.get("schedule"), "schedule", problem)
        return r.sorted_errors()
    return policy


def _build_policy(r: Reader, name: str, filename: str, retention: Retention | None) -> Policy:
    min_free = r.opt_text("guard.min_free")
    return Policy(
        name=name,
        source=filename,
        selector=Selector(
            include=r.texts("domains.include"),
            exclude=r.texts("domains.exclude"),
            states=frozenset(DomainState(s) for s in r.texts("domains.states")),
        ),
        schedule=Schedule(
            cron=r.opt_text("schedule.cron"),
            every=r.opt_duration("schedule.every"),
            timezone=r.text("schedule.timezone"),
            jitter=r.duration("schedule.jitter"),
            catch_up=r.flag("schedule.catch_up"),
        ),
        snapshot=SnapshotSettings(
            memory=Request.parse(r.text("snapshot.memory")),
            disks=Request.parse(r.text("snapshot.disks")),
            disk=tuple((k, Request.parse(v)) for k, v in r.pairs("snapshot.disk")),
            disk_only=r.flag("snapshot.disk_only"),
            quiesce=Quiesce(r.text("snapshot.quiesce")),
            live=r.flag("snapshot.live"),
            atomic=r.flag("snapshot.atomic"),
            name=r.text("snapshot.name"),
            description=r.text("snapshot.description"),
            directory=r.opt_text("snapshot.directory"),
            metadata=Metadata(r.text("snapshot.metadata")),
        ),
        retention=retention,
        hooks=Hooks(
            before=r.command_lists("hooks.before"),
            after=r.command_lists("hooks.after"),
            on_failure=r.command_lists("hooks.on_failure"),
            timeout=r.duration("hooks.timeout"),
            before_failure=BeforeFailure(r.text("hooks.before_failure")),
        ),
        guard=Guard(
            min_free=guard.parse_space(min_free) if min_free is not None else None,
            max_chain=r.count("guard.max_chain"),
        ),
        monitor=Monitor(r.opt_duration("monitor.warn"), r.opt_duration("monitor.crit"))
        if r.given("monitor")
        else None,
        group=GroupSettings(
            consistency=Consistency(r.text("group.consistency")),
            max_pause=r.duration("group.max_pause"),
            on_member_failure=OnMemberFailure(r.text("group.on_member_failure")),
            fallback=Fallback(r.text("group.fallback")),
        )
        if r.given("group")
        else None,
    )


def parse_config(text: str, filename: str) -> Settings | list[LocatedError]:
    """snapshotd.yaml's text -> Settings, or every problem found.  Empty means defaults."""
    r = _read(text, filename, CONFIG_SCHEMA)
    if r is None:
        return Settings(config=filename, config_found=True)
    crossfield.check_config(r)
    if r.errors:
        return r.sorted_errors()
    return Settings(
        workers=r.count("workers"),
        operation_timeout=r.duration("operation_timeout"),
        metrics_address=r.opt_text("metrics_address"),
        policy_dir=naming.check_directory(r.text("policy_dir"), "policy_dir"),
        state_dir=naming.check_directory(r.text("state_dir"), "state_dir"),
        connect=tuple(dict.fromkeys(r.texts("connect"))),
        catalog=DatabaseSettings(
            r.text("catalog.url"),
            r.opt_text("catalog.password_file"),
            r.opt_text("catalog.host_id"),
        )
        if r.given("catalog")
        else None,
        config=filename,
        config_found=True,
    )


def check_set(policies: Iterable[Policy]) -> list[LocatedError]:
    """Problems between policy files: two files with the same policy name.

    Each file involved gets an error naming the others: policies that share a name
    would share (and prune) each other's snapshots, so none of them can be used.
    """
    by_name: dict[str, list[str]] = {}
    for policy in policies:
        by_name.setdefault(policy.name, []).append(policy.source)
    errors: list[LocatedError] = []
    for name, sources in by_name.items():
        if len(sources) < 2:
            continue
        for source in sources:
            others = ", ".join(s for s in sources if s != source) or source
            errors.append(
                LocatedError(
                    source,
                    1,
                    1,
                    "name",
                    f"policy name {name!r} is also used by {others}; policy names must be "
                    "unique (set a different name: or rename the file)",
                )
            )
    return errors
