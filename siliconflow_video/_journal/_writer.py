"""One thread, one connection, group commits: how the journal's writes reach the disk.

Every call queues an operation and returns (a note) or awaits its future (a durable write
or a read). The operations queued during one turn of the event loop reach the thread
together, once that turn ends. The thread takes everything queued, runs the writes in one
``BEGIN IMMEDIATE`` transaction (each in its own savepoint, so one bad write fails alone),
commits, and only then resolves the futures: a durable write that returned is committed.
A burst of 10,000 accepts is a handful of transactions, and the event loop only queues and
wakes. Notes wait up to ``flush_interval`` for company and are merged per key (counts add
up, later fields win), so polls and byte counts never cost a commit of their own.

A read commits the writes queued before it first, so it sees them, and never sees a write
that could still roll back. A caller cancelled while awaiting a write does not undo it.
"""

from __future__ import annotations

import asyncio
import enum
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._exceptions import JournalError
from .._logging import logger
from ._schema import translate

__all__ = ["GroupWriter", "Tx"]

T = TypeVar("T")

#: Operations gathered into one transaction before it starts (one hand-over is never split).
_MAX_BATCH = 20_000
#: Futures resolved per loop callback: a huge commit wakes its waiters in slices.
_DELIVER_SLICE = 500

Note = Callable[["Tx", dict[str, Any], dict[str, int]], None]


class _Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    NOTE = "note"
    STOP = "stop"


class _Op:
    """One queued operation; notes carry a key to merge on and their fields."""

    __slots__ = ("adds", "fields", "fn", "future", "key", "kind")

    def __init__(
        self,
        kind: _Kind,
        fn: Callable[..., Any] | None = None,
        future: asyncio.Future[Any] | None = None,
        key: tuple[Any, ...] | None = None,
        fields: dict[str, Any] | None = None,
        adds: dict[str, int] | None = None,
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.future = future
        self.key = key
        self.fields = fields
        self.adds = adds


class Tx:
    """What an operation sees in the journal's thread: the connection inside the batch's
    transaction, one ``now`` for the whole operation, and who is writing."""

    __slots__ = ("conn", "now", "owner", "path")

    def __init__(self, conn: sqlite3.Connection, now: float, owner: str, path: str) -> None:
        self.conn = conn
        self.now = now
        self.owner = owner
        self.path = path


def _deliver(
    loop: asyncio.AbstractEventLoop,
    results: list[tuple[asyncio.Future[Any], bool, Any]],
    start: int = 0,
) -> None:
    """Resolve one slice of a commit's futures, then queue the next slice behind the
    callbacks this one woke: a commit of 10,000 writes never holds the loop for long."""
    end = start + _DELIVER_SLICE
    for future, ok, value in results[start:end]:
        if future.done():  # the caller was cancelled; the write stands all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    if end < len(results):
        loop.call_soon(_deliver, loop, results, end)


class GroupWriter:
    """The thread that owns the journal's connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        path: str,
        owner: str,
        clock: Callable[[], float],
        flush_interval: float,
    ) -> None:
        self.path = path
        self._conn = conn
        self._owner = owner
        self._clock = clock
        self._flush_interval = flush_interval
        # The loop hands operations over once per loop iteration, as a list: the thread
        # wakes once per burst, not once per call, and does not fight the loop for the
        # GIL while the loop is still queueing.
        self._queue: queue.SimpleQueue[list[_Op]] = queue.SimpleQueue()
        self._pending: list[_Op] = []
        self._thread = threading.Thread(target=self._run, name=f"journal {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _submit(self, op: _Op) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a note from outside the loop: straight to the thread
            self._queue.put([op])
            return
        if not self._pending:
            loop.call_soon(self._hand_over)
        self._pending.append(op)

    def _hand_over(self) -> None:
        ops, self._pending = self._pending, []
        if ops:
            self._queue.put(ops)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in the next transaction; return its result once committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(_Op(_Kind.WRITE, fn, future))
        return await future

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` outside any transaction, after the writes queued before it."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(_Op(_Kind.READ, fn, future))
        return await future

    def note(
        self, key: tuple[Any, ...], fn: Note, fields: dict[str, Any], adds: dict[str, int]
    ) -> None:
        """Queue a note, merged with the others of the same ``key`` still queued."""
        self._submit(_Op(_Kind.NOTE, fn, None, key, fields, adds))

    async def stop(self) -> None:
        """Commit what is queued, close the connection, end the thread."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(_Op(_Kind.STOP, future=done))
        await done

    def abandon(self) -> None:
        """Stop at once, without waiting on the event loop; queued operations are dropped
        unanswered, as in a crash (for tests)."""
        self._pending = []
        self._queue.put([_Op(_Kind.STOP)])
        self._thread.join()

    def _tx(self) -> Tx:
        return Tx(self._conn, self._clock(), self._owner, self.path)

    def _run(self) -> None:
        conn = self._conn
        while True:
            batch = self._queue.get()
            if all(op.kind is _Kind.NOTE for op in batch):
                # Notes alone are not worth a commit: wait a little for company.
                deadline = time.monotonic() + self._flush_interval
                while (remaining := deadline - time.monotonic()) > 0:
                    try:
                        more = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    batch.extend(more)
                    if not all(op.kind is _Kind.NOTE for op in more):
                        break
            while len(batch) < _MAX_BATCH:
                try:
                    batch.extend(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                stop = self._process(conn, batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must not hang every caller
                logger.exception("journal %r: a batch failed", self.path)
                _rollback(conn)
                error = JournalError(f"journal {self.path!r}: internal error: {exc}")
                stop = next((op for op in batch if op.kind is _Kind.STOP), None)
                failed = [op for op in batch if op.future is not None and op is not stop]
                self._send([(op.future, False, error) for op in failed if op.future])
            if stop is not None:
                break
        try:
            conn.close()  # the last connection to close checkpoints the WAL into the file
        except sqlite3.Error:
            logger.warning("journal %r: closing failed", self.path, exc_info=True)
        # Only now: whoever awaited the stop may open the file again, or exit.
        if stop.future is not None:
            self._send([(stop.future, True, None)])

    def _process(self, conn: sqlite3.Connection, batch: list[_Op]) -> _Op | None:
        """Run one batch; the stop, if it held one."""
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        uncommitted: list[tuple[asyncio.Future[Any], bool, Any]] = []
        begin_error: JournalError | None = None
        stop: _Op | None = None

        def abort(error: Exception) -> None:
            # The transaction is gone (or going): nothing in it was written.
            _rollback(conn)
            results.extend((f, False, error) for f, _, _ in uncommitted)
            uncommitted.clear()

        def commit() -> None:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                abort(translate(exc, self.path))
            else:
                results.extend(uncommitted)
                uncommitted.clear()

        for op in _coalesce(batch):
            if op.kind is _Kind.STOP:
                stop = op
                continue
            if op.kind is _Kind.READ:
                if conn.in_transaction:
                    commit()  # a read never sees a write that might still roll back
                results.append(self._call(op, self._tx()))
                continue
            if begin_error is None and not conn.in_transaction:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    begin_error = translate(exc, self.path)
            if begin_error is not None:
                results.append(self._failed(op, begin_error))
                continue
            try:
                conn.execute("SAVEPOINT op")
                outcome = self._call(op, self._tx())
                if outcome[1]:
                    conn.execute("RELEASE op")
                    uncommitted.append(outcome)
                    continue
                results.append(outcome)
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                else:  # SQLite rolled the whole transaction back (disk full, I/O error)
                    abort(outcome[2])
            except sqlite3.Error as exc:
                abort(translate(exc, self.path))
        if conn.in_transaction:
            commit()
        self._send(results)
        return stop

    def _call(self, op: _Op, tx: Tx) -> tuple[Any, bool, Any]:
        assert op.fn is not None
        try:
            value = op.fn(tx, op.fields, op.adds) if op.kind is _Kind.NOTE else op.fn(tx)
        except sqlite3.Error as exc:
            return self._failed(op, translate(exc, self.path))
        except Exception as exc:  # noqa: BLE001 - handed to the caller that asked
            return self._failed(op, exc)
        return (op.future, True, value)

    def _failed(self, op: _Op, error: Exception) -> tuple[Any, bool, Any]:
        if op.future is None:
            logger.warning("journal %r: a note was not recorded: %s", self.path, error)
        return (op.future, False, error)

    def _send(self, results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = {}
        for item in results:
            if item[0] is not None:  # a note's outcome was logged, if it failed
                by_loop.setdefault(item[0].get_loop(), []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, loop, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                continue


def _coalesce(batch: list[_Op]) -> list[_Op]:
    """The batch with the notes for one job or video merged into one, placed where the
    last of them was: later fields win, counts add up."""
    if not any(op.kind is _Kind.NOTE for op in batch):
        return batch
    merged: dict[tuple[Any, ...], _Op] = {}
    last: dict[tuple[Any, ...], int] = {}
    for position, op in enumerate(batch):
        if op.kind is not _Kind.NOTE or op.key is None:
            continue
        last[op.key] = position
        into = merged.get(op.key)
        if into is None:
            merged[op.key] = _Op(_Kind.NOTE, op.fn, None, op.key, dict(op.fields or {}))
            merged[op.key].adds = dict(op.adds or {})
        else:
            assert into.fields is not None
            assert into.adds is not None
            into.fields.update(op.fields or {})
            for name, count in (op.adds or {}).items():
                into.adds[name] = into.adds.get(name, 0) + count
    out: list[_Op] = []
    for position, op in enumerate(batch):
        if op.kind is not _Kind.NOTE or op.key is None:
            out.append(op)
        elif last[op.key] == position:
            out.append(merged[op.key])
    return out


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        logger.debug("rollback after a failed commit also failed", exc_info=True)
