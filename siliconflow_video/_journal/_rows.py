"""Reading records: rows of ``jobs``, ``videos`` and ``leases`` as ``JobRecord`` values.

One step for every backend (see ``_sql``): the journal's reads, ``read_jobs`` from a
script, and the records each durable write returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._base import ErrorInfo, JobRecord, JobState, VideoRecord, VideoState, moment_of
from ._owners import holder_is_live
from ._sql import Step, Tx

__all__ = ["effective_state", "lease_is_live", "select_jobs"]

_JOB_COLUMNS = """
    j.*, l.owner AS lease_owner, l.until AS lease_until,
    o.machine AS lease_machine, o.pid AS lease_pid
"""
_JOB_JOINS = """
    FROM jobs j
    LEFT JOIN leases l ON l.job_key = j.job_key AND l.idx = -1
    LEFT JOIN owners o ON o.owner = l.owner
"""


def _error(row: Any) -> ErrorInfo | None:
    if row["error_type"] is None:
        return None
    return ErrorInfo(row["error_type"], row["error_message"] or "")


def _video(row: Any) -> VideoRecord:
    return VideoRecord(
        job_key=row["job_key"],
        index=row["idx"],
        state=VideoState(row["state"]),
        url=row["url"],
        url_seen_at=moment_of(row["url_seen_at"]),
        size=row["size"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        bytes_done=row["bytes_done"],
        path=row["path"],
        sha256=row["sha256"],
        error=_error(row),
        updated_at=moment_of(row["updated_at"]),
        finished_at=moment_of(row["finished_at"]),
    )


def lease_is_live(row: Any, now: float) -> bool:
    """Whether the lease joined into a job row (``lease_*`` columns) keeps others off."""
    if row["lease_owner"] is None:
        return False
    return holder_is_live(
        until=row["lease_until"], machine=row["lease_machine"], pid=row["lease_pid"], now=now
    )


def effective_state(row: Any, now: float) -> JobState:
    """The job's state as it should be reported: a ``submitting`` job whose writer is gone
    is ``submit_unknown`` even before a writable open has recorded that."""
    state = JobState(row["state"])
    if state is JobState.SUBMITTING and not lease_is_live(row, now):
        return JobState.SUBMIT_UNKNOWN
    return state


def _job(row: Any, videos: tuple[VideoRecord, ...], now: float) -> JobRecord:
    live = lease_is_live(row, now)
    return JobRecord(
        job_key=row["job_key"],
        request_id=row["request_id"],
        state=effective_state(row, now),
        dest=row["dest"],
        model=row["model"],
        payload_json=row["payload_json"],
        submit_key=row["submit_key"],
        remote_status=row["remote_status"],
        remote_reason=row["remote_reason"],
        error=_error(row),
        poll_count=row["poll_count"],
        inference_s=row["inference_s"],
        created_at=moment_of(row["created_at"]),
        submitted_at=moment_of(row["submitted_at"]),
        updated_at=moment_of(row["updated_at"]),
        last_polled_at=moment_of(row["last_polled_at"]),
        finished_at=moment_of(row["finished_at"]),
        videos=videos,
        lease_owner=row["lease_owner"] if live else None,
        lease_expires_at=moment_of(row["lease_until"]) if live else None,
    )


def select_jobs(
    tx: Tx,
    *,
    where: str = "",
    params: tuple[Any, ...] = (),
    states: Iterable[JobState] | None = None,
    unfinished: bool = False,
) -> Step[list[JobRecord]]:
    """Jobs with their videos, oldest first. ``where`` is an extra SQL condition on ``j``."""
    wanted = None if states is None else {JobState(s) for s in states}
    conditions = [where] if where else []
    if unfinished:
        conditions.append("j.state NOT IN ('done', 'failed')")
    if wanted is not None:
        stored = {s.value for s in wanted}
        if JobState.SUBMIT_UNKNOWN in wanted:
            stored.add(JobState.SUBMITTING.value)  # some may be reported as unknown
        conditions.append(f"j.state IN ({', '.join('?' * len(stored))})")
        params = (*params, *sorted(stored))
    clause = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = yield tx.all(
        f"SELECT {_JOB_COLUMNS} {_JOB_JOINS} {clause} ORDER BY j.created_at, j.{tx.dialect.seq}",
        *params,
    )
    videos: dict[str, list[VideoRecord]] = {}
    if rows:
        video_rows = yield tx.all(
            f"SELECT v.* FROM videos v JOIN jobs j ON j.job_key = v.job_key {clause} "
            "ORDER BY v.job_key, v.idx",
            *params,
        )
        for vrow in video_rows:
            videos.setdefault(vrow["job_key"], []).append(_video(vrow))
    jobs = [_job(row, tuple(videos.get(row["job_key"], ())), tx.now) for row in rows]
    if wanted is not None:
        jobs = [job for job in jobs if job.state in wanted]
    return jobs
