"""Reading records: rows of ``jobs``, ``videos`` and ``leases`` as ``JobRecord`` values.

One step for every backend (see ``_sql``): the journal's reads, ``read_jobs`` from a
script, and the records each durable write returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._base import ErrorInfo, JobRecord, JobState, VideoRecord, VideoState, moment_of
from ._owners import holder_is_live
from ._sql import PAUSE, Step, Tx

__all__ = ["effective_state", "lease_is_live", "select_jobs"]

_VIDEO_COLUMNS = (
    "idx",
    "state",
    "url",
    "url_seen_at",
    "size",
    "etag",
    "last_modified",
    "bytes_done",
    "path",
    "sha256",
    "error_type",
    "error_message",
    "updated_at",
    "finished_at",
)
# A job and its videos in one statement (one round trip to a server): one row per video,
# or one with the v_ columns NULL for a job without videos.
_JOB_COLUMNS = """
    j.*, l.owner AS lease_owner, l.until AS lease_until,
    o.machine AS lease_machine, o.pid AS lease_pid,
""" + ", ".join(f"v.{c} AS v_{c}" for c in _VIDEO_COLUMNS)
_JOB_JOINS = """
    FROM jobs j
    LEFT JOIN leases l ON l.job_key = j.job_key AND l.idx = -1
    LEFT JOIN owners o ON o.owner = l.owner
    LEFT JOIN videos v ON v.job_key = j.job_key
"""
#: Rows turned into records between two chances for the event loop to run.
_SLICE = 500


def _error(row: Any, prefix: str = "") -> ErrorInfo | None:
    if row[f"{prefix}error_type"] is None:
        return None
    return ErrorInfo(row[f"{prefix}error_type"], row[f"{prefix}error_message"] or "")


def _video(row: Any) -> VideoRecord:
    return VideoRecord(
        job_key=row["job_key"],
        index=row["v_idx"],
        state=VideoState(row["v_state"]),
        url=row["v_url"],
        url_seen_at=moment_of(row["v_url_seen_at"]),
        size=row["v_size"],
        etag=row["v_etag"],
        last_modified=row["v_last_modified"],
        bytes_done=row["v_bytes_done"],
        path=row["v_path"],
        sha256=row["v_sha256"],
        error=_error(row, "v_"),
        updated_at=moment_of(row["v_updated_at"]),
        finished_at=moment_of(row["v_finished_at"]),
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
        f"SELECT {_JOB_COLUMNS} {_JOB_JOINS} {clause} "
        f"ORDER BY j.created_at, j.{tx.dialect.seq}, v.idx",
        *params,
    )
    jobs: list[JobRecord] = []
    first: Any = None
    videos: list[VideoRecord] = []
    for n, row in enumerate(rows, 1):
        if first is not None and row["job_key"] != first["job_key"]:
            jobs.append(_job(first, tuple(videos), tx.now))
            videos = []
        if first is None or row["job_key"] != first["job_key"]:
            first = row
        if row["v_idx"] is not None:
            videos.append(_video(row))
        if n % _SLICE == 0:
            yield PAUSE
    if first is not None:
        jobs.append(_job(first, tuple(videos), tx.now))
    if wanted is not None:
        jobs = [job for job in jobs if job.state in wanted]
    return jobs
