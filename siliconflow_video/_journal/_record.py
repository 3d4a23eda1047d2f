"""What the ``wait_and_download`` pipeline tells a journal, in the pipeline's own terms.

The pipeline holds one ``Recorder``: the base class itself when the client has no
journal (every method a no-op), ``JournalRecord`` otherwise. So the pipeline has one path,
and a journal is one object behind it, not a branch at every step.

Order matters and is kept here: ids are accepted (committed) before the first status
call; a job's ``Succeed`` and its URLs are committed before its first byte is fetched; a
video is recorded ``done`` before the pipeline reports it; a failure is recorded before
its outcome. What the journal recorded as done, with its file still there at the recorded
size, is reported again without a status call or a byte fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from datetime import UTC, datetime
from pathlib import Path

from .._exceptions import JobFailedError, LeaseHeldError, SiliconFlowError, WaitTimeoutError
from .._logging import logger
from .._models import (
    Outcome,
    Status,
    Timings,
    Video,
    VideoFile,
    VideoResults,
    VideoStatus,
)
from ._base import JobRecord, JobState, Journal, Lease

__all__ = ["JournalRecord", "Recorder"]


class Recorder:
    """The pipeline's side of a journal. This base records nothing (no journal)."""

    async def accept(self, request_ids: list[str], dest: Path) -> dict[str, Outcome]:
        """Record the ids; return the outcomes already known (done or finally failed)."""
        return {}

    async def claim(self, request_id: str, *, wait: float | None) -> bool:
        """Take the id's lease, waiting at most ``wait`` seconds (None: as long as it
        takes); False if another live process still holds it then."""
        return True

    async def known_outcome(self, request_id: str) -> Outcome | None:
        """Once the lease is ours: the outcome another process already recorded, if any."""
        return None

    def polled(self, status: VideoStatus) -> None:
        """One status call answered."""

    async def succeeded(self, status: VideoStatus) -> None:
        """The job succeeded with these URLs (before any download starts)."""

    async def ended(self, request_id: str, error: SiliconFlowError) -> None:
        """Waiting for the job ended without its videos."""

    def url_seen(self, request_id: str, index: int, url: str) -> None:
        """A fresh URL for one video."""

    async def video_done(self, request_id: str, video: VideoFile) -> None:
        """One video is complete under its final name."""

    async def video_failed(self, request_id: str, index: int, error: BaseException) -> None:
        """One video could not be fetched."""

    def holds(self, request_id: str) -> bool:
        """True while this batch holds the id's lease."""
        return False

    async def release_one(self, request_id: str) -> None:
        """Give the id's lease back (its outcome is out); never raises."""

    async def release(self) -> None:
        """Give up every lease still held."""


class JournalRecord(Recorder):
    """Records one batch into ``journal``."""

    def __init__(self, journal: Journal, *, sha256: bool = False) -> None:
        self.journal = journal
        # Outcomes must carry each file's digest: a journal entry without one is re-read.
        self.sha256 = sha256
        # Job keys whose lease we hold or asked for: added before the claim is awaited, so
        # that a claim committed under a cancellation is still given back.
        self.claimed: set[str] = set()
        # A job journaled before its submit is keyed by a generated key, not its id.
        self.keys: dict[str, str] = {}
        self.dest = Path.cwd()

    def key(self, request_id: str) -> str:
        return self.keys.get(request_id, request_id)

    async def accept(self, request_ids: list[str], dest: Path) -> dict[str, Outcome]:
        self.dest = dest
        records = await self.journal.accept_known(request_ids, dest=dest)
        known: dict[str, Outcome] = {}
        for record in records.values():
            if record.request_id is not None:
                self.keys[record.request_id] = record.job_key
            outcome = await self._outcome_of(record)
            if outcome is not None:
                known[outcome.request_id] = outcome
        return known

    async def claim(self, request_id: str, *, wait: float | None) -> bool:
        key = self.key(request_id)
        self.claimed.add(key)
        if wait == 0:
            lease = await self.journal.try_claim(key)
        else:
            try:
                lease = await self.journal.claim(key, wait=math.inf if wait is None else wait)
            except LeaseHeldError:
                lease = None
        if lease is None:
            self.claimed.discard(key)
        return lease is not None

    async def known_outcome(self, request_id: str) -> Outcome | None:
        # Accepted again now that the lease is ours: a job the other process failed on our
        # side is re-armed, as on a fresh run.
        [record] = await self.journal.accept([request_id], dest=self.dest)
        return await self._outcome_of(record)

    def polled(self, status: VideoStatus) -> None:
        self.journal.note_poll(self.key(status.request_id), status.status.value)

    async def succeeded(self, status: VideoStatus) -> None:
        timings = status.results.timings if status.results else None
        await self.journal.succeeded(
            self.key(status.request_id),
            status.urls,
            inference_s=timings.inference if timings else None,
        )

    async def ended(self, request_id: str, error: SiliconFlowError) -> None:
        if isinstance(error, WaitTimeoutError):
            return  # still running at SiliconFlow: the job stays waiting
        if isinstance(error, JobFailedError):
            await self.journal.failed(
                self.key(request_id), error, remote_status="Failed", remote_reason=error.reason
            )
        else:
            await self.journal.failed(self.key(request_id), error)

    def url_seen(self, request_id: str, index: int, url: str) -> None:
        self.journal.note_video(self.key(request_id), index, url=url)

    async def video_done(self, request_id: str, video: VideoFile) -> None:
        await self.journal.video_done(
            self.key(request_id),
            video.index,
            path=str(video.path.absolute()),  # the journal outlives the working directory
            size=video.size,
            sha256=video.sha256,
        )

    async def video_failed(self, request_id: str, index: int, error: BaseException) -> None:
        await self.journal.video_failed(self.key(request_id), index, error)

    def holds(self, request_id: str) -> bool:
        return self.key(request_id) in self.claimed

    async def release_one(self, request_id: str) -> None:
        key = self.key(request_id)
        self.claimed.discard(key)
        await self._give_back(key)

    async def release(self) -> None:
        claimed, self.claimed = self.claimed, set()
        for key in claimed:
            await self._give_back(key)

    async def _give_back(self, key: str) -> None:
        try:
            await self.journal.release(Lease(key, None, self.journal.owner, datetime.now(UTC)))
        except SiliconFlowError as exc:
            # The work is done and recorded; a lease not given back expires, or goes when
            # this journal closes. Never worth an outcome.
            logger.warning("journal: could not give back the lease of %r: %s", key, exc)

    async def _outcome_of(self, record: JobRecord) -> Outcome | None:
        """The outcome the journal already holds for a job: done with every file still
        whole at its recorded size, or failed at SiliconFlow. None when there is work left
        (a recorded file gone or changed since is reopened, to be fetched again)."""
        rid = record.request_id
        if rid is None:
            return None
        if record.state is JobState.FAILED and record.remote_status == "Failed":
            failed = VideoStatus(rid, Status.FAILED, record.remote_reason)
            return Outcome(rid, failed, (), JobFailedError(rid, record.remote_reason))
        if record.state is not JobState.DONE or not record.videos:
            return None
        files: list[VideoFile] = []
        stale: list[int] = []
        for video in record.videos:
            size = None if video.path is None else await asyncio.to_thread(_size_of, video.path)
            if video.path is None or size is None or size != video.size:
                stale.append(video.index)  # gone or changed since: fetch it again
                continue
            files.append(VideoFile(Path(video.path), size, video.sha256, True, video.index))
        if record.dest != _absolute(self.dest) or (
            self.sha256 and any(video.sha256 is None for video in record.videos)
        ):
            # Asked into another folder (fetched there, never reported from one the caller
            # did not name), or for digests the journal lacks (the files are re-read).
            stale = [video.index for video in record.videos]
        if not stale:
            return Outcome(rid, _status_of(record), tuple(files), None)
        # Another process holding the id is at it already: it is waited for like any held id.
        with contextlib.suppress(LeaseHeldError):
            await self.journal.reopen(record.job_key, stale)
        return None


def _status_of(record: JobRecord) -> VideoStatus | None:
    """The ``Succeed`` answer the journal recorded (its URLs as last seen, long expired
    perhaps): what the outcome of a job done in an earlier run reports."""
    if record.request_id is None or any(video.url is None for video in record.videos):
        return None
    results = VideoResults(
        videos=tuple(Video(url=video.url) for video in record.videos if video.url is not None),
        timings=Timings(inference=record.inference_s),
    )
    return VideoStatus(record.request_id, Status.SUCCEED, None, results)


def _absolute(dest: Path) -> str:
    return os.path.abspath(dest)  # as the journal records a folder


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
