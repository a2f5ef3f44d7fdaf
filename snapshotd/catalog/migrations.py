"""The catalog's schema, as numbered migrations, and the rule for opening one.

A catalog records its schema version (``meta.schema_version``).  Opening it applies,
in one transaction, every migration numbered above that version, in order, and records
the new version; a catalog made by a newer snapshotd (a version above ``LATEST``) is
refused, never read or written: an older snapshotd cannot know what the newer one's
rows mean.

Each migration is what one version added.  A new one goes at the end with the next
number; a released migration is never edited (catalogs out there have run it).  ``SQLITE``
holds SQLite's statements (catalog/sqlite.py), ``POSTGRES`` PostgreSQL's
(catalog/postgres.py), with the same numbers: a version means the same tables in both.

Versions 2 and 3 were first created by ``CREATE TABLE IF NOT EXISTS`` alone while the
recorded version stayed 1, so their statements must stay idempotent: a catalog of that
time records version 1 and may have their tables already.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapshotd.errors import SnapshotdError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    what: str  # one line: what this version added
    statements: tuple[str, ...]


class SchemaTooNew(SnapshotdError):
    """The catalog was written by a newer snapshotd."""


SQLITE: tuple[Migration, ...] = (
    Migration(
        1,
        "snapshots, the operations log and the runs of each policy and domain",
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS snapshots (
                id INTEGER PRIMARY KEY,
                uri TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at INTEGER NOT NULL,       -- libvirt's creationTime (epoch seconds)
                policy TEXT,                       -- NULL: taken by hand with `snapshotd take`
                parent TEXT,
                xml TEXT NOT NULL,                 -- as libvirt returned it
                files TEXT NOT NULL DEFAULT '[]',  -- JSON list of the files it created
                libvirt_metadata INTEGER NOT NULL, -- 0: NO_METADATA, only the catalog knows it
                deleted_at INTEGER,                -- set when snapshotd deleted it
                UNIQUE (domain_uuid, name, created_at)
            )""",
            "CREATE INDEX IF NOT EXISTS snapshots_by_policy ON snapshots (policy, domain_uuid)",
            """CREATE TABLE IF NOT EXISTS operations (
                id INTEGER PRIMARY KEY,
                at INTEGER NOT NULL,
                uri TEXT NOT NULL,
                policy TEXT,
                domain_uuid TEXT,
                domain_name TEXT,
                operation TEXT NOT NULL,           -- create | delete | skip | ...
                snapshot TEXT,
                outcome TEXT NOT NULL,             -- ok | failed | skipped
                message TEXT,
                duration_ms INTEGER
            )""",
            """CREATE TABLE IF NOT EXISTS runs (
                policy TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                uri TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                last_slot INTEGER,                 -- the instant the last good run served
                last_success INTEGER,              -- when it finished
                last_error TEXT,
                last_error_at INTEGER,
                in_progress TEXT,                  -- the snapshot being taken now, if any
                in_progress_slot INTEGER,
                in_progress_since INTEGER,
                PRIMARY KEY (policy, domain_uuid)
            )""",
        ),
    ),
    Migration(
        2,
        "consistency groups: their member snapshots, and the members held still now",
        (
            """CREATE TABLE IF NOT EXISTS group_members (
                policy TEXT NOT NULL,
                name TEXT NOT NULL,                -- the snapshot name the members share
                taken_at INTEGER NOT NULL,         -- the group run's instant
                partial INTEGER NOT NULL,          -- 1: kept with fewer members than it had
                pause_ms INTEGER,                  -- first hold to last release
                uri TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                created_at INTEGER NOT NULL,       -- the member snapshot's creationTime
                PRIMARY KEY (domain_uuid, name, created_at)
            )""",
            """CREATE TABLE IF NOT EXISTS group_holds (
                domain_uuid TEXT PRIMARY KEY,      -- a member suspended or frozen now
                uri TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                policy TEXT NOT NULL,
                name TEXT NOT NULL,
                hold TEXT NOT NULL,                -- suspend | freeze
                since INTEGER NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "a group member's snapshot metadata on other connections (replicate, import)",
        (
            """CREATE TABLE IF NOT EXISTS group_copies (
                domain_uuid TEXT NOT NULL,         -- with name and created_at: its member
                name TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                uri TEXT NOT NULL,                 -- the other connection
                domain_name TEXT NOT NULL,         -- the domain's name there
                PRIMARY KEY (domain_uuid, name, created_at, uri)
            )""",
        ),
    ),
    Migration(
        4,
        "fleet: hosts of runs, holds and snapshots, slots claimed, hosts, migrations",
        (
            "ALTER TABLE runs ADD COLUMN host_id TEXT",  # NULL: a run of before version 4
            "ALTER TABLE snapshots ADD COLUMN host_id TEXT",  # the host that recorded it
            "ALTER TABLE group_holds ADD COLUMN host_id TEXT",
            """CREATE TABLE claims (
                policy TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                slot INTEGER NOT NULL,             -- the scheduled instant
                host_id TEXT NOT NULL,             -- the host that takes it
                claimed_at INTEGER NOT NULL,
                PRIMARY KEY (policy, domain_uuid, slot)
            )""",
            """CREATE TABLE hosts (
                host_id TEXT PRIMARY KEY,
                seen_at INTEGER NOT NULL,          -- its daemon's last contact
                pid INTEGER,
                version TEXT,
                uris TEXT NOT NULL DEFAULT '[]'    -- JSON list, without secrets
            )""",
            """CREATE TABLE moves (
                domain_uuid TEXT PRIMARY KEY,      -- a `snapshotd migrate` under way
                domain_name TEXT NOT NULL,
                source_uri TEXT NOT NULL,
                target_uri TEXT NOT NULL,
                step TEXT NOT NULL,
                snapshots TEXT NOT NULL,           -- JSON [[name, secure XML], ...]
                current TEXT,
                since INTEGER NOT NULL,
                host_id TEXT
            )""",
        ),
    ),
    Migration(
        5,
        "fleet: the host whose libvirt holds each snapshot's metadata",
        (
            "ALTER TABLE snapshots ADD COLUMN held_by TEXT",  # NULL: no libvirt holds it
            "UPDATE snapshots SET held_by = host_id WHERE libvirt_metadata = 1",
        ),
    ),
)

# PostgreSQL's (catalog/postgres.py): the same tables and numbers.  Instants are BIGINT
# epoch seconds, as in SQLite, and flags INTEGER 0/1, so one set of statements
# (catalog/sql.py) reads and writes both.  Each table is owned by the role that ran the
# migration (the snapshotd role) and nobody else gets a privilege on it: the snapshots'
# XML is readable by that role alone (docs/fleet.md, the grants).
POSTGRES: tuple[Migration, ...] = (
    Migration(
        1,
        SQLITE[0].what,
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS snapshots (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                uri TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                policy TEXT,
                parent TEXT,
                xml TEXT NOT NULL,
                files TEXT NOT NULL DEFAULT '[]',
                libvirt_metadata INTEGER NOT NULL,
                deleted_at BIGINT,
                UNIQUE (domain_uuid, name, created_at)
            )""",
            "CREATE INDEX IF NOT EXISTS snapshots_by_policy ON snapshots (policy, domain_uuid)",
            """CREATE TABLE IF NOT EXISTS operations (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                at BIGINT NOT NULL,
                uri TEXT NOT NULL,
                policy TEXT,
                domain_uuid TEXT,
                domain_name TEXT,
                operation TEXT NOT NULL,
                snapshot TEXT,
                outcome TEXT NOT NULL,
                message TEXT,
                duration_ms BIGINT
            )""",
            """CREATE TABLE IF NOT EXISTS runs (
                policy TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                uri TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                last_slot BIGINT,
                last_success BIGINT,
                last_error TEXT,
                last_error_at BIGINT,
                in_progress TEXT,
                in_progress_slot BIGINT,
                in_progress_since BIGINT,
                PRIMARY KEY (policy, domain_uuid)
            )""",
        ),
    ),
    Migration(
        2,
        SQLITE[1].what,
        (
            """CREATE TABLE IF NOT EXISTS group_members (
                policy TEXT NOT NULL,
                name TEXT NOT NULL,
                taken_at BIGINT NOT NULL,
                partial INTEGER NOT NULL,
                pause_ms BIGINT,
                uri TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (domain_uuid, name, created_at)
            )""",
            """CREATE TABLE IF NOT EXISTS group_holds (
                domain_uuid TEXT PRIMARY KEY,
                uri TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                policy TEXT NOT NULL,
                name TEXT NOT NULL,
                hold TEXT NOT NULL,
                since BIGINT NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        SQLITE[2].what,
        (
            """CREATE TABLE IF NOT EXISTS group_copies (
                domain_uuid TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                uri TEXT NOT NULL,
                domain_name TEXT NOT NULL,
                PRIMARY KEY (domain_uuid, name, created_at, uri)
            )""",
        ),
    ),
    Migration(
        4,
        SQLITE[3].what,
        (
            "ALTER TABLE runs ADD COLUMN host_id TEXT",  # NULL: a run of before version 4
            "ALTER TABLE snapshots ADD COLUMN host_id TEXT",  # the host that recorded it
            "ALTER TABLE group_holds ADD COLUMN host_id TEXT",
            """CREATE TABLE claims (
                policy TEXT NOT NULL,
                domain_uuid TEXT NOT NULL,
                slot BIGINT NOT NULL,
                host_id TEXT NOT NULL,
                claimed_at BIGINT NOT NULL,
                PRIMARY KEY (policy, domain_uuid, slot)
            )""",
            """CREATE TABLE hosts (
                host_id TEXT PRIMARY KEY,
                seen_at BIGINT NOT NULL,
                pid INTEGER,
                version TEXT,
                uris TEXT NOT NULL DEFAULT '[]'
            )""",
            """CREATE TABLE moves (
                domain_uuid TEXT PRIMARY KEY,
                domain_name TEXT NOT NULL,
                source_uri TEXT NOT NULL,
                target_uri TEXT NOT NULL,
                step TEXT NOT NULL,
                snapshots TEXT NOT NULL,
                current TEXT,
                since BIGINT NOT NULL,
                host_id TEXT
            )""",
        ),
    ),
    Migration(
        5,
        SQLITE[4].what,
        (
            "ALTER TABLE snapshots ADD COLUMN held_by TEXT",
            "UPDATE snapshots SET held_by = host_id WHERE libvirt_metadata = 1",
        ),
    ),
)


LATEST = SQLITE[-1].version


def pending(current: int, migrations: tuple[Migration, ...], *, where: str) -> list[Migration]:
    """The migrations a catalog at version ``current`` needs, in order; SchemaTooNew
    for a catalog newer than ``migrations`` know."""
    latest = migrations[-1].version
    if current > latest:
        raise SchemaTooNew(
            f"{where}: the catalog's schema is version {current}, newer than this "
            f"snapshotd knows (up to {latest}): a newer snapshotd wrote it.  Run that "
            "snapshotd (or a newer one), or point --state-dir (state_dir:) at another "
            "directory; this one is left as it is"
        )
    return [m for m in migrations if m.version > current]


def check_order(migrations: tuple[Migration, ...]) -> None:
    """Numbered 1, 2, 3, ... without a gap (a test holds every list to it)."""
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order, not {numbers}")
