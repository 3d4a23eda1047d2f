"""The SQLite file: opening it, recognising it, migrating it, and reading records from it.

A journal is recognised by its ``meta`` table (``application`` = ``siliconflow-video
journal``) and versioned by ``PRAGMA user_version``. Each migration takes the file from one
version to the next; all the pending ones run in one ``BEGIN IMMEDIATE`` transaction with
the version bump, so a crash mid-migration leaves the old schema and every row, and two
processes opening a new file at once migrate it once.

Nothing is written to a file before it is known to be a journal (or empty): someone else's
database is reported, never converted to WAL or given our tables.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from typing import Any, Literal

from .._exceptions import (
    JournalBusyError,
    JournalCorruptError,
    JournalError,
    JournalForeignError,
    JournalPathError,
    JournalReadOnlyError,
    JournalVersionError,
)
from .._version import __version__
from ._sql import Q

__all__ = ["APPLICATION", "SCHEMA_VERSION", "connect", "execute", "translate"]

APPLICATION = "siliconflow-video journal"

_HEADER = b"SQLite format 3\x00"

#: MIGRATIONS[n] takes a journal from version n - 1 to n. Never edit a released one.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE jobs (
        job_key        TEXT PRIMARY KEY,
        request_id     TEXT UNIQUE,
        state          TEXT NOT NULL CHECK (state IN ('submitting', 'submit_unknown',
                           'waiting', 'downloading', 'done', 'failed')),
        dest           TEXT NOT NULL,
        model          TEXT,
        payload_json   TEXT,
        submit_key     TEXT UNIQUE,
        remote_status  TEXT,
        remote_reason  TEXT,
        error_type     TEXT,
        error_message  TEXT,
        poll_count     INTEGER NOT NULL DEFAULT 0,
        inference_s    REAL,
        created_at     REAL NOT NULL,
        submitted_at   REAL,
        updated_at     REAL NOT NULL,
        last_polled_at REAL,
        finished_at    REAL,
        -- Only a job whose POST has not been answered may lack a requestId.
        CHECK (request_id IS NOT NULL OR state IN ('submitting', 'submit_unknown', 'failed'))
    );
    CREATE INDEX jobs_unfinished ON jobs (state) WHERE state NOT IN ('done', 'failed');

    CREATE TABLE videos (
        job_key       TEXT NOT NULL REFERENCES jobs (job_key) ON DELETE CASCADE,
        idx           INTEGER NOT NULL CHECK (idx >= 0),
        state         TEXT NOT NULL CHECK (state IN ('pending', 'downloading', 'done',
                          'failed')),
        url           TEXT,
        url_seen_at   REAL,
        size          INTEGER,
        etag          TEXT,
        last_modified TEXT,
        bytes_done    INTEGER NOT NULL DEFAULT 0,
        path          TEXT,
        sha256        TEXT,
        error_type    TEXT,
        error_message TEXT,
        updated_at    REAL NOT NULL,
        finished_at   REAL,
        PRIMARY KEY (job_key, idx),
        CHECK (state != 'done' OR path IS NOT NULL)
    ) WITHOUT ROWID;

    -- One row per open journal that holds (or held) leases: how to tell it is gone.
    CREATE TABLE owners (
        owner      TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        machine    TEXT,
        pid        INTEGER NOT NULL,
        started_at REAL NOT NULL,
        seen_at    REAL NOT NULL
    ) WITHOUT ROWID;

    -- idx -1 is the job itself; 0.. its videos.
    CREATE TABLE leases (
        job_key    TEXT NOT NULL REFERENCES jobs (job_key) ON DELETE CASCADE,
        idx        INTEGER NOT NULL CHECK (idx >= -1),
        owner      TEXT NOT NULL,
        until      REAL NOT NULL,
        claimed_at REAL NOT NULL,
        PRIMARY KEY (job_key, idx)
    ) WITHOUT ROWID;
    CREATE INDEX leases_owner ON leases (owner);
    """,
}

SCHEMA_VERSION = max(MIGRATIONS)

Synchronous = Literal["normal", "full"]


def translate(exc: sqlite3.Error, path: str) -> JournalError:
    """The typed error for an sqlite3 failure on the journal at ``path``."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    where = f"journal {path!r}"
    error: JournalError
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "malformed" in text:
        error = JournalCorruptError(
            f"{where} is damaged or not an SQLite database ({text}); move it aside and keep "
            "it: its rows may still be recoverable with `sqlite3 FILE .recover`",
            path=path,
        )
    elif name.startswith("SQLITE_READONLY") or "readonly" in text:
        error = JournalReadOnlyError(
            f"{where} cannot be written ({text}); check the file's and its folder's "
            "permissions, or open it read-only",
            path=path,
        )
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        error = JournalBusyError(
            f"{where} stayed locked by another process ({text}); is a long transaction open on it?",
            path=path,
        )
    elif name.startswith("SQLITE_CANTOPEN"):
        error = JournalPathError(f"{where} cannot be opened ({text})", path=path)
    elif name == "SQLITE_FULL":
        error = JournalError(f"{where}: the disk is full; the last change was not made", path=path)
    else:
        error = JournalError(f"{where}: {text}", path=path)
    error.__cause__ = exc
    return error


def _check_location(path: str, *, read_only: bool) -> bool:
    """Whether the file exists; a typed error for a path that cannot hold a journal."""
    if os.path.isdir(path):
        raise JournalPathError(f"journal path {path!r} is a folder; name a file in it", path=path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise JournalPathError(
            f"the folder of journal {path!r} does not exist; create {folder!r} first",
            path=path,
        )
    exists = os.path.exists(path)
    if not exists and read_only:
        raise JournalPathError(f"there is no journal at {path!r}", path=path)
    if exists:
        try:
            with open(path, "rb") as f:
                head = f.read(len(_HEADER))
        except OSError as exc:
            raise JournalPathError(
                f"journal {path!r} cannot be read: {exc.strerror or exc}", path=path
            ) from exc
        if head and head != _HEADER:
            raise JournalCorruptError(
                f"journal {path!r} is not an SQLite database (it starts {head[:8]!r}); "
                "is it the right file?",
                path=path,
            )
    return exists


def _create(path: str) -> None:
    # Created here, not by SQLite, so that it is 0600 from its first byte: the videos'
    # signed URLs are in it. SQLite gives its -wal and -shm files the same mode.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process just created it; it chose the same mode
    except OSError as exc:
        raise JournalPathError(
            f"cannot create journal {path!r}: {exc.strerror or exc}", path=path
        ) from exc
    os.close(fd)


def connect(
    path: str,
    *,
    read_only: bool,
    busy_timeout: float,
    synchronous: Synchronous,
) -> tuple[sqlite3.Connection, bool]:
    """An open, recognised, migrated connection and whether it is read-only (asked for,
    or because the file cannot be written)."""
    exists = _check_location(path, read_only=read_only)
    if exists and not read_only and not os.access(path, os.W_OK):
        read_only = True
    if not exists:
        _create(path)
    target = f"file:{_uri_path(path)}?mode=ro" if read_only else path
    try:
        conn = sqlite3.connect(
            target,
            uri=read_only,
            timeout=busy_timeout,
            isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise translate(exc, path) from None
    try:
        conn.row_factory = sqlite3.Row
        _prepare_when_free(conn, path, busy_timeout, read_only=read_only, synchronous=synchronous)
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, path) from None
    except BaseException:
        conn.close()
        raise
    return conn, read_only


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def _recognise(conn: sqlite3.Connection, path: str) -> int:
    """The journal's schema version (0: an empty database, ours to set up)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = _tables(conn)
    if not tables and version == 0:
        return 0
    application = None
    if "meta" in tables:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
            application = row[0] if row else None
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_ERROR":
                raise  # damage or locking, not a "meta" table of another shape
    if application != APPLICATION:
        listed = ", ".join(sorted(tables)[:5]) or "none"
        raise JournalForeignError(
            f"{path!r} is an SQLite database of some other application (tables: {listed}); "
            "it is left untouched: give the journal its own file",
            path=path,
        )
    if version > SCHEMA_VERSION:
        raise JournalVersionError(
            f"journal {path!r} has schema version {version}, newer than this "
            f"siliconflow-video knows ({SCHEMA_VERSION}); upgrade the package",
            path=path,
            found=version,
            supported=SCHEMA_VERSION,
        )
    return version


def _prepare_when_free(
    conn: sqlite3.Connection,
    path: str,
    busy_timeout: float,
    *,
    read_only: bool,
    synchronous: Synchronous,
) -> None:
    """:func:`_prepare`, tried again while another process holds the file for the same
    first steps. Two processes opening a new journal at once race through its switch to
    WAL and its creation, and SQLite answers some of those steps "database is locked" at
    once, without its busy handler; each step is safe to take again."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            _prepare(conn, path, read_only=read_only, synchronous=synchronous)
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


def _prepare(
    conn: sqlite3.Connection, path: str, *, read_only: bool, synchronous: Synchronous
) -> None:
    version = _recognise(conn, path)
    if read_only:
        if version == 0:
            raise JournalPathError(f"{path!r} is empty: not a journal yet", path=path)
        if version < SCHEMA_VERSION:
            raise JournalReadOnlyError(
                f"journal {path!r} has schema version {version} and needs migrating to "
                f"{SCHEMA_VERSION}, which a read-only open cannot do; open it writable once",
                path=path,
            )
        conn.execute("PRAGMA query_only = ON")
        return
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(
            f"journal {path!r} cannot use WAL mode (got {mode!r}); is it on a network "
            "file system? Keep the journal on a local disk",
            path=path,
        )
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    if version < SCHEMA_VERSION:
        _migrate(conn, path)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _recognise(conn, path)  # again, under the lock: another process may
        for target in range(version + 1, SCHEMA_VERSION + 1):  # have migrated meanwhile
            for statement in _statements(MIGRATIONS[target]):
                conn.execute(statement)
            if target == 1:
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("created_by", _package_version())],
                )
            conn.execute(f"PRAGMA user_version = {target}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterable[str]:
    # executescript() would COMMIT first; statements one by one stay in our transaction.
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise AssertionError(f"incomplete migration statement: {buffer!r}")


def _package_version() -> str:
    return f"siliconflow-video {__version__}"


# -- running statements ----------------------------------------------------------------------


def execute(conn: sqlite3.Connection, path: str, query: Q) -> Any:
    """Run one statement of a step (see ``_sql``); an sqlite3 error as a typed one."""
    try:
        if query.fetch == "status":
            return conn.in_transaction
        if query.fetch == "pause":
            return None
        if query.fetch == "many":
            conn.executemany(query.sql, query.params)
            return None
        cursor = conn.execute(query.sql, query.params)
        if query.fetch == "all":
            return cursor.fetchall()
        if query.fetch == "one":
            return cursor.fetchone()
        return cursor.rowcount
    except sqlite3.Error as exc:
        raise translate(exc, path) from None
