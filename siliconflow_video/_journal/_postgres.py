"""The journal in a PostgreSQL database, shared by processes on many machines.

The same operations as SQLite's (``_core``, ``_ops``: the same steps, the same SQL but for
a few fragments) on one ``psycopg.AsyncConnection``, driven on the event loop: no thread.
Group commits as in ``_writer``: everything queued while a batch runs is the next batch,
one transaction, each write in its own savepoint; a durable write returns once its
``COMMIT`` has been answered.

Leases
    The same ``leases`` and ``owners`` tables as SQLite, not advisory locks. A lease must
    outlive the connection that took it: advisory locks belong to a session, so a server
    restart (or a dropped connection and a reconnect) would silently free every lease
    while its holder is still downloading, and they show no owner or expiry for ``jobs``.
    Rows keep the owner, the expiry, and the process that holds them (a holder killed on
    the same machine is known dead at once; elsewhere its lease expires). Two processes
    deciding about one job take turns on that job's row (``SELECT ... FOR UPDATE`` in
    ``_ops.job_row``), which is what SQLite's one write lock gives for free.

Reconnects
    When the connection is lost (a server restart, a network cut), the batch in flight is
    looked at: writes whose ``COMMIT`` had not been sent cannot have committed, so they
    run again on a new connection; writes whose ``COMMIT`` was in flight may or may not be
    recorded, and their callers get a ``JournalError`` saying so. A write is never
    silently lost, and never silently done twice. Notes in such a commit are dropped (and
    logged), as notes may be.

    The wait is bounded: from the moment the server was first found out of reach, the
    journal tries to connect (with backoff, up to 1 s apart) for ``reconnect_timeout``
    seconds; a connection that comes back only to be lost again does not start the count
    anew (only a batch that gets through does). Past it, every change waiting and every
    new one gets ``JournalConnectionError`` ("this change was not made") after one more
    connection attempt each, until the server answers again; then the same journal
    object goes on, with every write acknowledged before. So a call waits at most
    ``reconnect_timeout`` plus two connection attempts (each at most ``connect_timeout``;
    a host that refuses the connection answers at once): the last attempt of the batch
    ahead of it, and its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from .._exceptions import ConfigurationError, JournalConnectionError, JournalError
from .._logging import logger
from ._core import SQLJournal
from ._pgschema import (
    Lost,
    Target,
    connect_error,
    is_lost,
    lost_at_open,
    parse_url,
    pg_statement,
    prepare,
    translate,
)
from ._sql import POSTGRES, Q, Tx, drive_async
from ._writer import MAX_BATCH, BatchRun, Kind, Op, Queue, only_notes, send

__all__ = ["PostgresJournal"]

Connection = psycopg.AsyncConnection[Any]

_FETCH_SLICE = 1000


class PostgresJournal(SQLJournal):
    """A journal in the PostgreSQL database at ``url`` (``postgresql://USER@HOST:PORT/DB``,
    or libpq's ``host=H port=P user=U dbname=D`` form; a password in it, in ``PGPASSWORD``
    or in ``.pgpass`` is used and never shown).

    ``busy_timeout`` bounds the wait for another process's lock on a row;
    ``reconnect_timeout`` how long a write waits for a lost server to come back (then
    ``JournalConnectionError``; see the module's notes); ``connect_timeout`` one connection
    attempt. ``path`` (in errors, logs and ``repr``) is ``postgresql://USER@HOST:PORT/DB``,
    without the password.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        busy_timeout: float = 10.0,
        lease_seconds: float = 60.0,
        flush_interval: float = 0.25,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not busy_timeout >= 0 or not connect_timeout > 0 or not reconnect_timeout >= 0:
            raise ConfigurationError(
                "busy_timeout and reconnect_timeout must be >= 0, connect_timeout > 0"
            )
        super().__init__(
            read_only=read_only,
            lease_seconds=lease_seconds,
            flush_interval=flush_interval,
            clock=clock,
        )
        self._target: Target = parse_url(url)
        self.path = self._target.shown
        self._busy_timeout = busy_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._pg_writer: PostgresWriter | None = None

    async def _connect(self) -> Connection:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._target.conninfo,
                autocommit=True,  # transactions are ours: BEGIN ... COMMIT, one per batch
                row_factory=dict_row,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="siliconflow-video",
            )
        except psycopg.Error as exc:
            raise connect_error(exc, self._target) from None
        try:
            await conn.execute(f"SET lock_timeout = {int(self._busy_timeout * 1000)}")
            if self.read_only:
                await conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as exc:
            await conn.close()
            raise translate(exc, self._target) from None
        return conn

    async def _start(self) -> Queue:
        conn = await self._connect()
        try:
            tx = Tx(POSTGRES, self._clock(), self.owner, self.path)
            writable = await drive_async(
                prepare(tx, read_only=self.read_only),
                lambda query: execute(conn, self._target, query),
            )
        except Lost as lost:  # a restart mid-open: the migration is one transaction
            with contextlib.suppress(psycopg.Error):
                await conn.close()
            raise lost_at_open(lost, self._target) from None
        except BaseException:
            await conn.close()
            raise
        if not writable and not self.read_only:
            logger.warning(
                "journal %r: this role may only read the journal; opened read-only", self.path
            )
            self.read_only = True
            await conn.execute("SET default_transaction_read_only = on")
        writer = self._pg_writer = PostgresWriter(
            conn,
            connect=self._connect,
            target=self._target,
            owner=self.owner,
            clock=self._clock,
            flush_interval=self._flush_interval,
            reconnect_timeout=self._reconnect_timeout,
        )
        writer.start()
        return writer

    def _abandon(self) -> None:
        self._stop_beating()
        if self._pg_writer is not None:
            self._pg_writer.abandon()


async def execute(conn: Connection, target: Target, query: Q) -> Any:
    """Run one statement of a step on ``conn``; a lost connection raises ``Lost``."""
    if query.fetch == "status":
        return conn.info.transaction_status != TransactionStatus.IDLE
    if query.fetch == "pause":
        await asyncio.sleep(0)
        return None
    sql, params = pg_statement(query)
    try:
        if query.fetch == "many":
            async with conn.cursor() as cursor:
                await cursor.executemany(sql, params or ())
            return None
        cursor = await conn.execute(sql, params)
        if query.fetch == "all":
            # Rows are made in slices: thousands of them are milliseconds of CPU each
            # time, and the event loop runs in between.
            rows: list[Any] = []
            while chunk := await cursor.fetchmany(_FETCH_SLICE):
                rows.extend(chunk)
                if len(chunk) == _FETCH_SLICE:
                    await asyncio.sleep(0)
            return rows
        if query.fetch == "one":
            return await cursor.fetchone()
        return cursor.rowcount
    except psycopg.Error as exc:
        if is_lost(exc, conn.broken or conn.closed):
            raise Lost(" ".join(target.scrub(str(exc)).split())) from None
        raise translate(exc, target) from None


class PostgresWriter(Queue):
    """The task that owns a PostgreSQL journal's connection and commits its batches."""

    def __init__(
        self,
        conn: Connection,
        *,
        connect: Callable[[], Any],
        target: Target,
        owner: str,
        clock: Callable[[], float],
        flush_interval: float,
        reconnect_timeout: float,
    ) -> None:
        super().__init__(self._take)
        self._conn: Connection | None = conn
        self._connect = connect
        self._target = target
        self._owner = owner
        self._clock = clock
        self._flush_interval = flush_interval
        self._reconnect_timeout = reconnect_timeout
        self._inbox: list[Op] = []
        self._wake = asyncio.Event()
        #: When (loop time) the server was first found out of reach; None while batches
        #: get through. Reconnects are tried for ``reconnect_timeout`` from then.
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def abandon(self) -> None:
        """Stop at once, releasing nothing, as in a crash (for tests)."""
        self.drop()
        self._inbox = []
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None:
            self._conn.pgconn.finish()  # the socket closes now; the server ends the session

    def _take(self, ops: list[Op]) -> None:
        self._inbox.extend(ops)
        self._wake.set()

    def _tx(self) -> Tx:
        return Tx(POSTGRES, self._clock(), self._owner, self._target.shown)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop: Op | None = None
        try:
            while stop is None:
                await self._wake.wait()
                # Notes alone are not worth a commit: wait a little for company.
                deadline = loop.time() + self._flush_interval
                while only_notes(self._inbox) and (remaining := deadline - loop.time()) > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        break
                batch, self._inbox = self._inbox[:MAX_BATCH], self._inbox[MAX_BATCH:]
                if not self._inbox:
                    self._wake.clear()
                try:
                    stop = await self._process(batch)
                except Exception as exc:  # noqa: BLE001 - a bug here must not hang every caller
                    logger.exception("journal %r: a batch failed", self._target.shown)
                    error = JournalError(f"journal {self._target.shown!r}: internal error: {exc}")
                    stop = next((op for op in batch if op.kind is Kind.STOP), None)
                    send([(op.future, False, error) for op in batch if op is not stop])
        finally:
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await self._conn.close()
            self._conn = None
        assert stop is not None
        if stop.future is not None:
            send([(stop.future, True, None)])

    def _deadline(self) -> float:
        loop = asyncio.get_running_loop()
        if self._down_since is None:
            self._down_since = loop.time()
        return self._down_since + self._reconnect_timeout

    async def _connection(self) -> Connection:
        """The connection, or a new one: tried until ``_deadline``, once at least."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        pause = 0.05
        while True:
            try:
                self._conn = await self._connect()
            except JournalError as exc:
                if loop.time() + pause >= deadline:
                    raise self._gone(str(exc)) from None
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
            else:
                logger.warning("journal %r: connected again", self._target.shown)
                return self._conn

    def _gone(self, why: str) -> JournalConnectionError:
        return JournalConnectionError(
            f"journal {self._target.shown!r}: PostgreSQL has been out of reach for more "
            f"than {self._reconnect_timeout:g} s ({why}); this change was not made",
            path=self._target.shown,
        )

    async def _process(self, ops: list[Op]) -> Op | None:
        """Run one batch to its end, across reconnects (for a bounded time: see the
        module's notes); the stop, if it held one."""
        loop = asyncio.get_running_loop()
        stop: Op | None = None
        lost_before = False
        while ops:
            try:
                conn = await self._connection()
            except JournalError as exc:
                stop = stop or next((op for op in ops if op.kind is Kind.STOP), None)
                send([(op.future, False, exc) for op in ops if op is not stop])
                return stop
            run = BatchRun(ops, dialect=POSTGRES, tx=self._tx)
            try:
                await drive_async(run.steps(), functools.partial(execute, conn, self._target))
            except Lost as lost:
                self._conn = None
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
                send(run.results)
                stop = stop or run.stop
                ops = run.remaining
                if run.committing:
                    self._unknown(run.unsettled, lost)
                else:  # no COMMIT was sent: nothing of this transaction can have committed
                    ops = run.unsettled + ops
                # A server that takes connections and drops them again is out of reach
                # too: the count of _deadline goes on across such reconnects.
                if lost_before and loop.time() >= self._deadline():
                    error = self._gone(f"the connection was lost again: {lost}")
                    stop = stop or next((op for op in ops if op.kind is Kind.STOP), None)
                    send([(op.future, False, error) for op in ops if op is not stop])
                    return stop
                self._deadline()
                lost_before = True
                logger.warning(
                    "journal %r: the connection was lost (%s); %d change(s) to make again "
                    "on a new connection",
                    self._target.shown,
                    lost,
                    len(ops),
                )
                continue
            send(run.results)
            self._down_since = None
            return stop or run.stop
        return stop

    def _unknown(self, ops: list[Op], lost: Lost) -> None:
        error = JournalError(
            f"journal {self._target.shown!r}: the connection to PostgreSQL was lost while "
            f"this change was being committed ({lost}); it may or may not be recorded: "
            "read the job back before making it again",
            path=self._target.shown,
        )
        notes = [op for op in ops if op.future is None]
        if notes:
            logger.warning(
                "journal %r: %d note(s) may not be recorded (connection lost mid-commit)",
                self._target.shown,
                len(notes),
            )
        send([(op.future, False, error) for op in ops if op.future is not None])
