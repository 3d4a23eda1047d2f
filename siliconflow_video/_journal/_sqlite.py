"""The journal in one SQLite file.

Writes go through one thread with group commits (``_writer``): a durable write returns once
its transaction is committed, and a burst of them is one transaction.

Why this survives ``kill -9`` at any point
    The file is in WAL mode: a commit appends to the ``-wal`` file, and a reader or the
    next opener sees exactly the transactions whose commit record is there. A process
    killed mid-transaction leaves an uncommitted tail that SQLite ignores, so the file
    always opens, with every acknowledged write in it. ``synchronous=NORMAL`` (the default)
    does not fsync at each commit: the WAL's bytes are in the operating system's page
    cache the moment ``write()`` returns, and a *process* crash cannot lose them. What it
    can lose is an OS crash or a power cut: the last commits before the next checkpoint
    may roll back (the file stays consistent). ``synchronous="full"`` fsyncs the WAL at
    each commit and closes that gap too; with group commits it costs one fsync per burst,
    not per write, so choose it when the machine may lose power with paid jobs in flight.

Locking
    ``busy_timeout`` (10 s by default) lets a writer wait for another process's short
    transaction instead of failing at once; the waiting happens in the journal's thread,
    never on the event loop. Leases are taken in the same ``BEGIN IMMEDIATE``
    transactions, so two processes cannot both win one. The journal belongs on a local
    disk: SQLite's locks are not reliable over NFS, and WAL needs shared memory.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from .._exceptions import ConfigurationError
from ._core import SQLJournal
from ._schema import Synchronous, connect
from ._sql import SQLITE
from ._writer import GroupWriter, Queue

__all__ = ["SQLiteJournal"]


class SQLiteJournal(SQLJournal):
    """A journal in one SQLite file; see the module docstring for how it writes.

    ``lease_seconds`` is how long a lease keeps other processes off without renewal (this
    journal renews its own every third of that). ``clock`` (seconds since the epoch) is
    for tests that need an expired lease without waiting for one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        synchronous: Synchronous = "normal",
        busy_timeout: float = 10.0,
        lease_seconds: float = 60.0,
        flush_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ConfigurationError("synchronous must be 'normal' or 'full'")
        if not busy_timeout >= 0:
            raise ConfigurationError("busy_timeout and flush_interval must be >= 0")
        super().__init__(
            read_only=read_only,
            lease_seconds=lease_seconds,
            flush_interval=flush_interval,
            clock=clock,
        )
        self.path = os.path.expanduser(os.fspath(path))
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._thread_writer: GroupWriter | None = None

    async def _start(self) -> Queue:
        conn, self.read_only = await asyncio.to_thread(
            connect,
            self.path,
            read_only=self.read_only,
            busy_timeout=self._busy_timeout,
            synchronous=self._synchronous,
        )
        writer = self._thread_writer = GroupWriter(
            conn,
            path=self.path,
            owner=self.owner,
            clock=self._clock,
            flush_interval=self._flush_interval,
            dialect=SQLITE,
        )
        writer.start()
        return writer

    def _abandon(self) -> None:
        self._stop_beating()
        if self._thread_writer is not None:
            self._thread_writer.abandon()
