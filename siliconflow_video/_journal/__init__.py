"""The journal: every job accepted or submitted, and each of its videos, on disk.

::

    async with open_journal("jobs.db") as journal:
        jobs = await journal.accept(request_ids, dest="videos/")

``open_journal`` takes a path (or ``sqlite:///path``): SQLite, for one machine; or a
``postgresql://USER@HOST:PORT/DB`` URL (the ``postgres`` extra): PostgreSQL, shared by
processes on many machines. ``read_jobs`` reads a journal from a script without an event
loop and without writing anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from .._exceptions import JournalUnavailableError
from ._base import (
    ErrorInfo,
    JobRecord,
    JobState,
    Journal,
    Lease,
    SubmitIntent,
    VideoRecord,
    VideoState,
    strip_query,
    submit_key_for,
)
from ._pgschema import Target, connect_error, parse_url, shown_url
from ._record import JournalRecord, Recorder
from ._rows import select_jobs
from ._schema import SCHEMA_VERSION, Synchronous, connect, execute
from ._sql import POSTGRES, SQLITE, Q, Tx, drive
from ._sqlite import SQLiteJournal

__all__ = [
    "SCHEMA_VERSION",
    "ErrorInfo",
    "JobRecord",
    "JobState",
    "Journal",
    "JournalRecord",
    "Lease",
    "PostgresJournal",
    "Recorder",
    "SQLiteJournal",
    "SubmitIntent",
    "Target",
    "VideoRecord",
    "VideoState",
    "journal_name",
    "open_journal",
    "connect_error",
    "parse_url",
    "read_jobs",
    "shown_url",
    "strip_query",
    "submit_key_for",
]

_POSTGRES = ("postgres://", "postgresql://", "postgresql+")


def journal_name(path_or_url: str | os.PathLike[str]) -> str:
    """A journal as shown to a person: a path as given, a PostgreSQL URL without its
    password (and query)."""
    if _is_postgres(path_or_url):
        from ._pgschema import shown_url

        return shown_url(os.fspath(path_or_url))
    return os.fspath(path_or_url)


def _is_postgres(path_or_url: str | os.PathLike[str]) -> bool:
    from ._pgschema import is_keywords  # libpq's "host=H dbname=D password=W" form

    text = os.fspath(path_or_url)
    return text.startswith(_POSTGRES) or is_keywords(text)


def _sqlite_path(path_or_url: str | os.PathLike[str]) -> str:
    text = os.fspath(path_or_url)
    if text.startswith("sqlite://"):
        # As SQLAlchemy spells it: sqlite:///relative.db, sqlite:////absolute.db
        rest = text[len("sqlite://") :]
        if not rest.startswith("/") or len(rest) < 2:
            raise JournalUnavailableError(
                f"{text!r} names no file; write sqlite:///path/to/journal.db", path=text
            )
        return os.path.expanduser(rest[1:])
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise JournalUnavailableError(
            f"no journal backend for {scheme}://; give a file path, sqlite:///path or "
            "postgresql://USER@HOST:PORT/DB",
            path=text.split("@")[-1],  # never echo a password from the URL
        )
    if not text:
        raise JournalUnavailableError("the journal path is empty")
    return os.path.expanduser(text)


def open_journal(
    path_or_url: str | os.PathLike[str],
    *,
    read_only: bool = False,
    synchronous: Synchronous = "normal",
    busy_timeout: float = 10.0,
    lease_seconds: float = 60.0,
) -> Journal:
    """The journal at ``path_or_url``, to open with ``async with`` (or ``await .open()``).

    A missing file is created (mode 0600); its folder must exist. ``synchronous="full"``
    also survives power loss, at one fsync per commit (see ``SQLiteJournal``). A
    ``postgresql://`` URL (or libpq's ``host=H dbname=D user=U`` form) opens a
    ``PostgresJournal`` (its tables are created on first open; ``synchronous`` is the
    server's business there, and ignored).
    """
    if _is_postgres(path_or_url):
        from ._postgres import PostgresJournal

        return PostgresJournal(
            os.fspath(path_or_url),
            read_only=read_only,
            busy_timeout=busy_timeout,
            lease_seconds=lease_seconds,
        )
    return SQLiteJournal(
        _sqlite_path(path_or_url),
        read_only=read_only,
        synchronous=synchronous,
        busy_timeout=busy_timeout,
        lease_seconds=lease_seconds,
    )


def read_jobs(
    path_or_url: str | os.PathLike[str],
    *,
    unfinished: bool = False,
    states: Iterable[JobState] | None = None,
) -> list[JobRecord]:
    """The journal's jobs, read synchronously and without writing (for scripts and
    ``jobs``); see :meth:`Journal.jobs`."""
    if _is_postgres(path_or_url):
        return _read_postgres(os.fspath(path_or_url), unfinished=unfinished, states=states)
    path = _sqlite_path(path_or_url)
    conn, _ = connect(path, read_only=True, busy_timeout=10.0, synchronous="normal")
    try:
        tx = Tx(SQLITE, time.time(), "", path)
        return drive(
            select_jobs(tx, unfinished=unfinished, states=states),
            lambda query: execute(conn, path, query),
        )
    finally:
        conn.close()


def _read_postgres(
    url: str, *, unfinished: bool, states: Iterable[JobState] | None
) -> list[JobRecord]:
    from ._pgschema import Lost, connect_sync, execute_sync, lost_at_open, parse_url, prepare

    target = parse_url(url)
    with connect_sync(target) as conn:
        tx = Tx(POSTGRES, time.time(), "", target.shown)

        def run(query: Q) -> Any:
            return execute_sync(conn, target, query)

        try:
            drive(prepare(tx, read_only=True), run)
            return drive(select_jobs(tx, unfinished=unfinished, states=states), run)
        except Lost as lost:
            raise lost_at_open(lost, target) from None


def __getattr__(name: str) -> Any:
    # PostgresJournal needs psycopg (the ``postgres`` extra): imported when first asked for.
    if name == "PostgresJournal":
        from ._postgres import PostgresJournal

        return PostgresJournal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
