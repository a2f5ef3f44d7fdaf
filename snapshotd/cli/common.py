"""What every family of verbs needs from the parsed arguments: the exit codes, the
clock, the connection URI, the settings, the hypervisor with the catalog, a policy by
name, an ad hoc snapshot request, and JSON on the output."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from snapshotd.adapters.configfiles import load_settings
from snapshotd.adapters.hypervisor import Hypervisor
from snapshotd.catalog import Catalog, open_catalog
from snapshotd.cli.parser import SNAPSHOT_OPTIONS
from snapshotd.config.settings import DEFAULT_URI, Overrides, Settings
from snapshotd.core.model import Request, SnapshotRequest
from snapshotd.core.policy import Policy
from snapshotd.errors import RequestError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_NOT_RUNNING = 3  # as LSB's and systemctl's status


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def uri(args: argparse.Namespace, settings: Settings | None = None) -> str:
    """--connect; else the config file's first URI, when there is a config file; else
    $LIBVIRT_DEFAULT_URI, as virsh takes it; else qemu:///system.  Without ``settings``
    the config is read here for it, by the verbs that take --config (a config with
    errors gives the default: the verbs that need the rest of it refuse it themselves)."""
    if args.connect:
        return str(args.connect)
    if settings is None and hasattr(args, "config"):  # a namespace without it: none read
        settings = read_settings(args, policies=False)
    if settings is not None and settings.config_found and not settings.errors:
        return settings.uri
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def read_settings(args: argparse.Namespace, *, policies: bool) -> Settings:
    """Config, policy directory and state directory, with command-line overrides;
    errors are in the result, not raised."""
    overrides = Overrides(config=args.config, policy_dir=args.policy_dir, state_dir=args.state_dir)
    return load_settings(overrides, load_policies=policies)


def settings(args: argparse.Namespace, *, policies: bool = True) -> Settings:
    """The same, refusing a configuration with errors."""
    loaded = read_settings(args, policies=policies)
    if loaded.errors:
        raise RequestError(
            "the configuration is not valid (run `snapshotd check` for details):\n  "
            + "\n  ".join(str(e) for e in loaded.errors)
        )
    return loaded


@contextmanager
def connected(args: argparse.Namespace, loaded: Settings) -> Iterator[tuple[Hypervisor, Catalog]]:
    """The hypervisor at uri(args, loaded) and the settings' catalog (its database, or the
    one in the state directory), both closed on the way out."""
    with (
        Hypervisor.open(uri(args, loaded)) as hv,
        open_catalog(loaded.state_dir, database=loaded.catalog) as catalog,
    ):
        yield hv, catalog


def policy_named(loaded: Settings, name: str) -> Policy:
    for policy in loaded.policies:
        if policy.name == name:
            return policy
    known = ", ".join(sorted(p.name for p in loaded.policies)) or "none"
    raise RequestError(f"no policy is named {name!r} in {loaded.policy_dir} (policies: {known})")


def chosen_policies(args: argparse.Namespace, loaded: Settings) -> list[Policy]:
    """--policy's policy, else every policy."""
    return [policy_named(loaded, args.policy)] if args.policy else list(loaded.policies)


def adhoc_request(args: argparse.Namespace) -> SnapshotRequest:
    """The snapshot options of plan and take (without --policy) as a request."""
    return SnapshotRequest(
        name=args.name or "snapshotd-" + now().strftime("%Y%m%dT%H%M%SZ"),
        memory=args.memory or Request.OMIT,
        disks=args.disks or Request.OMIT,
        disk=tuple(args.disk),
        disk_only=args.disk_only,
        quiesce=args.quiesce,
        live=args.live,
        atomic=not args.no_atomic,
        reuse_external=args.reuse_external,
        description=args.description,
        directory=args.directory,
    )


def refuse_snapshot_options(args: argparse.Namespace) -> None:
    given = [
        "--" + name.replace("_", "-")
        for name in SNAPSHOT_OPTIONS
        if getattr(args, name) not in (None, False, [])
    ]
    if given:
        raise RequestError(
            f"{', '.join(given)} cannot be combined with --policy: the policy file says what "
            "its snapshots look like"
        )


def dump(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")
