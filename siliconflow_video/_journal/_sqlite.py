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
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .._exceptions import (
    ConfigurationError,
    JournalError,
    JournalReadOnlyError,
    JournalStateError,
    LeaseHeldError,
    LeaseLostError,
)
from .._logging import logger
from ._base import (
    ErrorInfo,
    JobRecord,
    JobState,
    Journal,
    Lease,
    SubmitIntent,
    normalize_dest,
    sanitize_payload,
)
from ._ops import (
    apply_poll,
    apply_video,
    check_id,
    check_lease,
    expect,
    held_error,
    job_row,
    jobs_by_request_id,
    lease_holder,
    live,
    one_job,
    rearm,
    register_owner,
    renew_owner,
    set_state,
    settle,
    sweep,
    take_lease,
    unregister_owner,
    video_row,
    what,
)
from ._owners import new_owner
from ._schema import Synchronous, connect, read_jobs
from ._writer import GroupWriter, Note, Tx

__all__ = ["SQLiteJournal"]

T = TypeVar("T")


class SQLiteJournal(Journal):
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
        if not lease_seconds > 0:
            raise ConfigurationError("lease_seconds must be > 0")
        if not busy_timeout >= 0 or not flush_interval >= 0:
            raise ConfigurationError("busy_timeout and flush_interval must be >= 0")
        self.path = os.path.expanduser(os.fspath(path))
        self.read_only = read_only
        self.owner = new_owner()
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._lease_seconds = lease_seconds
        self._flush_interval = flush_interval
        self._clock = clock
        self._writer: GroupWriter | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._state = "new"  # new -> open -> closed

    def __repr__(self) -> str:
        mode = " read-only" if self.read_only else ""
        return f"<SQLiteJournal {self.path!r}{mode} {self._state}>"

    # -- life ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._state != "new":
            raise JournalError(f"journal {self.path!r} was already opened", path=self.path)
        conn, self.read_only = await asyncio.to_thread(
            connect,
            self.path,
            read_only=self.read_only,
            busy_timeout=self._busy_timeout,
            synchronous=self._synchronous,
        )
        self._writer = GroupWriter(
            conn,
            path=self.path,
            owner=self.owner,
            clock=self._clock,
            flush_interval=self._flush_interval,
        )
        self._writer.start()
        self._state = "open"
        if self.read_only:
            return
        try:
            await self._write(self._register)
        except BaseException:
            await self._stop()
            raise
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def aclose(self) -> None:
        if self._state != "open":
            self._state = "closed"
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        try:
            if not self.read_only:
                await self._write(self._unregister)
        finally:
            await self._stop()

    async def _stop(self) -> None:
        self._state = "closed"
        if self._writer is not None:
            await self._writer.stop()

    def _abandon(self) -> None:
        """Stop without releasing anything, as a killed process would (for tests)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._state = "closed"
        if self._writer is not None:
            self._writer.abandon()

    async def flush(self) -> None:
        self._usable()
        if not self.read_only:
            await self._write(lambda tx: None)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                await self._write(self._renew_all)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next beat tries again; leases may lapse
                logger.warning("journal %r: could not renew leases", self.path, exc_info=True)

    # -- queueing, on the event loop ----------------------------------------------------------

    def _usable(self) -> None:
        if self._state != "open":
            raise JournalError(f"journal {self.path!r} is {self._state}", path=self.path)

    def _writable(self) -> None:
        self._usable()
        if self.read_only:
            raise JournalReadOnlyError(
                f"journal {self.path!r} is open read-only; this change was not made",
                path=self.path,
            )

    async def _write(self, fn: Callable[[Tx], T]) -> T:
        self._writable()
        assert self._writer is not None
        return await self._writer.write(fn)

    async def _read(self, fn: Callable[[Tx], T]) -> T:
        self._usable()
        assert self._writer is not None
        return await self._writer.read(fn)

    def _note(
        self,
        key: tuple[Any, ...],
        fn: Note,
        fields: dict[str, Any],
        adds: dict[str, int] | None = None,
    ) -> None:
        self._writable()
        assert self._writer is not None
        self._writer.note(key, fn, fields, adds or {})

    # -- operations that run in the journal's thread ---------------------------------------------

    def _register(self, tx: Tx) -> None:
        register_owner(tx)
        sweep(tx)

    def _renew_all(self, tx: Tx) -> None:
        renew_owner(tx, self._lease_seconds)
        sweep(tx)

    def _unregister(self, tx: Tx) -> None:
        unregister_owner(tx)

    # -- durable writes ------------------------------------------------------------------------

    async def accept(
        self,
        request_ids: Iterable[str],
        *,
        dest: str | os.PathLike[str],
        model: str | None = None,
    ) -> list[JobRecord]:
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a list of ids, not one string")
        ids = list(dict.fromkeys(check_id(rid) for rid in request_ids))
        where = normalize_dest(dest)

        def run(tx: Tx) -> list[JobRecord]:
            for rid in ids:
                row = tx.conn.execute(
                    "SELECT job_key, state, remote_status FROM jobs WHERE request_id = ?", (rid,)
                ).fetchone()
                if row is None:
                    tx.conn.execute(
                        "INSERT INTO jobs (job_key, request_id, state, dest, model, "
                        "created_at, updated_at) VALUES (?, ?, 'waiting', ?, ?, ?, ?)",
                        (rid, rid, where, model, tx.now, tx.now),
                    )
                elif row["state"] == "failed" and row["remote_status"] != "Failed":
                    rearm(tx, row["job_key"])
            return jobs_by_request_id(tx, ids)

        return await self._write(run)

    async def begin_submit(
        self,
        payload: Mapping[str, Any],
        *,
        dest: str | os.PathLike[str],
        submit_key: str | None = None,
    ) -> SubmitIntent:
        body = sanitize_payload(payload)
        text = json.dumps(body, ensure_ascii=False, sort_keys=True)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        where = normalize_dest(dest)
        lease_seconds = self._lease_seconds

        def run(tx: Tx) -> SubmitIntent:
            if submit_key is not None:
                row = tx.conn.execute(
                    "SELECT job_key, state, request_id FROM jobs WHERE submit_key = ?",
                    (submit_key,),
                ).fetchone()
                if row is not None:
                    if not (row["state"] == "failed" and row["request_id"] is None):
                        return SubmitIntent(one_job(tx, row["job_key"]), proceed=False)
                    # Its POST surely created nothing (a 400, a 402): trying again is
                    # safe. The same row is used again, so its history stays.
                    tx.conn.execute(
                        "UPDATE jobs SET state = 'submitting', dest = ?, model = ?, "
                        "payload_json = ?, error_type = NULL, error_message = NULL, "
                        "finished_at = NULL, updated_at = ? WHERE job_key = ?",
                        (where, model, text, tx.now, row["job_key"]),
                    )
                    take_lease(tx, row["job_key"], -1, lease_seconds)
                    return SubmitIntent(one_job(tx, row["job_key"]), proceed=True)
            key = f"submit-{uuid.uuid4().hex}"
            tx.conn.execute(
                "INSERT INTO jobs (job_key, state, dest, model, payload_json, submit_key, "
                "created_at, updated_at) VALUES (?, 'submitting', ?, ?, ?, ?, ?, ?)",
                (key, where, model, text, submit_key, tx.now, tx.now),
            )
            take_lease(tx, key, -1, lease_seconds)
            return SubmitIntent(one_job(tx, key), proceed=True)

        return await self._write(run)

    async def submitted(self, job_key: str, request_id: str) -> JobRecord:
        rid = check_id(request_id)

        def run(tx: Tx) -> JobRecord:
            row = job_row(tx, job_key)
            if row["request_id"] == rid and row["state"] != "submitting":
                return one_job(tx, job_key)  # said twice
            expect(row, {"submitting", "submit_unknown"}, "record its requestId")
            check_lease(tx, job_key, -1)
            other = tx.conn.execute(
                "SELECT job_key FROM jobs WHERE request_id = ? AND job_key != ?", (rid, job_key)
            ).fetchone()
            if other is not None:
                raise JournalStateError(
                    f"requestId {rid!r} is already journaled as job {other[0]!r}",
                    path=self.path,
                    request_id=rid,
                )
            tx.conn.execute(
                "UPDATE jobs SET request_id = ?, state = 'waiting', submitted_at = ?, "
                "updated_at = ?, error_type = NULL, error_message = NULL WHERE job_key = ?",
                (rid, tx.now, tx.now, job_key),
            )
            return one_job(tx, job_key)

        return await self._write(run)

    async def submit_unknown(self, job_key: str, error: BaseException | ErrorInfo) -> JobRecord:
        info = ErrorInfo.of(error)

        def run(tx: Tx) -> JobRecord:
            expect(job_row(tx, job_key), {"submitting", "submit_unknown"}, "mark it unknown")
            check_lease(tx, job_key, -1)
            set_state(tx, job_key, JobState.SUBMIT_UNKNOWN, info)
            return one_job(tx, job_key)

        return await self._write(run)

    async def resolve_unknown(self, job_key: str, request_id: str | None) -> JobRecord:
        if request_id is not None:
            return await self.submitted(job_key, request_id)

        def run(tx: Tx) -> JobRecord:
            expect(job_row(tx, job_key), {"submit_unknown"}, "give it up")
            info = ErrorInfo("SubmitAbandoned", "given up: no requestId was found for it")
            set_state(tx, job_key, JobState.FAILED, info, finished=True)
            return one_job(tx, job_key)

        return await self._write(run)

    async def succeeded(
        self, job_key: str, urls: Sequence[str], *, inference_s: float | None = None
    ) -> JobRecord:
        links = list(urls)
        if not links or not all(isinstance(u, str) and u for u in links):
            raise ConfigurationError("succeeded() needs the job's video URLs")

        def run(tx: Tx) -> JobRecord:
            expect(job_row(tx, job_key), {"waiting", "downloading"}, "record its videos")
            check_lease(tx, job_key, -1)
            tx.conn.execute(
                "UPDATE jobs SET state = 'downloading', remote_status = 'Succeed', "
                "inference_s = COALESCE(?, inference_s), updated_at = ?, "
                "error_type = NULL, error_message = NULL WHERE job_key = ?",
                (inference_s, tx.now, job_key),
            )
            for index, url in enumerate(links):
                tx.conn.execute(
                    "INSERT INTO videos (job_key, idx, state, url, url_seen_at, updated_at) "
                    "VALUES (?, ?, 'pending', ?, ?, ?) ON CONFLICT (job_key, idx) DO UPDATE "
                    "SET url = excluded.url, url_seen_at = excluded.url_seen_at, "
                    "updated_at = excluded.updated_at WHERE state != 'done'",
                    (job_key, index, url, tx.now, tx.now),
                )
            return one_job(tx, job_key)

        return await self._write(run)

    async def failed(
        self,
        job_key: str,
        error: BaseException | ErrorInfo,
        *,
        remote_status: str | None = None,
        remote_reason: str | None = None,
    ) -> JobRecord:
        info = ErrorInfo.of(error)

        def run(tx: Tx) -> JobRecord:
            row = job_row(tx, job_key)
            expect(
                row,
                {"submitting", "submit_unknown", "waiting", "downloading", "failed"},
                "mark it failed",
            )
            check_lease(tx, job_key, -1)
            set_state(tx, job_key, JobState.FAILED, info, finished=True)
            if remote_status is not None or remote_reason is not None:
                tx.conn.execute(
                    "UPDATE jobs SET remote_status = COALESCE(?, remote_status), "
                    "remote_reason = COALESCE(?, remote_reason) WHERE job_key = ?",
                    (remote_status, remote_reason, job_key),
                )
            return one_job(tx, job_key)

        return await self._write(run)

    async def video_done(
        self, job_key: str, index: int, *, path: str, size: int, sha256: str | None = None
    ) -> JobRecord:
        location = os.fspath(path)

        def run(tx: Tx) -> JobRecord:
            expect(job_row(tx, job_key), {"downloading", "done"}, "record a video done")
            video_row(tx, job_key, index)
            check_lease(tx, job_key, index)
            tx.conn.execute(
                "UPDATE videos SET state = 'done', path = ?, size = ?, bytes_done = ?, "
                "sha256 = COALESCE(?, sha256), error_type = NULL, error_message = NULL, "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) "
                "WHERE job_key = ? AND idx = ?",
                (location, size, size, sha256, tx.now, tx.now, job_key, index),
            )
            settle(tx, job_key)
            return one_job(tx, job_key)

        return await self._write(run)

    async def reopen(self, job_key: str, indexes: Iterable[int]) -> JobRecord:
        wanted = sorted(set(indexes))

        def run(tx: Tx) -> JobRecord:
            expect(job_row(tx, job_key), {"done", "downloading"}, "reopen its videos")
            check_lease(tx, job_key, -1)
            for index in wanted:
                video_row(tx, job_key, index)
                tx.conn.execute(
                    "UPDATE videos SET state = 'pending', bytes_done = 0, finished_at = NULL, "
                    "updated_at = ? WHERE job_key = ? AND idx = ?",
                    (tx.now, job_key, index),
                )
            tx.conn.execute(
                "UPDATE jobs SET state = 'waiting', finished_at = NULL, updated_at = ? "
                "WHERE job_key = ?",
                (tx.now, job_key),
            )
            return one_job(tx, job_key)

        return await self._write(run)

    async def video_failed(
        self, job_key: str, index: int, error: BaseException | ErrorInfo
    ) -> JobRecord:
        info = ErrorInfo.of(error)

        def run(tx: Tx) -> JobRecord:
            expect(job_row(tx, job_key), {"downloading", "failed"}, "record a video failed")
            if video_row(tx, job_key, index)["state"] == "done":
                raise JournalStateError(
                    f"video {index} of job {job_key!r} is already done", path=self.path
                )
            check_lease(tx, job_key, index)
            tx.conn.execute(
                "UPDATE videos SET state = 'failed', error_type = ?, error_message = ?, "
                "updated_at = ? WHERE job_key = ? AND idx = ?",
                (info.type, info.message, tx.now, job_key, index),
            )
            settle(tx, job_key)
            return one_job(tx, job_key)

        return await self._write(run)

    # -- notes ----------------------------------------------------------------------------------

    def note_poll(self, job_key: str, remote_status: str) -> None:
        self._note(
            ("poll", job_key),
            apply_poll,
            {"job_key": job_key, "remote_status": remote_status, "at": self._clock()},
            {"polls": 1},
        )

    def note_video(
        self,
        job_key: str,
        index: int,
        *,
        url: str | None = None,
        size: int | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        bytes_done: int | None = None,
    ) -> None:
        fields: dict[str, Any] = {"job_key": job_key, "idx": index}
        given = {
            "url": url,
            "size": size,
            "etag": etag,
            "last_modified": last_modified,
            "bytes_done": bytes_done,
        }
        fields.update({k: v for k, v in given.items() if v is not None})
        if url is not None:
            fields["url_seen_at"] = self._clock()
        self._note(("video", job_key, index), apply_video, fields)

    # -- leases ---------------------------------------------------------------------------------

    async def claim(self, job_key: str, index: int | None = None, *, wait: float = 0.0) -> Lease:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        pause = min(0.5, self._lease_seconds / 10)
        while True:
            try:
                return await self._write(self._claimer(job_key, index))
            except LeaseHeldError:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                await asyncio.sleep(min(pause, remaining))

    async def try_claim(self, job_key: str, index: int | None = None) -> Lease | None:
        try:
            return await self._write(self._claimer(job_key, index))
        except LeaseHeldError:
            return None

    def _claimer(self, job_key: str, index: int | None) -> Callable[[Tx], Lease]:
        idx = -1 if index is None else index
        lease_seconds = self._lease_seconds

        def run(tx: Tx) -> Lease:
            job_row(tx, job_key)
            if idx >= 0:
                video_row(tx, job_key, idx)
            holder = lease_holder(tx, job_key, idx)
            if holder is not None and holder["owner"] != tx.owner:
                if live(holder, tx.now):
                    raise held_error(self.path, job_key, index, holder)
                logger.info(
                    "journal %r: taking over %s from %s, which is gone",
                    self.path,
                    what(job_key, index),
                    holder["owner"],
                )
            return take_lease(tx, job_key, idx, lease_seconds)

        return run

    async def renew(self, lease: Lease) -> Lease:
        idx = -1 if lease.index is None else lease.index
        lease_seconds = self._lease_seconds

        def run(tx: Tx) -> Lease:
            holder = lease_holder(tx, lease.job_key, idx)
            if holder is None or holder["owner"] != tx.owner:
                raise LeaseLostError(
                    f"the lease on {what(lease.job_key, lease.index)} was lost"
                    + (f" to {holder['owner']}" if holder is not None else "")
                    + "; stop working on it",
                    path=self.path,
                    owner=holder["owner"] if holder is not None else None,
                    expires_at=holder["until"] if holder is not None else None,
                )
            return take_lease(tx, lease.job_key, idx, lease_seconds)

        return await self._write(run)

    async def release(self, lease: Lease) -> None:
        idx = -1 if lease.index is None else lease.index

        def run(tx: Tx) -> None:
            tx.conn.execute(
                "DELETE FROM leases WHERE job_key = ? AND idx = ? AND owner = ?",
                (lease.job_key, idx, tx.owner),
            )

        await self._write(run)

    # -- reads ----------------------------------------------------------------------------------

    async def jobs(
        self, *, unfinished: bool = False, states: Iterable[JobState] | None = None
    ) -> list[JobRecord]:
        wanted = None if states is None else list(states)
        return await self._read(
            lambda tx: read_jobs(tx.conn, now=tx.now, unfinished=unfinished, states=wanted)
        )

    async def job(self, job_key: str) -> JobRecord:
        return await self._read(lambda tx: one_job(tx, job_key))

    async def find(self, request_id: str) -> JobRecord | None:
        def run(tx: Tx) -> JobRecord | None:
            found = read_jobs(tx.conn, now=tx.now, where="j.request_id = ?", params=(request_id,))
            return found[0] if found else None

        return await self._read(run)
