"""The daemon's settings, in one typed object, and every default in one place.

``Settings`` is what snapshotd.yaml says (or the built-in defaults), with the command
line's ``Overrides`` applied and, when loaded, the policies of the policy directory.
The daemon and every CLI verb read their settings through it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapshotd.config.yamlreader import LocatedError
    from snapshotd.core.policy import Policy

DEFAULT_URI = "qemu:///system"
DEFAULT_CONFIG = "/etc/snapshotd/snapshotd.yaml"
DEFAULT_POLICY_DIR = "/etc/snapshotd/policies.d"
DEFAULT_STATE_DIR = "/var/lib/snapshotd"
DEFAULT_CONNECT = (DEFAULT_URI,)
DEFAULT_WORKERS = 4
DEFAULT_OPERATION_TIMEOUT = dt.timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line says; each unset field leaves snapshotd.yaml's value."""

    config: str | None = None  # a file the user named: it must exist
    policy_dir: str | None = None
    state_dir: str | None = None
    connect: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """snapshotd.yaml's ``catalog:``: a catalog on PostgreSQL, shared by a fleet."""

    url: str  # postgresql://USER@HOST[:PORT]/DATABASE[?PARAMS], no password in it
    password_file: str | None = None  # None: libpq's own means (~/.pgpass, a socket)
    host_id: str | None = None  # None: this host's name


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon and the CLI read before they start."""

    policy_dir: str = DEFAULT_POLICY_DIR
    state_dir: str = DEFAULT_STATE_DIR
    connect: tuple[str, ...] = DEFAULT_CONNECT
    workers: int = DEFAULT_WORKERS
    operation_timeout: dt.timedelta = DEFAULT_OPERATION_TIMEOUT
    metrics_address: str | None = None
    catalog: DatabaseSettings | None = None  # None: SQLite in state_dir
    config: str = DEFAULT_CONFIG  # the snapshotd.yaml asked for
    config_found: bool = False  # False: it does not exist, the defaults apply
    policies: tuple[Policy, ...] = ()
    errors: tuple[LocatedError, ...] = ()
    ignored: tuple[str, ...] = ()  # the policy directory's other entries

    @property
    def config_source(self) -> str:
        """The file read, or a note that the built-in defaults apply."""
        return self.config if self.config_found else f"{self.config} (absent: built-in defaults)"

    @property
    def uri(self) -> str:
        """The connection a CLI verb uses when the command line names none."""
        return self.connect[0] if self.connect else DEFAULT_URI
