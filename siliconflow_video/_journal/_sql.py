"""The journal's SQL, once for every backend: operations as generators of statements.

An operation never touches a connection. It *yields* each statement (a ``Q``) and is sent
back its result, so one copy of the state machine and of its SQL runs on SQLite (driven
synchronously, in the journal's thread) and on PostgreSQL (driven with ``await``, on the
event loop)::

    def job_row(tx, job_key):
        row = yield tx.one("SELECT * FROM jobs WHERE job_key = ?", job_key)
        ...

    value = drive(op(tx), run_one_statement)        # SQLite, psycopg's sync connection
    value = await drive_async(op(tx), run_async)    # psycopg's AsyncConnection

SQL is written with ``?`` placeholders and in the dialect both engines share (upserts with
``ON CONFLICT``, ``COALESCE``, ``CASE``). Where they differ, ``Dialect`` holds the
fragment: a list parameter, locking a row for the rest of the transaction, the insertion
order column, how a write transaction begins. Rows are read by column name only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Literal, TypeAlias, TypeVar

import attrs

__all__ = [
    "PAUSE",
    "POSTGRES",
    "SQLITE",
    "Abandon",
    "Dialect",
    "Fetch",
    "Q",
    "Step",
    "Tx",
    "drive",
    "drive_async",
]

T = TypeVar("T")

#: What a statement's result is: every row, the first row (or None), the row count of a
#: change, one statement per parameter tuple (``many``); or no SQL: whether a transaction
#: is open (``status``), a moment for the event loop to run other tasks (``pause``, for a
#: step busy turning thousands of rows into records; nothing without a loop).
Fetch = Literal["all", "one", "run", "many", "status", "pause"]


@attrs.frozen
class Q:
    """One statement for the driver to run, and what to send back."""

    sql: str
    params: Sequence[Any] = ()
    fetch: Fetch = "run"


PAUSE = Q("", (), "pause")

#: An operation: yields statements, is sent their results, returns a ``T``.
Step: TypeAlias = Generator[Q, Any, T]


@attrs.frozen
class Dialect:
    """What differs between the engines, as SQL fragments."""

    name: str
    #: starts a write transaction (SQLite takes the file's write lock at once)
    begin: str
    #: appended to a SELECT of a job row that a change depends on: other writers of that
    #: job wait until this transaction ends (SQLite: every write already does)
    lock: str
    #: the column that orders rows as they were inserted
    seq: str
    #: a table of one ``value`` column from one list parameter
    each: str
    #: ``column`` + this: true when the column's value is in one list parameter
    in_list: str
    #: each write of a batch in its own savepoint from the start. PostgreSQL runs a batch
    #: without (each savepoint that writes is a subtransaction, and past 64 of them every
    #: snapshot gets slower) and falls back to savepoints only once a write fails
    savepoint_each: bool

    def each_param(self, values: Sequence[str]) -> Any:
        """``values`` as the ``each`` fragment's parameter."""
        return json.dumps(list(values)) if self.name == "sqlite" else list(values)


SQLITE = Dialect(
    name="sqlite",
    begin="BEGIN IMMEDIATE",
    lock="",
    seq="rowid",
    each="json_each(?)",
    in_list=" IN (SELECT value FROM json_each(?))",
    savepoint_each=True,
)
POSTGRES = Dialect(
    name="postgresql",
    begin="BEGIN",
    lock=" FOR UPDATE",
    seq="seq",
    each="unnest(CAST(? AS text[])) AS each (value)",
    in_list=" = ANY (CAST(? AS text[]))",  # an index scan, where IN (SELECT ...) is not
    savepoint_each=False,
)


class Tx:
    """What an operation sees: the dialect, one ``now`` for the whole operation, who is
    writing, and the journal's name for errors. Its methods make the statements to yield."""

    __slots__ = ("dialect", "now", "owner", "path")

    def __init__(self, dialect: Dialect, now: float, owner: str, path: str) -> None:
        self.dialect = dialect
        self.now = now
        self.owner = owner
        self.path = path

    def one(self, sql: str, *params: Any) -> Q:
        return Q(sql, params, "one")

    def all(self, sql: str, *params: Any) -> Q:
        return Q(sql, params, "all")

    def run(self, sql: str, *params: Any) -> Q:
        return Q(sql, params, "run")

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> Q:
        return Q(sql, rows, "many")


class Abandon(Exception):
    """Raised by an ``execute``: the connection is gone. The step is closed, not told
    (no ``except`` of it may run as if the statement had merely failed), and this
    propagates to whoever drives it."""


def drive(step: Step[T], execute: Callable[[Q], Any]) -> T:
    """Run ``step`` to its end, each statement through ``execute``. An error ``execute``
    raises is thrown into the step, where it surfaces at its ``yield``."""
    try:
        query = next(step)
        while True:
            try:
                result = execute(query)
            except Abandon:
                step.close()
                raise
            except Exception as exc:  # noqa: BLE001 - the step decides; re-raised if not caught
                query = step.throw(exc)
            else:
                query = step.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(step: Step[T], execute: Callable[[Q], Awaitable[Any]]) -> T:
    """``drive``, awaiting each statement."""
    try:
        query = next(step)
        while True:
            try:
                result = await execute(query)
            except Abandon:
                step.close()
                raise
            except Exception as exc:  # noqa: BLE001 - the step decides; re-raised if not caught
                query = step.throw(exc)
            else:
                query = step.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
