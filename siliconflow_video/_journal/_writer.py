"""Group commits: how the journal's writes reach the database.

``BatchRun`` is one batch as a step (see ``_sql``), for every backend: it runs the writes
in one transaction (each in its own savepoint, so one bad write fails alone), commits,
and only then counts them settled. ``GroupWriter`` drives it for SQLite, from one thread
that owns the connection; the PostgreSQL journal drives the same step on the event loop.

Every call queues an operation and returns (a note) or awaits its future (a durable write
or a read). The operations queued during one turn of the event loop reach the thread
together, once that turn ends. The thread takes everything queued, runs the batch,
and only then resolves the futures: a durable write that returned is committed.
A burst of 10,000 accepts is a handful of transactions, and the event loop only queues and
wakes. Notes wait up to ``flush_interval`` for company and are merged per key (counts add
up, later fields win), so polls and byte counts never cost a commit of their own.

A read commits the writes queued before it first, so it sees them, and never sees a write
that could still roll back. A caller cancelled while awaiting a write does not undo it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._exceptions import JournalError
from .._logging import logger
from ._schema import execute
from ._sql import Dialect, Q, Step, Tx, drive

__all__ = ["BatchRun", "GroupWriter", "Kind", "Op", "Outcome", "deliver"]

T = TypeVar("T")

#: Operations gathered into one transaction before it starts (one hand-over is never split).
MAX_BATCH = 20_000
#: Futures resolved per loop callback: a huge commit wakes its waiters in slices.
_DELIVER_SLICE = 500

Note = Callable[[Tx, dict[str, Any], dict[str, int]], Step[None]]
#: A future (None for a note), whether the operation succeeded, and its value or error.
Outcome = tuple["asyncio.Future[Any] | None", bool, Any]


class Kind(enum.Enum):
    READ = "read"
    WRITE = "write"
    NOTE = "note"
    STOP = "stop"


class Op:
    """One queued operation; notes carry a key to merge on and their fields."""

    __slots__ = ("adds", "fields", "fn", "future", "key", "kind")

    def __init__(
        self,
        kind: Kind,
        fn: Callable[..., Step[Any]] | None = None,
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


def deliver(
    loop: asyncio.AbstractEventLoop,
    results: list[Outcome],
    start: int = 0,
) -> None:
    """Resolve one slice of a commit's futures, then queue the next slice behind the
    callbacks this one woke: a commit of 10,000 writes never holds the loop for long."""
    end = start + _DELIVER_SLICE
    for future, ok, value in results[start:end]:
        if future is None or future.done():  # cancelled: the write stands all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    if end < len(results):
        loop.call_soon(deliver, loop, results, end)


_STATUS = Q("", (), "status")


class BatchRun:
    """One batch of operations as a step: what ``steps()`` settled is in ``results``.

    A driver whose connection is lost mid-batch abandons the step and reads what is left:
    ``unsettled`` ran in the transaction that was open (its outcome is unknown only if the
    loss came while ``committing``), ``remaining`` never ran in a transaction that could
    have committed.
    """

    def __init__(self, ops: list[Op], *, dialect: Dialect, tx: Callable[[], Tx]) -> None:
        self.todo = coalesce(ops)
        self.results: list[Outcome] = []
        self.stop: Op | None = None
        self.committing = False
        self._dialect = dialect
        self._tx = tx
        self._position = 0
        self._current: Op | None = None
        self._open: list[tuple[Op, Outcome]] = []
        self._savepoints = dialect.savepoint_each

    @property
    def unsettled(self) -> list[Op]:
        return [op for op, _ in self._open]

    @property
    def remaining(self) -> list[Op]:
        current = [self._current] if self._current is not None else []
        return current + self.todo[self._position :]

    def _abort(self, error: Exception) -> Step[None]:
        # The transaction is gone (or going): nothing in it was written.
        yield from _rollback()
        self.results.extend((op.future, False, error) for op, _ in self._open)
        self._open.clear()

    def _commit(self) -> Step[None]:
        self.committing = True
        try:
            yield Q("COMMIT")
        except JournalError as exc:
            self.committing = False
            yield from self._abort(exc)
        else:
            self.committing = False
            self.results.extend(outcome for _, outcome in self._open)
            self._open.clear()

    def steps(self) -> Step[None]:
        begin_error: JournalError | None = None
        while self._position < len(self.todo):
            op = self._current = self.todo[self._position]
            self._position += 1
            if op.kind is Kind.STOP:
                self.stop = op
            elif op.kind is Kind.READ:
                if (yield _STATUS):
                    yield from self._commit()  # a read never sees a write that may roll back
                self.results.append((yield from _call(op, self._tx())))
            else:
                if begin_error is None and not (yield _STATUS):
                    try:
                        yield Q(self._dialect.begin)
                    except JournalError as exc:
                        begin_error = exc
                if begin_error is not None:
                    self.results.append(_failed(op, begin_error))
                else:
                    yield from self._write(op)
            self._current = None
        if (yield _STATUS):
            yield from self._commit()

    def _write(self, op: Op) -> Step[None]:
        if not self._savepoints:
            yield from self._write_bare(op)
            return
        answered = False
        try:
            yield Q("SAVEPOINT op")
            outcome = yield from _call(op, self._tx())
            if outcome[1]:
                yield Q("RELEASE op")
                self._open.append((op, outcome))
                return
            self.results.append(outcome)
            answered = True
            if (yield _STATUS):
                yield Q("ROLLBACK TO op")
                yield Q("RELEASE op")
            else:  # the whole transaction was rolled back (disk full, I/O error)
                yield from self._abort(outcome[2])
        except JournalError as exc:
            if not answered and all(o is not op for o, _ in self._open):
                self.results.append(_failed(op, exc))
            yield from self._abort(exc)

    def _write_bare(self, op: Op) -> Step[None]:
        """``op`` without a savepoint. If it fails, the transaction goes (with whatever
        part of it ``op`` wrote); the writes before it run again, this time each in its
        own savepoint, as does the rest of the batch."""
        outcome = yield from _call(op, self._tx())
        if outcome[1]:
            self._open.append((op, outcome))
            return
        self.results.append(outcome)
        self._savepoints = True
        again = [done for done, _ in self._open]
        self._open.clear()
        yield from _rollback()
        self.todo[self._position : self._position] = again


def _call(op: Op, tx: Tx) -> Step[Outcome]:
    assert op.fn is not None
    try:
        if op.kind is Kind.NOTE:
            value = yield from op.fn(tx, op.fields, op.adds)
        else:
            value = yield from op.fn(tx)
    except Exception as exc:  # noqa: BLE001 - handed to the caller that asked
        return _failed(op, exc)
    return (op.future, True, value)


def _failed(op: Op, error: Exception) -> Outcome:
    if op.future is None:
        logger.warning("journal: a note was not recorded: %s", error)
    return (op.future, False, error)


def _rollback() -> Step[None]:
    try:
        yield Q("ROLLBACK")
    except JournalError:
        logger.debug("rollback after a failed commit also failed", exc_info=True)


def send(results: list[Outcome]) -> None:
    """Hand the outcomes to their futures' loops (from any thread)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for item in results:
        if item[0] is not None:  # a note's outcome was logged, if it failed
            by_loop.setdefault(item[0].get_loop(), []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(deliver, loop, items)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            continue


class Queue:
    """The event loop's side of a writer: operations queued during one turn of the loop
    are handed over together, once that turn ends."""

    def __init__(self, hand_over: Callable[[list[Op]], None]) -> None:
        self._hand_over_to = hand_over
        self._pending: list[Op] = []

    def submit(self, op: Op) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a note from outside the loop: straight over
            self._hand_over_to([op])
            return
        if not self._pending:
            loop.call_soon(self._hand_over)
        self._pending.append(op)

    def _hand_over(self) -> None:
        ops, self._pending = self._pending, []
        if ops:
            self._hand_over_to(ops)

    def drop(self) -> None:
        self._pending = []

    async def write(self, fn: Callable[[Tx], Step[T]]) -> T:
        """Run ``fn`` in the next transaction; return its result once committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.submit(Op(Kind.WRITE, fn, future))
        return await future

    async def read(self, fn: Callable[[Tx], Step[T]]) -> T:
        """Run ``fn`` outside any transaction, after the writes queued before it."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.submit(Op(Kind.READ, fn, future))
        return await future

    def note(
        self, key: tuple[Any, ...], fn: Note, fields: dict[str, Any], adds: dict[str, int]
    ) -> None:
        """Queue a note, merged with the others of the same ``key`` still queued."""
        self.submit(Op(Kind.NOTE, fn, None, key, fields, adds))

    async def stop(self) -> None:
        """Commit what is queued, close the connection, end the writer."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.submit(Op(Kind.STOP, future=done))
        await done


def only_notes(ops: list[Op]) -> bool:
    return all(op.kind is Kind.NOTE for op in ops)


class GroupWriter(Queue):
    """The thread that owns an SQLite journal's connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        path: str,
        owner: str,
        clock: Callable[[], float],
        flush_interval: float,
        dialect: Dialect,
    ) -> None:
        # The loop hands operations over once per loop iteration, as a list: the thread
        # wakes once per burst, not once per call, and does not fight the loop for the
        # GIL while the loop is still queueing.
        self._queue: queue.SimpleQueue[list[Op]] = queue.SimpleQueue()
        super().__init__(self._queue.put)
        self.path = path
        self._conn = conn
        self._owner = owner
        self._clock = clock
        self._flush_interval = flush_interval
        self._dialect = dialect
        self._thread = threading.Thread(target=self._run, name=f"journal {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def abandon(self) -> None:
        """Stop at once, without waiting on the event loop; queued operations are dropped
        unanswered, as in a crash (for tests)."""
        self.drop()
        self._queue.put([Op(Kind.STOP)])
        self._thread.join()

    def _tx(self) -> Tx:
        return Tx(self._dialect, self._clock(), self._owner, self.path)

    def _execute(self, query: Q) -> Any:
        return execute(self._conn, self.path, query)

    def _run(self) -> None:
        conn = self._conn
        while True:
            batch = self._queue.get()
            if only_notes(batch):
                # Notes alone are not worth a commit: wait a little for company.
                deadline = time.monotonic() + self._flush_interval
                while (remaining := deadline - time.monotonic()) > 0:
                    try:
                        more = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    batch.extend(more)
                    if not only_notes(more):
                        break
            while len(batch) < MAX_BATCH:
                try:
                    batch.extend(self._queue.get_nowait())
                except queue.Empty:
                    break
            run = BatchRun(batch, dialect=self._dialect, tx=self._tx)
            try:
                drive(run.steps(), self._execute)
                send(run.results)
            except Exception as exc:  # noqa: BLE001 - a bug here must not hang every caller
                logger.exception("journal %r: a batch failed", self.path)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                error = JournalError(f"journal {self.path!r}: internal error: {exc}")
                left = run.unsettled + run.remaining
                run.stop = run.stop or next((op for op in left if op.kind is Kind.STOP), None)
                send(run.results)
                send([(op.future, False, error) for op in left if op is not run.stop])
            stop = run.stop
            if stop is not None:
                break
        try:
            conn.close()  # the last connection to close checkpoints the WAL into the file
        except sqlite3.Error:
            logger.warning("journal %r: closing failed", self.path, exc_info=True)
        # Only now: whoever awaited the stop may open the file again, or exit.
        if stop.future is not None:
            send([(stop.future, True, None)])


def coalesce(batch: list[Op]) -> list[Op]:
    """The batch with the notes for one job or video merged into one, placed where the
    last of them was: later fields win, counts add up."""
    if not any(op.kind is Kind.NOTE for op in batch):
        return batch
    merged: dict[tuple[Any, ...], Op] = {}
    last: dict[tuple[Any, ...], int] = {}
    for position, op in enumerate(batch):
        if op.kind is not Kind.NOTE or op.key is None:
            continue
        last[op.key] = position
        into = merged.get(op.key)
        if into is None:
            merged[op.key] = Op(Kind.NOTE, op.fn, None, op.key, dict(op.fields or {}))
            merged[op.key].adds = dict(op.adds or {})
        else:
            assert into.fields is not None
            assert into.adds is not None
            into.fields.update(op.fields or {})
            for name, count in (op.adds or {}).items():
                into.adds[name] = into.adds.get(name, 0) + count
    out: list[Op] = []
    for position, op in enumerate(batch):
        if op.kind is not Kind.NOTE or op.key is None:
            out.append(op)
        elif last[op.key] == position:
            out.append(merged[op.key])
    return out
