"""What the ``wait_and_download`` pipeline tells a journal, in the pipeline's own terms.

The pipeline holds one ``Recorder``: ``NoRecord`` when the client has no journal (every
method a no-op), ``JournalRecord`` otherwise. So the pipeline has one path, and a journal
is one object behind it, not a branch at every step.

Order matters and is kept here: ids are accepted (committed) before the first status
call; a job's ``Succeed`` and its URLs are committed before its first byte is fetched; a
video is recorded ``done`` before the pipeline reports it; a failure is recorded before
its outcome. What the journal recorded as done, with its file still there at the recorded
size, is reported again without a status call or a byte fetched.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

from .._exceptions import JobFailedError, LeaseHeldError, SiliconFlowError, WaitTimeoutError
from .._models import Outcome, VideoFile, VideoStatus
from ._base import JobRecord, JobState, Journal, Lease

__all__ = ["JournalRecord", "NoRecord", "Recorder"]


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

    async def release(self) -> None:
        """Give up every lease taken."""


NoRecord = Recorder


class JournalRecord(Recorder):
    """Records one batch into ``journal``."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.leases: list[Lease] = []
        # A job journaled before its submit is keyed by a generated key, not its id.
        self.keys: dict[str, str] = {}

    async def accept(self, request_ids: list[str], dest: Path) -> dict[str, Outcome]:
        records = await self.journal.accept(request_ids, dest=dest)
        known: dict[str, Outcome] = {}
        for record in records:
            if record.request_id is not None:
                self.keys[record.request_id] = record.job_key
            outcome = await self._outcome_of(record)
            if outcome is not None:
                known[outcome.request_id] = outcome
        return known

    def key(self, request_id: str) -> str:
        return self.keys.get(request_id, request_id)

    async def claim(self, request_id: str, *, wait: float | None) -> bool:
        if wait == 0:
            lease = await self.journal.try_claim(self.key(request_id))
        else:
            try:
                lease = await self.journal.claim(
                    self.key(request_id), wait=math.inf if wait is None else wait
                )
            except LeaseHeldError:
                lease = None
        if lease is None:
            return False
        self.leases.append(lease)
        return True

    async def known_outcome(self, request_id: str) -> Outcome | None:
        record = await self.journal.find(request_id)
        return None if record is None else await self._outcome_of(record)

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
            path=str(video.path),
            size=video.size,
            sha256=video.sha256,
        )

    async def video_failed(self, request_id: str, index: int, error: BaseException) -> None:
        await self.journal.video_failed(self.key(request_id), index, error)

    async def release(self) -> None:
        leases, self.leases = self.leases, []
        for lease in leases:
            await self.journal.release(lease)

    async def _outcome_of(self, record: JobRecord) -> Outcome | None:
        """The outcome the journal already holds for a job: done with every file still
        whole at its recorded size, or failed at SiliconFlow. None when there is work left
        (a recorded file gone or changed since is reopened, to be fetched again)."""
        rid = record.request_id
        if rid is None:
            return None
        if record.state is JobState.FAILED and record.remote_status == "Failed":
            return Outcome(rid, None, (), JobFailedError(rid, record.remote_reason))
        if record.state is not JobState.DONE or not record.videos:
            return None
        files: list[VideoFile] = []
        stale: list[int] = []
        for video in record.videos:
            if (
                video.path is None
                or video.size is None
                or await asyncio.to_thread(_size_of, video.path) != video.size
            ):
                stale.append(video.index)
            else:
                files.append(
                    VideoFile(Path(video.path), video.size, video.sha256, True, video.index)
                )
        if stale:
            await self.journal.reopen(record.job_key, stale)
            return None
        return Outcome(rid, None, tuple(files), None)


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
