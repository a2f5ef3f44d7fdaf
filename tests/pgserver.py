"""The test bed's PostgreSQL server (scripts/postgres.sh), and a database per test.

``server()`` starts the common server when it is not running (once per test process;
the script is safe to run from several workers at once); a test that stops and starts
a server uses a ``private_server()`` of its own, never the common one.  ``fresh_database()`` makes a
database of its own for one test, owned by the snapshotd role, and drops it afterwards,
pass or fail; its name starts with ``snapshotd_t_``.  Only databases a test made are
ever dropped.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from snapshotd.config.settings import DatabaseSettings

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


def _script(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/postgres.sh {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Server:
    url: str  # the snapshotd role's own database
    admin: str  # the role that makes and drops the tests' databases
    password_file: str
    env: dict[str, str] | None = None  # a private server's (scripts/postgres.sh's variables)

    @property
    def password(self) -> str:
        return Path(self.password_file).read_text().strip()

    def database_url(self, name: str) -> str:
        return self.url.rpartition("/")[0] + "/" + name

    def stop(self) -> None:
        """Stop the server: only a private one (others' tests share the common one)."""
        if self.env is None:
            raise AssertionError("stop only a private_server(): other tests use this one")
        _script("stop", env=self.env)

    def start(self) -> None:
        _script("start", env=self.env)


@contextlib.contextmanager
def private_server() -> Iterator[Server]:
    """A server of the test's own (in /var/tmp, which the postgres user can reach), on a
    free port, for a test that stops and starts it; removed afterwards, pass or fail."""
    directory = Path(tempfile.mkdtemp(prefix="snapshotd-test-pg-", dir="/var/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SNAPSHOTD_TEST_PG_DIR": str(directory), "SNAPSHOTD_TEST_PG_PORT": str(port)}
    try:
        _script("up", env=env)
        yield Server(
            _script("url", env=env),
            _script("admin", env=env),
            _script("password", env=env),
            env,
        )
    finally:
        _script("down", env=env)
        Path(f"{directory}.lock").unlink(missing_ok=True)


@functools.cache
def server() -> Server:
    """The running server (started when it is not)."""
    _script("up")
    return Server(_script("url"), _script("admin"), _script("password"))


def admin_connection(srv: Server) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(srv.admin, password=srv.password, autocommit=True)


@contextlib.contextmanager
def fresh_database(srv: Server | None = None, **settings: str) -> Iterator[DatabaseSettings]:
    """A new, empty database for one test (on ``srv``, else the common server), as
    snapshotd.yaml's catalog would name it."""
    srv = srv or server()
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
