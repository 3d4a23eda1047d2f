"""A real PostgreSQL for the tests: a throw-away cluster of Debian's ``postgresql`` binaries.

``initdb`` and ``pg_ctl`` (from ``/usr/lib/postgresql/*/bin``) run as the ``postgres`` user
when the tests run as root (PostgreSQL refuses root), on a free loopback port, with data
and socket in a temp folder that is removed at the end. ``fsync=off``: a test cluster need
not survive a power cut (a crashed server still keeps every commit). Every test module
gets its own role (with a password: the journal must never show it) and database; each
test, a fresh schema of its own in it (named by the URL's ``options=-csearch_path=...``,
as a deployment may do): a database costs half a second to create, a schema a millisecond.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) are missing: "
    "`apt-get install postgresql` (Debian/Ubuntu); .ci/run installs it"
)
#: The password of every test role: a test asserts it never appears anywhere.
PASSWORD = "pg-Secret-7f3Kq9"


def bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``; the test fails (never skips) without it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    pytest.fail(INSTALL_HINT, pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster: ``url(db)`` for the journal, ``admin(sql)`` as the superuser."""

    bin: Path
    folder: Path
    port: int
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _as_postgres(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), *args),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start_command(self) -> list[str]:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c max_connections=200 "
            # A process crash (stop -m immediate) loses no commit, an OS crash may: what
            # a test cluster needs. synchronous_commit stays on: a commit is acknowledged
            # only once its WAL is written, which the restart test relies on.
            "-c fsync=off -c full_page_writes=off"
        )
        return [
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ]

    def start(self) -> None:
        subprocess.run(
            self._as_postgres(*self.start_command()),
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=90,
        )

    def stop(self) -> None:
        """Stop the server at once (every connection dropped), until ``start``."""
        self.pg_ctl("stop", "-m", "immediate", "-w")

    def restart(self) -> None:
        """Stop the server at once (every connection dropped) and start it again."""
        self.pg_ctl("stop", "-m", "immediate", "-w")
        self.start()

    def admin(self, sql: str) -> None:
        """Run ``sql`` as the superuser, over the cluster's Unix socket."""
        import psycopg

        with psycopg.connect(
            host=str(self.folder),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def new_database(self, password: str = PASSWORD) -> tuple[str, str]:
        """A fresh role (with ``password``) owning a fresh database: (role, database)."""
        with self._lock:
            n = next(self._names)
        role, db = f"journal_user_{n}", f"journal_{n}"
        quoted = password.replace("'", "''")
        self.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{quoted}'")
        self.admin(f"CREATE DATABASE {db} OWNER {role}")
        return role, db

    def new_schema(self, role: str, db: str) -> str:
        """A fresh schema owned by ``role`` in ``db``: its name."""
        import psycopg

        with self._lock:
            name = f"test_{next(self._names)}"
        with psycopg.connect(
            host=str(self.folder), port=self.port, user="postgres", dbname=db, autocommit=True
        ) as conn:
            conn.execute(f"CREATE SCHEMA {name} AUTHORIZATION {role}")
        return name

    def url(self, role: str, db: str, *, schema: str | None = None, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        options = f"?options=-csearch_path%3D{schema}" if schema else ""
        return f"postgresql://{role}{secret}@127.0.0.1:{self.port}/{db}{options}"


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A fresh cluster for the duration of the block; stopped and removed after."""
    binaries = bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="sfv-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    cluster = Cluster(binaries, folder, free_port())
    try:
        subprocess.run(
            cluster._as_postgres(
                str(binaries / "initdb"),
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(folder, ignore_errors=True)


class _Shared:
    """One cluster per test process, whichever modules import the fixture: each module
    that imports it has its own session fixture, and the last one torn down stops it."""

    stack = contextlib.ExitStack()
    cluster: Cluster | None = None
    users = 0


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The session's cluster, started on first use."""
    if _Shared.cluster is None:
        _Shared.cluster = _Shared.stack.enter_context(running_cluster())
    _Shared.users += 1
    try:
        yield _Shared.cluster
    finally:
        _Shared.users -= 1
        if not _Shared.users:
            _Shared.cluster = None
            _Shared.stack.close()


@pytest.fixture(scope="module")
def pg_database(postgres: Cluster) -> tuple[str, str]:
    """A role and a database of this test module's own."""
    return postgres.new_database()


@pytest.fixture
def pg_url(postgres: Cluster, pg_database: tuple[str, str]) -> str:
    """The URL (with password) of a fresh, empty schema of this test's own."""
    role, db = pg_database
    return postgres.url(role, db, schema=postgres.new_schema(role, db))
