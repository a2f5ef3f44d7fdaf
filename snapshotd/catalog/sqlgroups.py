"""The consistency groups' SQL (``group_members``, ``group_copies``, ``group_holds``),
one implementation for SQLite and PostgreSQL, run through catalog/sql.py's Database
like the rest of the catalog's statements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snapshotd.catalog.api import AlreadyRecorded, GroupMember, GroupRow, HoldRow, member_of

if TYPE_CHECKING:
    from snapshotd.catalog.sql import Database


class SQLGroupLog:
    """The ``group_members``, ``group_copies`` and ``group_holds`` tables."""

    def __init__(self, database: Database, host: str) -> None:
        self._database = database
        self._host = host

    def record(self, group: GroupRow) -> None:
        """All members or none (one transaction); AlreadyRecorded when a member's
        snapshot is in a group already."""
        # The refusal may come at the commit (PostgreSQL's pipeline sends the inserts
        # without waiting for them): the member is looked up again to name it.
        try:
            with self._database.transaction():
                for m in group.members:
                    self._database.execute(
                        """INSERT INTO group_members (policy, name, taken_at, partial,
                           pause_ms, uri, domain_uuid, domain_name, created_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (
                            group.policy, group.name, group.taken_at, int(group.partial),
                            group.pause_ms, m.uri, m.domain_uuid, m.domain_name, m.created_at,
                        ),
                    )  # fmt: skip
        except self._database.integrity_error as exc:
            taken = [m.domain_name for m in group.members if self._in_a_group(group.name, m)]
            raise AlreadyRecorded(
                f"snapshot {group.name!r} of {', '.join(map(repr, taken)) or 'a member'} "
                "is in a group already"
            ) from exc

    def _in_a_group(self, name: str, m: GroupMember) -> bool:
        return (
            self._database.execute(
                """SELECT 1 FROM group_members WHERE domain_uuid = ? AND name = ?
                   AND created_at = ?""",
                (m.domain_uuid, name, m.created_at),
            ).fetchone()
            is not None
        )

    def join(self, group: GroupRow) -> None:
        with self._database.transaction():  # an AlreadyRecorded rolls every member back
            for m in group.members:
                self._join(group, m)

    def _join(self, group: GroupRow, m: GroupMember) -> None:
        key = (m.domain_uuid, group.name, m.created_at)
        found = self._database.execute(
            """SELECT policy, taken_at, uri FROM group_members
               WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
            key,
        ).fetchone()
        if found is None:
            same = self._database.execute(
                """SELECT partial, pause_ms FROM group_members
                   WHERE policy = ? AND name = ? AND taken_at = ? LIMIT 1""",
                (group.policy, group.name, group.taken_at),
            ).fetchone()
            partial, pause = same if same is not None else (int(group.partial), group.pause_ms)
            self._database.execute(
                """INSERT INTO group_members (policy, name, taken_at, partial, pause_ms, uri,
                   domain_uuid, domain_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    group.policy, group.name, group.taken_at, partial, pause, m.uri,
                    m.domain_uuid, m.domain_name, m.created_at,
                ),
            )  # fmt: skip
            return
        policy, taken_at, uri = found
        if (policy, taken_at) != (group.policy, group.taken_at):
            raise AlreadyRecorded(
                f"snapshot {group.name!r} of {m.domain_name!r} is in group {policy!r} "
                f"taken at {taken_at} already"
            )
        if uri != m.uri:
            self._database.execute(
                """INSERT INTO group_copies (domain_uuid, name, created_at, uri, domain_name)
                   VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
                (*key, m.uri, m.domain_name),
            )

    def leave(self, uri: str, domain_uuid: str, name: str, created_at: int) -> None:
        key = (domain_uuid, name, created_at)
        with self._database.transaction():
            found = self._database.execute(
                """SELECT uri FROM group_members
                   WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
                key,
            ).fetchone()
            if found is None:
                return
            if found[0] != uri:
                self._database.execute(
                    """DELETE FROM group_copies WHERE domain_uuid = ? AND name = ?
                       AND created_at = ? AND uri = ?""",
                    (*key, uri),
                )
                return
            heir = self._database.execute(
                """SELECT uri, domain_name FROM group_copies WHERE domain_uuid = ? AND name = ?
                   AND created_at = ? ORDER BY uri LIMIT 1""",
                key,
            ).fetchone()
            if heir is None:
                self._database.execute(
                    """DELETE FROM group_members WHERE domain_uuid = ? AND name = ?
                       AND created_at = ?""",
                    key,
                )
                return
            self._database.execute(
                """UPDATE group_members SET uri = ?, domain_name = ?
                   WHERE domain_uuid = ? AND name = ? AND created_at = ?""",
                (*heir, *key),
            )
            self._database.execute(
                """DELETE FROM group_copies WHERE domain_uuid = ? AND name = ?
                   AND created_at = ? AND uri = ?""",
                (*key, heir[0]),
            )

    def _copies(self, policy: str | None) -> dict[tuple[str, str, int], list[GroupMember]]:
        """The live members' copies, by their group's (policy, name, taken_at)."""
        cur = self._database.execute(
            """SELECT g.policy, g.name, g.taken_at, c.uri, c.domain_uuid, c.domain_name,
                      c.created_at
               FROM group_copies c JOIN group_members g ON g.domain_uuid = c.domain_uuid
                    AND g.name = c.name AND g.created_at = c.created_at
               JOIN snapshots s ON s.domain_uuid = c.domain_uuid AND s.name = c.name
                    AND s.created_at = c.created_at AND s.deleted_at IS NULL
               WHERE g.policy = ? OR ?  -- one policy's groups, or (None) all
               ORDER BY c.domain_name, c.uri""",
            (policy, policy is None),
        )
        found: dict[tuple[str, str, int], list[GroupMember]] = {}
        for r in cur.fetchall():
            member = GroupMember(str(r[3]), str(r[4]), str(r[5]), int(r[6]))
            found.setdefault((str(r[0]), str(r[1]), int(r[2])), []).append(member)
        return found

    def all(self, policy: str | None = None) -> list[GroupRow]:
        # A group lives while one of its members' snapshot rows does.
        cur = self._database.execute(
            """SELECT g.policy, g.name, g.taken_at, g.partial, g.pause_ms, g.uri,
                      g.domain_uuid, g.domain_name, g.created_at,
                      s.id IS NULL OR s.deleted_at IS NOT NULL
               FROM group_members g LEFT JOIN snapshots s ON s.domain_uuid = g.domain_uuid
                    AND s.name = g.name AND s.created_at = g.created_at
               WHERE g.policy = ? OR ?  -- one policy's groups, or (None) all
               ORDER BY g.taken_at, g.policy, g.name, g.domain_name""",
            (policy, policy is None),
        )
        found: dict[tuple[str, str, int], list[Sequence[Any]]] = {}
        for r in cur.fetchall():
            found.setdefault((r[0], r[1], r[2]), []).append(r)
        copies = self._copies(policy)
        groups = []
        for (policy_, name, taken_at), found_rows in found.items():
            rows = [r for r in found_rows if not r[9]]  # the members still live
            if not rows:
                continue
            members = tuple(
                GroupMember(str(r[5]), str(r[6]), str(r[7]), int(str(r[8]))) for r in rows
            )
            pause = rows[0][4]
            groups.append(
                GroupRow(
                    policy_,
                    name,
                    taken_at,
                    members,
                    bool(rows[0][3]),
                    int(str(pause)) if pause is not None else None,
                    tuple(copies.get((policy_, name, taken_at), ())),
                )
            )
        return groups

    def of(self, domain_uuid: str, name: str, created_at: int) -> GroupRow | None:
        return member_of(self.all(), domain_uuid, name, created_at)

    def hold(self, row: HoldRow) -> None:
        # Durable before the member is suspended: a restart after kill -9 resumes it.
        with self._database.transaction():
            self._database.execute(
                """INSERT INTO group_holds (domain_uuid, uri, domain_name, policy, name, hold,
                   since, host_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (domain_uuid) DO UPDATE SET uri = excluded.uri,
                       domain_name = excluded.domain_name, policy = excluded.policy,
                       name = excluded.name, hold = excluded.hold, since = excluded.since,
                       host_id = excluded.host_id""",
                (
                    row.domain_uuid,
                    row.uri,
                    row.domain_name,
                    row.policy,
                    row.name,
                    row.hold,
                    row.since,
                    self._host,
                ),
            )

    def release(self, domain_uuid: str) -> None:
        with self._database.transaction(fsync=False):
            self._database.execute("DELETE FROM group_holds WHERE domain_uuid = ?", (domain_uuid,))

    def held(self) -> list[HoldRow]:
        cur = self._database.execute(
            """SELECT policy, name, uri, domain_uuid, domain_name, hold, since
               FROM group_holds WHERE host_id IS NULL OR host_id = ?
               ORDER BY since, domain_name""",
            (self._host,),
        )
        return [HoldRow(*r) for r in cur.fetchall()]
