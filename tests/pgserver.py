"""The test bed's PostgreSQL server (scripts/postgres.sh), and a database per test.

``server()`` starts the server when it is not running (once per test process; the
script is safe to run from several workers at once).  ``fresh_database()`` makes a
database of its own for one test, owned by the snapshotd role, and drops it afterwards,
pass or fail; its name starts with ``snapshotd_t_``.  Only databases a test made are
ever dropped.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from snapshotd.config.settings import DatabaseSettings

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


def _script(*args: str) -> str:
    done = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/postgres.sh {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Server:
    url: str  # the snapshotd role's own database
    admin: str  # the role that makes and drops the tests' databases
    password_file: str

    @property
    def password(self) -> str:
        return Path(self.password_file).read_text().strip()

    def database_url(self, name: str) -> str:
        return self.url.rpartition("/")[0] + "/" + name

    def stop(self) -> None:
        _script("stop")

    def start(self) -> None:
        _script("start")


@functools.cache
def server() -> Server:
    """The running server (started when it is not)."""
    _script("up")
    return Server(_script("url"), _script("admin"), _script("password"))


def admin_connection(srv: Server) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(srv.admin, password=srv.password, autocommit=True)


@contextlib.contextmanager
def fresh_database(**settings: str) -> Iterator[DatabaseSettings]:
    """A new, empty database for one test, as snapshotd.yaml's catalog would name it."""
    srv = server()
    name = f"snapshotd_t_{secrets.token_hex(6)}"
    with admin_connection(srv) as admin:
        admin.execute(f"CREATE DATABASE {name} OWNER snapshotd")  # name: hex only
    try:
        yield DatabaseSettings(
            url=srv.database_url(name), password_file=srv.password_file, **settings
        )
    finally:
        with admin_connection(srv) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
