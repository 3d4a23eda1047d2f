"""The SQL behind each change, as steps (see ``_sql``) run inside the journal's transaction.

Each function either makes its whole change or raises (the writer then rolls back its
savepoint): a typed error for a change the states or the leases forbid. They are written
once for every backend; ``tx.dialect`` holds the few fragments that differ.

Concurrency. On SQLite every write transaction holds the file's write lock
(``BEGIN IMMEDIATE``), so a step's reads and writes are never interleaved with another
process's. On PostgreSQL (read committed) a step that decides from a job's row, or from
its leases, first locks that job's row (``job_row``, ``SELECT ... FOR UPDATE``): two
processes changing one job, or claiming one lease, take turns, and the second sees what
the first committed. Conditions that must still hold when a row is written are repeated
in the ``UPDATE``'s ``WHERE`` (PostgreSQL re-checks them on the newest row version).
"""

from __future__ import annotations

import math
import os
from typing import Any

from .._exceptions import ConfigurationError, JournalStateError, LeaseHeldError, UnknownJobError
from .._logging import logger
from ._base import ErrorInfo, JobRecord, JobState, Lease, moment_of
from ._owners import holder_is_live, machine_id
from ._rows import select_jobs
from ._sql import Step, Tx

Row = Any  # sqlite3.Row or psycopg's dict row: read by column name only


def register_owner(tx: Tx) -> Step[None]:
    """This open journal, as leases name it, with what tells others when it is gone."""
    yield tx.run(
        "INSERT INTO owners (owner, host, machine, pid, started_at, seen_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner) DO UPDATE SET "
        "host = excluded.host, machine = excluded.machine, pid = excluded.pid, "
        "started_at = excluded.started_at, seen_at = excluded.seen_at",
        tx.owner,
        tx.owner.split(":", 1)[0],
        machine_id(),
        os.getpid(),
        tx.now,
        tx.now,
    )


def renew_owner(tx: Tx, lease_seconds: float) -> Step[None]:
    """The heartbeat: every lease this journal holds runs ``lease_seconds`` from now."""
    yield tx.run("UPDATE owners SET seen_at = ? WHERE owner = ?", tx.now, tx.owner)
    yield tx.run("UPDATE leases SET until = ? WHERE owner = ?", tx.now + lease_seconds, tx.owner)


def unregister_owner(tx: Tx) -> Step[None]:
    """A clean close: our submits still in flight will never have their answer journaled
    now, so they are ``submit_unknown``; our leases are given up."""
    yield tx.run(
        "UPDATE jobs SET state = 'submit_unknown', error_type = ?, error_message = ?, "
        "updated_at = ? WHERE state = 'submitting' AND job_key IN "
        "(SELECT job_key FROM leases WHERE owner = ? AND idx = -1)",
        *INTERRUPTED,
        tx.now,
        tx.owner,
    )
    yield tx.run("DELETE FROM leases WHERE owner = ?", tx.owner)
    yield tx.run("DELETE FROM owners WHERE owner = ?", tx.owner)


#: How long an owner row that holds nothing outlives its last heartbeat.
OWNER_SILENCE = 86_400.0

INTERRUPTED = (
    "SubmitInterrupted",
    "the process submitting it stopped before SiliconFlow's answer was journaled: the job "
    "may or may not exist (and be charged); find its requestId before submitting again",
)


def apply_poll(tx: Tx, fields: dict[str, Any], adds: dict[str, int]) -> Step[None]:
    yield tx.run(
        "UPDATE jobs SET remote_status = ?, last_polled_at = ?, poll_count = poll_count + ?, "
        "updated_at = ? WHERE job_key = ? AND state = 'waiting'",
        fields["remote_status"],
        fields["at"],
        adds.get("polls", 0),
        tx.now,
        fields["job_key"],
    )


_VIDEO_NOTE_COLUMNS = ("url", "url_seen_at", "size", "etag", "last_modified", "bytes_done")


def apply_video(tx: Tx, fields: dict[str, Any], adds: dict[str, int]) -> Step[None]:
    columns = [c for c in _VIDEO_NOTE_COLUMNS if c in fields]
    if not columns:
        return
    sets = ", ".join(f"{c} = ?" for c in columns)
    moving = ", state = 'downloading'" if "bytes_done" in fields else ""
    yield tx.run(
        f"UPDATE videos SET {sets}{moving}, updated_at = ? "
        "WHERE job_key = ? AND idx = ? AND state IN ('pending', 'downloading')",
        *(fields[c] for c in columns),
        tx.now,
        fields["job_key"],
        fields["idx"],
    )


def check_id(request_id: object) -> str:
    if not isinstance(request_id, str):
        raise TypeError(f"request_id must be a str, got {type(request_id).__name__}")
    if not request_id.strip():
        raise ConfigurationError("request_id must be a non-empty string")
    return request_id


def what(job_key: str, index: int | None) -> str:
    return f"job {job_key!r}" if index is None or index < 0 else f"video {index} of {job_key!r}"


def job_row(tx: Tx, job_key: str) -> Step[Row]:
    """The job's row, locked until the transaction ends (see the module docstring)."""
    row = yield tx.one(f"SELECT * FROM jobs WHERE job_key = ?{tx.dialect.lock}", job_key)
    if row is None:
        raise UnknownJobError(f"no job {job_key!r} in the journal", path=tx.path)
    return row


def video_row(tx: Tx, job_key: str, index: int) -> Step[Row]:
    row = yield tx.one("SELECT * FROM videos WHERE job_key = ? AND idx = ?", job_key, index)
    if row is None:
        raise UnknownJobError(f"job {job_key!r} has no video {index} in the journal", path=tx.path)
    return row


def expect(row: Row, states: set[str], doing: str) -> None:
    if row["state"] not in states:
        raise JournalStateError(
            f"job {row['job_key']!r} is {row['state']}: cannot {doing}",
            request_id=row["request_id"],
        )


def one_job(tx: Tx, job_key: str) -> Step[JobRecord]:
    found = yield from select_jobs(tx, where="j.job_key = ?", params=(job_key,))
    if not found:
        raise UnknownJobError(f"no job {job_key!r} in the journal", path=tx.path)
    return found[0]


def find_job(tx: Tx, request_id: str) -> Step[JobRecord | None]:
    found = yield from select_jobs(tx, where="j.request_id = ?", params=(request_id,))
    return found[0] if found else None


def jobs_by_request_id(tx: Tx, ids: list[str]) -> Step[list[JobRecord]]:
    if len(ids) == 1:
        found = yield from select_jobs(tx, where="j.request_id = ?", params=(ids[0],))
    else:  # one parameter for any number of ids
        found = yield from select_jobs(
            tx,
            where=f"j.request_id{tx.dialect.in_list}",
            params=(tx.dialect.each_param(ids),),
        )
    by_id = {job.request_id: job for job in found}
    return [by_id[rid] for rid in ids]


def older_jobs(tx: Tx, ids: list[str]) -> Step[list[JobRecord]]:
    """Those of ``ids`` journaled before this transaction (rows it inserted have its time)."""
    if len(ids) == 1:
        where, params = "j.request_id = ? AND j.created_at < ?", (ids[0], tx.now)
    else:
        where = f"j.request_id{tx.dialect.in_list} AND j.created_at < ?"
        params = (tx.dialect.each_param(ids), tx.now)
    found: list[JobRecord] = yield from select_jobs(tx, where=where, params=params)
    return found


def set_state(
    tx: Tx, job_key: str, state: JobState, error: ErrorInfo | None, *, finished: bool = False
) -> Step[None]:
    yield tx.run(
        "UPDATE jobs SET state = ?, error_type = ?, error_message = ?, updated_at = ?, "
        "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE job_key = ?",
        state.value,
        error.type if error else None,
        error.message if error else None,
        tx.now,
        finished,
        tx.now,
        job_key,
    )


def rearm(tx: Tx, job_key: str) -> Step[None]:
    """A job that failed on our side (a download, an API error) is waited for again."""
    yield tx.run(
        "UPDATE jobs SET state = 'waiting', error_type = NULL, error_message = NULL, "
        "finished_at = NULL, updated_at = ? WHERE job_key = ?",
        tx.now,
        job_key,
    )
    yield tx.run(
        "UPDATE videos SET state = 'pending', error_type = NULL, error_message = NULL, "
        "updated_at = ? WHERE job_key = ? AND state = 'failed'",
        tx.now,
        job_key,
    )


def settle(tx: Tx, job_key: str) -> Step[None]:
    """The job's state from its videos': done when all are, failed once none is left in
    flight and one failed."""
    rows = yield tx.all(
        "SELECT state, COUNT(*) AS n FROM videos WHERE job_key = ? GROUP BY state", job_key
    )
    counts = {row["state"]: row["n"] for row in rows}
    total = sum(counts.values())
    if counts.get("done", 0) == total:
        yield from set_state(tx, job_key, JobState.DONE, None, finished=True)
    elif counts.get("pending", 0) + counts.get("downloading", 0) == 0:
        first = yield tx.one(
            "SELECT idx, error_type, error_message FROM videos WHERE job_key = ? AND "
            "state = 'failed' ORDER BY idx LIMIT 1",
            job_key,
        )
        info = ErrorInfo(
            first["error_type"] or "DownloadError",
            f"{counts.get('failed', 0)} of {total} videos could not be fetched; video "
            f"{first['idx']}: {first['error_message']}",
        )
        yield from set_state(tx, job_key, JobState.FAILED, info, finished=True)


def lease_holder(tx: Tx, job_key: str, idx: int) -> Step[Row | None]:
    row = yield tx.one(
        "SELECT l.owner, l.until, o.machine, o.pid FROM leases l "
        "LEFT JOIN owners o ON o.owner = l.owner WHERE l.job_key = ? AND l.idx = ?",
        job_key,
        idx,
    )
    return row


def live(holder: Row, now: float) -> bool:
    return holder_is_live(
        until=holder["until"], machine=holder["machine"], pid=holder["pid"], now=now
    )


def held_error(path: str, job_key: str, index: int | None, holder: Row) -> LeaseHeldError:
    return LeaseHeldError(
        f"{what(job_key, index)} is being worked on by {holder['owner']} (lease until "
        f"{moment_of(holder['until'])}); it will be free when that process stops",
        path=path,
        owner=holder["owner"],
        expires_at=holder["until"],
    )


def check_lease(tx: Tx, job_key: str, idx: int) -> Step[None]:
    """Refuse a change to a job (or video) another live process is working on: a video's
    own lease if it has one, else the job's. Call it after ``job_row``."""
    holder = yield from lease_holder(tx, job_key, idx)
    if holder is None and idx >= 0:
        holder = yield from lease_holder(tx, job_key, -1)
        idx = -1
    if holder is not None and holder["owner"] != tx.owner and live(holder, tx.now):
        raise held_error(tx.path, job_key, None if idx < 0 else idx, holder)


def take_lease(tx: Tx, job_key: str, idx: int, lease_seconds: float) -> Step[Lease]:
    until = tx.now + lease_seconds
    yield tx.run(
        "INSERT INTO leases (job_key, idx, owner, until, claimed_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (job_key, idx) DO UPDATE SET owner = excluded.owner, "
        "until = excluded.until, claimed_at = CASE WHEN leases.owner = excluded.owner "
        "THEN leases.claimed_at ELSE excluded.claimed_at END",
        job_key,
        idx,
        tx.owner,
        until,
        tx.now,
    )
    when = moment_of(until)
    assert when is not None
    return Lease(job_key, None if idx < 0 else idx, tx.owner, when)


def sweep(tx: Tx) -> Step[None]:
    """``submitting`` jobs whose writer is gone become ``submit_unknown``; leases of gone
    holders are dropped."""
    rows = yield tx.all(
        "SELECT j.job_key, l.owner, l.until, o.machine, o.pid FROM jobs j "
        "LEFT JOIN leases l ON l.job_key = j.job_key AND l.idx = -1 "
        "LEFT JOIN owners o ON o.owner = l.owner WHERE j.state = 'submitting'"
    )
    gone = [row["job_key"] for row in rows if row["owner"] is None or not live(row, tx.now)]
    if gone:
        logger.warning(
            "journal %r: %d job(s) were being submitted by a process that is gone (%s); "
            "they are submit_unknown now and will not be submitted again",
            tx.path,
            len(gone),
            ", ".join(gone[:3]) + (", ..." if len(gone) > 3 else ""),
        )
        # "still submitting" again in the UPDATE: its answer may be committing right now
        yield tx.many(
            "UPDATE jobs SET state = 'submit_unknown', error_type = ?, error_message = ?, "
            "updated_at = ? WHERE job_key = ? AND state = 'submitting'",
            [(*INTERRUPTED, tx.now, key) for key in gone],
        )
    # Leases that keep nobody off any more: expired, or held by a process known dead.
    yield tx.run("DELETE FROM leases WHERE until < ? AND owner != ?", tx.now, tx.owner)
    holders = yield tx.all(
        "SELECT owner, machine, pid FROM owners WHERE owner != ? "
        "AND owner IN (SELECT owner FROM leases)",
        tx.owner,
    )
    for row in holders:
        if not holder_is_live(until=math.inf, machine=row["machine"], pid=row["pid"], now=0):
            yield tx.run("DELETE FROM leases WHERE owner = ?", row["owner"])
    # Owners holding nothing are forgotten once surely gone (or silent for a day).
    idle = yield tx.all(
        "SELECT owner, seen_at, machine, pid FROM owners WHERE owner != ? "
        "AND owner NOT IN (SELECT owner FROM leases)",
        tx.owner,
    )
    for row in idle:
        if not holder_is_live(
            until=row["seen_at"] + OWNER_SILENCE,
            machine=row["machine"],
            pid=row["pid"],
            now=tx.now,
        ):
            yield tx.run("DELETE FROM owners WHERE owner = ?", row["owner"])
