"""The journal's operations, once for every SQL backend.

``SQLJournal`` is the ``Journal`` interface written as steps (see ``_sql``): each method
checks its arguments on the event loop, then queues a step on its backend's writer (a
``_writer.Queue``) and awaits its commit. A backend supplies the connection and the
writer that drives the steps: ``SQLiteJournal`` from a thread, ``PostgresJournal`` on the
event loop.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
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
    find_job,
    held_error,
    job_row,
    jobs_by_request_id,
    lease_holder,
    live,
    older_jobs,
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
from ._rows import select_jobs
from ._sql import Step, Tx
from ._writer import Note, Queue

__all__ = ["SQLJournal"]

T = TypeVar("T")


class SQLJournal(Journal):
    """The operations of a journal in SQL tables; a backend opens the connection."""

    #: the journal's name in messages and errors: a file path, or a URL without password
    path: str

    def __init__(
        self,
        *,
        read_only: bool,
        lease_seconds: float,
        flush_interval: float,
        clock: Callable[[], float],
    ) -> None:
        if not lease_seconds > 0:
            raise ConfigurationError("lease_seconds must be > 0")
        if not flush_interval >= 0:
            raise ConfigurationError("flush_interval must be >= 0")
        self.read_only = read_only
        self.owner = new_owner()
        self._lease_seconds = lease_seconds
        self._flush_interval = flush_interval
        self._clock = clock
        self._writer: Queue | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._state = "new"  # new -> open -> closed

    def __repr__(self) -> str:
        mode = " read-only" if self.read_only else ""
        return f"<{type(self).__name__} {self.path!r}{mode} {self._state}>"

    # -- what a backend supplies -----------------------------------------------------------

    @abc.abstractmethod
    async def _start(self) -> Queue:
        """Connect (creating or migrating the schema); set ``read_only`` if the journal
        cannot be written; return the running writer."""

    @abc.abstractmethod
    def _abandon(self) -> None:
        """Stop without releasing anything, as a killed process would (for tests)."""

    # -- life ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._state != "new":
            raise JournalError(f"journal {self.path!r} was already opened", path=self.path)
        self._writer = await self._start()
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
                await self._write(lambda tx: unregister_owner(tx))
        finally:
            await self._stop()

    async def _stop(self) -> None:
        self._state = "closed"
        if self._writer is not None:
            await self._writer.stop()

    def _stop_beating(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._state = "closed"

    async def flush(self) -> None:
        self._usable()
        if not self.read_only:
            await self._write(_nothing)

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

    async def _write(self, fn: Callable[[Tx], Step[T]]) -> T:
        self._writable()
        assert self._writer is not None
        return await self._writer.write(fn)

    async def _read(self, fn: Callable[[Tx], Step[T]]) -> T:
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

    # -- steps of our own ------------------------------------------------------------------------

    def _register(self, tx: Tx) -> Step[None]:
        yield from register_owner(tx)
        yield from sweep(tx)

    def _renew_all(self, tx: Tx) -> Step[None]:
        yield from renew_owner(tx, self._lease_seconds)
        yield from sweep(tx)

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

        return await self._write(self._accepting(ids, where, model, known=False))

    async def accept_known(
        self, request_ids: Iterable[str], *, dest: str | os.PathLike[str]
    ) -> dict[str, JobRecord]:
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a list of ids, not one string")
        ids = list(dict.fromkeys(check_id(rid) for rid in request_ids))
        return await self._write(self._accepting(ids, normalize_dest(dest), None, known=True))

    def _accepting(
        self, ids: list[str], where: str, model: str | None, *, known: bool
    ) -> Callable[[Tx], Step[Any]]:
        def run(tx: Tx) -> Step[Any]:
            # Set-wise, in the order given; an id already journaled keeps its row (and
            # one being accepted by another process right now is waited for, not doubled).
            # One id (the pipeline's usual call) without a list parameter: cheaper.
            one = len(ids) == 1
            given = ids[0] if one else tx.dialect.each_param(ids)
            source = "(SELECT ? AS value) AS one" if one else tx.dialect.each
            inserted = yield tx.run(
                "INSERT INTO jobs (job_key, request_id, state, dest, model, created_at, "
                "updated_at) SELECT value, value, 'waiting', CAST(? AS TEXT), CAST(? AS TEXT), "
                f"?, ? FROM {source} WHERE true ON CONFLICT DO NOTHING",
                where,
                model,
                tx.now,
                tx.now,
                given,
            )
            if inserted == len(ids):  # all new: none to wait for again
                return {} if known else (yield from jobs_by_request_id(tx, ids))
            again = yield tx.all(
                "SELECT job_key FROM jobs WHERE request_id"
                + (" = ?" if one else tx.dialect.in_list)
                + " AND state = 'failed' AND (remote_status IS NULL OR remote_status != 'Failed')",
                given,
            )
            for row in again:
                yield from rearm(tx, row["job_key"])
            if known:  # only the rows journaled before this call: the new ones are plain
                return {job.request_id: job for job in (yield from older_jobs(tx, ids))}
            return (yield from jobs_by_request_id(tx, ids))

        return run

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

        def run(tx: Tx) -> Step[SubmitIntent]:
            key = f"submit-{uuid.uuid4().hex}"
            if submit_key is not None:
                # Claims the key, or waits for whoever is claiming it, before deciding.
                yield tx.run(
                    "INSERT INTO jobs (job_key, state, dest, model, payload_json, "
                    "submit_key, created_at, updated_at) "
                    "VALUES (?, 'submitting', ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    key,
                    where,
                    model,
                    text,
                    submit_key,
                    tx.now,
                    tx.now,
                )
                row = yield tx.one(
                    f"SELECT job_key, state, request_id FROM jobs WHERE submit_key = ?"
                    f"{tx.dialect.lock}",
                    submit_key,
                )
                if row["job_key"] != key:
                    if not (row["state"] == "failed" and row["request_id"] is None):
                        job = yield from one_job(tx, row["job_key"])
                        return SubmitIntent(job, proceed=False)
                    # Its POST surely created nothing (a 400, a 402): trying again is
                    # safe. The same row is used again, so its history stays.
                    key = row["job_key"]
                    yield tx.run(
                        "UPDATE jobs SET state = 'submitting', dest = ?, model = ?, "
                        "payload_json = ?, error_type = NULL, error_message = NULL, "
                        "finished_at = NULL, updated_at = ? WHERE job_key = ?",
                        where,
                        model,
                        text,
                        tx.now,
                        key,
                    )
            else:
                yield tx.run(
                    "INSERT INTO jobs (job_key, state, dest, model, payload_json, "
                    "created_at, updated_at) VALUES (?, 'submitting', ?, ?, ?, ?, ?)",
                    key,
                    where,
                    model,
                    text,
                    tx.now,
                    tx.now,
                )
            yield from take_lease(tx, key, -1, lease_seconds)
            job = yield from one_job(tx, key)
            return SubmitIntent(job, proceed=True)

        return await self._write(run)

    async def submitted(self, job_key: str, request_id: str) -> JobRecord:
        rid = check_id(request_id)

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            if row["request_id"] == rid and row["state"] != "submitting":
                return (yield from one_job(tx, job_key))  # said twice
            expect(row, {"submitting", "submit_unknown"}, "record its requestId")
            yield from check_lease(tx, job_key, -1)
            other = yield tx.one(
                "SELECT job_key FROM jobs WHERE request_id = ? AND job_key != ?", rid, job_key
            )
            if other is not None:
                raise JournalStateError(
                    f"requestId {rid!r} is already journaled as job {other['job_key']!r}",
                    path=tx.path,
                    request_id=rid,
                )
            yield tx.run(
                "UPDATE jobs SET request_id = ?, state = 'waiting', submitted_at = ?, "
                "updated_at = ?, error_type = NULL, error_message = NULL WHERE job_key = ?",
                rid,
                tx.now,
                tx.now,
                job_key,
            )
            return (yield from one_job(tx, job_key))

        return await self._write(run)

    async def submit_unknown(self, job_key: str, error: BaseException | ErrorInfo) -> JobRecord:
        info = ErrorInfo.of(error)

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            expect(row, {"submitting", "submit_unknown"}, "mark it unknown")
            yield from check_lease(tx, job_key, -1)
            yield from set_state(tx, job_key, JobState.SUBMIT_UNKNOWN, info)
            return (yield from one_job(tx, job_key))

        return await self._write(run)

    async def resolve_unknown(self, job_key: str, request_id: str | None) -> JobRecord:
        if request_id is not None:
            return await self.submitted(job_key, request_id)

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            expect(row, {"submit_unknown"}, "give it up")
            info = ErrorInfo("SubmitAbandoned", "given up: no requestId was found for it")
            yield from set_state(tx, job_key, JobState.FAILED, info, finished=True)
            return (yield from one_job(tx, job_key))

        return await self._write(run)

    async def succeeded(
        self, job_key: str, urls: Sequence[str], *, inference_s: float | None = None
    ) -> JobRecord:
        links = list(urls)
        if not links or not all(isinstance(u, str) and u for u in links):
            raise ConfigurationError("succeeded() needs the job's video URLs")

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            expect(row, {"waiting", "downloading"}, "record its videos")
            yield from check_lease(tx, job_key, -1)
            yield tx.run(
                "UPDATE jobs SET state = 'downloading', remote_status = 'Succeed', "
                "inference_s = COALESCE(?, inference_s), updated_at = ?, "
                "error_type = NULL, error_message = NULL WHERE job_key = ?",
                inference_s,
                tx.now,
                job_key,
            )
            yield tx.many(
                "INSERT INTO videos (job_key, idx, state, url, url_seen_at, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?, ?) ON CONFLICT (job_key, idx) DO UPDATE "
                "SET url = excluded.url, url_seen_at = excluded.url_seen_at, "
                "updated_at = excluded.updated_at WHERE videos.state != 'done'",
                [(job_key, index, url, tx.now, tx.now) for index, url in enumerate(links)],
            )
            return (yield from one_job(tx, job_key))

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

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            expect(
                row,
                {"submitting", "submit_unknown", "waiting", "downloading", "failed"},
                "mark it failed",
            )
            yield from check_lease(tx, job_key, -1)
            yield from set_state(tx, job_key, JobState.FAILED, info, finished=True)
            if remote_status is not None or remote_reason is not None:
                yield tx.run(
                    "UPDATE jobs SET remote_status = COALESCE(?, remote_status), "
                    "remote_reason = COALESCE(?, remote_reason) WHERE job_key = ?",
                    remote_status,
                    remote_reason,
                    job_key,
                )
            return (yield from one_job(tx, job_key))

        return await self._write(run)

    async def video_done(
        self, job_key: str, index: int, *, path: str, size: int, sha256: str | None = None
    ) -> JobRecord:
        location = os.fspath(path)

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            video = yield from video_row(tx, job_key, index)
            # The same video recorded again (a resume reusing it, maybe after a sibling
            # failed the job again first) changes nothing, whatever the job's state.
            recorded = (video["state"], video["path"], video["size"]) == ("done", location, size)
            if not recorded:
                expect(row, {"downloading", "done"}, "record a video done")
            yield from check_lease(tx, job_key, index)
            if recorded:
                return (yield from one_job(tx, job_key))
            yield tx.run(
                "UPDATE videos SET state = 'done', path = ?, size = ?, bytes_done = ?, "
                "sha256 = COALESCE(?, sha256), error_type = NULL, error_message = NULL, "
                "updated_at = ?, finished_at = COALESCE(finished_at, ?) "
                "WHERE job_key = ? AND idx = ?",
                location,
                size,
                size,
                sha256,
                tx.now,
                tx.now,
                job_key,
                index,
            )
            yield from settle(tx, job_key)
            return (yield from one_job(tx, job_key))

        return await self._write(run)

    async def reopen(self, job_key: str, indexes: Iterable[int]) -> JobRecord:
        wanted = sorted(set(indexes))

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            expect(row, {"done", "downloading"}, "reopen its videos")
            yield from check_lease(tx, job_key, -1)
            for index in wanted:
                yield from video_row(tx, job_key, index)
                yield tx.run(
                    "UPDATE videos SET state = 'pending', bytes_done = 0, finished_at = NULL, "
                    "updated_at = ? WHERE job_key = ? AND idx = ?",
                    tx.now,
                    job_key,
                    index,
                )
            yield tx.run(
                "UPDATE jobs SET state = 'waiting', finished_at = NULL, updated_at = ? "
                "WHERE job_key = ?",
                tx.now,
                job_key,
            )
            return (yield from one_job(tx, job_key))

        return await self._write(run)

    async def video_failed(
        self, job_key: str, index: int, error: BaseException | ErrorInfo
    ) -> JobRecord:
        info = ErrorInfo.of(error)

        def run(tx: Tx) -> Step[JobRecord]:
            row = yield from job_row(tx, job_key)
            expect(row, {"downloading", "failed"}, "record a video failed")
            video = yield from video_row(tx, job_key, index)
            if video["state"] == "done":
                raise JournalStateError(
                    f"video {index} of job {job_key!r} is already done", path=tx.path
                )
            yield from check_lease(tx, job_key, index)
            yield tx.run(
                "UPDATE videos SET state = 'failed', error_type = ?, error_message = ?, "
                "updated_at = ? WHERE job_key = ? AND idx = ?",
                info.type,
                info.message,
                tx.now,
                job_key,
                index,
            )
            yield from settle(tx, job_key)
            return (yield from one_job(tx, job_key))

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

    def _claimer(self, job_key: str, index: int | None) -> Callable[[Tx], Step[Lease]]:
        idx = -1 if index is None else index
        lease_seconds = self._lease_seconds

        def run(tx: Tx) -> Step[Lease]:
            yield from job_row(tx, job_key)
            if idx >= 0:
                yield from video_row(tx, job_key, idx)
            holder = yield from lease_holder(tx, job_key, idx)
            if holder is not None and holder["owner"] != tx.owner:
                if live(holder, tx.now):
                    raise held_error(tx.path, job_key, index, holder)
                logger.info(
                    "journal %r: taking over %s from %s, which is gone",
                    tx.path,
                    what(job_key, index),
                    holder["owner"],
                )
            return (yield from take_lease(tx, job_key, idx, lease_seconds))

        return run

    async def renew(self, lease: Lease) -> Lease:
        idx = -1 if lease.index is None else lease.index
        lease_seconds = self._lease_seconds

        def run(tx: Tx) -> Step[Lease]:
            yield from job_row(tx, lease.job_key)  # takes turns with a takeover
            holder = yield from lease_holder(tx, lease.job_key, idx)
            if holder is None or holder["owner"] != tx.owner:
                raise LeaseLostError(
                    f"the lease on {what(lease.job_key, lease.index)} was lost"
                    + (f" to {holder['owner']}" if holder is not None else "")
                    + "; stop working on it",
                    path=tx.path,
                    owner=holder["owner"] if holder is not None else None,
                    expires_at=holder["until"] if holder is not None else None,
                )
            return (yield from take_lease(tx, lease.job_key, idx, lease_seconds))

        return await self._write(run)

    async def release(self, lease: Lease) -> None:
        idx = -1 if lease.index is None else lease.index

        def run(tx: Tx) -> Step[None]:
            yield tx.run(
                "DELETE FROM leases WHERE job_key = ? AND idx = ? AND owner = ?",
                lease.job_key,
                idx,
                tx.owner,
            )

        await self._write(run)

    # -- reads ----------------------------------------------------------------------------------

    async def jobs(
        self, *, unfinished: bool = False, states: Iterable[JobState] | None = None
    ) -> list[JobRecord]:
        wanted = None if states is None else list(states)
        return await self._read(lambda tx: select_jobs(tx, unfinished=unfinished, states=wanted))

    async def count_jobs(self) -> dict[JobState, int]:
        def run(tx: Tx) -> Step[dict[JobState, int]]:
            counts = dict.fromkeys(JobState, 0)
            rows = yield tx.all(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE state <> ? GROUP BY state",
                JobState.SUBMITTING.value,
            )
            for row in rows:
                counts[JobState(row["state"])] += int(row["n"])
            # A submitting job whose writer is gone reads as submit_unknown: those few rows
            # are read whole, as jobs() reads them. (Two statements: a job that leaves or
            # enters `submitting` between them is miscounted once, in a gauge.)
            submitting = yield from select_jobs(tx, where="j.state = 'submitting'")
            for job in submitting:
                counts[job.state] += 1
            return counts

        return await self._read(run)

    async def job(self, job_key: str) -> JobRecord:
        return await self._read(lambda tx: one_job(tx, job_key))

    async def find(self, request_id: str) -> JobRecord | None:
        return await self._read(lambda tx: find_job(tx, request_id))

    # -- values kept for the client (what the poller learned) ---------------------------------

    async def load_value(self, name: str) -> str | None:
        def run(tx: Tx) -> Step[str | None]:
            row = yield tx.one("SELECT value FROM meta WHERE key = ?", _value_key(name))
            return None if row is None else str(row["value"])

        return await self._read(run)

    async def save_value(self, name: str, value: str) -> None:
        def run(tx: Tx) -> Step[None]:
            yield tx.run(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                _value_key(name),
                value,
            )

        await self._write(run)

    # -- uploads in flight: in the same key/value table, one row per video ------------------

    async def upload_state(self, job_key: str, index: int) -> str | None:
        def run(tx: Tx) -> Step[str | None]:
            row = yield tx.one("SELECT value FROM meta WHERE key = ?", _upload_key(job_key, index))
            return None if row is None else str(row["value"])

        return await self._read(run)

    async def save_upload_state(self, job_key: str, index: int, state: str | None) -> None:
        key = _upload_key(job_key, index)

        def run(tx: Tx) -> Step[None]:
            if state is None:
                yield tx.run("DELETE FROM meta WHERE key = ?", key)
            else:
                yield tx.run(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    key,
                    state,
                )

        await self._write(run)


def _upload_key(job_key: str, index: int) -> str:
    # Apart from the schema's keys and the client's values; the index first, since a job
    # key may hold any character.
    return f"upload:{index}:{job_key}"


def _value_key(name: str) -> str:
    return f"value:{name}"  # apart from the schema's own keys (application, version)


def _nothing(tx: Tx) -> Step[None]:
    return
    yield  # a step that runs no statement
