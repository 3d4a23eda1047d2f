"""What the ``wait_and_download`` pipeline tells a journal, in the pipeline's own terms.

The pipeline holds one ``Recorder``: the base class itself when the client has no
journal (every method a no-op), ``JournalRecord`` otherwise. So the pipeline has one path,
and a journal is one object behind it, not a branch at every step.

Order matters and is kept here: ids are accepted (committed) before the first status
call; a job's ``Succeed`` and its URLs are committed before its first byte is fetched; a
video is recorded ``done`` before the pipeline reports it; a failure is recorded before
its outcome. What the journal recorded as done, with its file still there at the recorded
size, is reported again without a status call or a byte fetched (for an object in a
bucket: there at the recorded size, asked of the store with one HEAD).

An upload to an ``s3://`` destination is recorded after each part (``save_upload_state``:
its upload id, part size, the video host's validator, the parts' numbers and ETags), so a
process that takes the id over after a crash continues the same multipart upload from its
next part; the record is cleared once the video is done, or its upload given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._exceptions import (
    InvalidDestinationError,
    JobFailedError,
    LeaseHeldError,
    SiliconFlowError,
    StorageError,
    WaitTimeoutError,
)
from .._logging import logger
from .._models import (
    Outcome,
    Status,
    StoredFile,
    StoredVideo,
    Timings,
    Video,
    VideoFile,
    VideoResults,
    VideoStatus,
)
from .._sinks import S3Object, S3Target, UploadedPart, UploadState, is_s3_url
from ._base import JobRecord, JobState, Journal, Lease, VideoRecord, normalize_dest

__all__ = ["JournalRecord", "ObjectSize", "Recorder", "decode_upload", "encode_upload"]

#: ``object_size(obj)``: the size of the object at that address, None when there is none.
ObjectSize = Callable[[S3Object], Awaitable[int | None]]


class Recorder:
    """The pipeline's side of a journal. This base records nothing (no journal)."""

    #: True when upload states are kept (``on_state`` is worth calling).
    keeps_uploads = False

    async def accept(self, request_ids: list[str], dest: Path | S3Target) -> dict[str, Outcome]:
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

    async def video_done(self, request_id: str, video: StoredFile) -> None:
        """One video is complete under its final name (or key)."""

    async def video_failed(self, request_id: str, index: int, error: BaseException) -> None:
        """One video could not be fetched."""

    async def upload_state(self, request_id: str, index: int) -> UploadState | None:
        """The multipart upload an earlier process left for this video, if recorded."""
        return None

    async def save_upload_state(self, request_id: str, index: int, state: UploadState) -> None:
        """Where one video's multipart upload stands (after each part)."""

    def holds(self, request_id: str) -> bool:
        """True while this batch holds the id's lease."""
        return False

    async def release_one(self, request_id: str) -> None:
        """Give the id's lease back (its outcome is out); never raises."""

    async def release(self) -> None:
        """Give up every lease still held."""


class JournalRecord(Recorder):
    """Records one batch into ``journal``."""

    keeps_uploads = True

    def __init__(
        self, journal: Journal, *, sha256: bool = False, object_size: ObjectSize | None = None
    ) -> None:
        self.journal = journal
        # Asks the store whether a recorded object is still there (None: no store here).
        self.object_size = object_size
        # Outcomes must carry each file's digest: a journal entry without one is re-read.
        self.sha256 = sha256
        # Job keys whose lease we hold or asked for: added before the claim is awaited, so
        # that a claim committed under a cancellation is still given back.
        self.claimed: set[str] = set()
        # A job journaled before its submit is keyed by a generated key, not its id.
        self.keys: dict[str, str] = {}
        self.dest: Path | S3Target = Path.cwd()

    def key(self, request_id: str) -> str:
        return self.keys.get(request_id, request_id)

    async def accept(self, request_ids: list[str], dest: Path | S3Target) -> dict[str, Outcome]:
        self.dest = dest
        records = await self.journal.accept_known(request_ids, dest=_dest_text(dest))
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
        [record] = await self.journal.accept([request_id], dest=_dest_text(self.dest))
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

    async def video_done(self, request_id: str, video: StoredFile) -> None:
        key = self.key(request_id)
        await self.journal.video_done(
            key,
            video.index,
            # The journal outlives the working directory: absolute paths, s3:// URLs.
            path=str(video.path.absolute()) if isinstance(video, VideoFile) else video.location,
            size=video.size,
            sha256=video.sha256,
        )
        if isinstance(video, StoredVideo):
            await self.journal.save_upload_state(key, video.index, None)  # completed: gone

    async def video_failed(self, request_id: str, index: int, error: BaseException) -> None:
        key = self.key(request_id)
        await self.journal.video_failed(key, index, error)
        if not (isinstance(error, StorageError) and error.retryable):
            # Given up, so the upload (if any) was aborted; a store outage leaves it open
            # and recorded, for the next try to continue.
            await self.journal.save_upload_state(key, index, None)

    async def upload_state(self, request_id: str, index: int) -> UploadState | None:
        kept = await self.journal.upload_state(self.key(request_id), index)
        if kept is None:
            return None
        try:
            return decode_upload(kept)
        except (ValueError, TypeError, KeyError) as exc:
            # Only costs a fresh upload (the old one expires by the bucket's lifecycle).
            logger.warning("journal: the upload state of %r is unreadable: %s", request_id, exc)
            return None

    async def save_upload_state(self, request_id: str, index: int, state: UploadState) -> None:
        await self.journal.save_upload_state(self.key(request_id), index, encode_upload(state))

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
        files: list[StoredFile] = []
        stale: list[int] = []
        if record.dest != _dest_text(self.dest) or (
            self.sha256 and any(video.sha256 is None for video in record.videos)
        ):
            # Asked into another folder or bucket (fetched there, never reported from one
            # the caller did not name: not even looked at, a store may be out of reach), or
            # for digests the journal lacks (the files are re-read).
            stale = [video.index for video in record.videos]
        for video in () if stale else record.videos:
            found = None if video.path is None else await self._still_there(video.path, video)
            if found is None:
                stale.append(video.index)  # gone or changed since: fetch it again
                continue
            files.append(found)
        if not stale:
            return Outcome(rid, _status_of(record), tuple(files), None)
        # Another process holding the id is at it already: it is waited for like any held id.
        with contextlib.suppress(LeaseHeldError):
            await self.journal.reopen(record.job_key, stale)
        return None

    async def _still_there(self, path: str, video: VideoRecord) -> StoredFile | None:
        """The recorded video, when its file (or object) is there at the recorded size."""
        if not is_s3_url(path):
            size = await asyncio.to_thread(_size_of, path)
            if size is None or size != video.size:
                return None
            return VideoFile(Path(path), size, video.sha256, True, video.index)
        if self.object_size is None:
            return None
        try:
            obj = S3Object.parse(path)
        except InvalidDestinationError:
            return None
        try:
            size = await self.object_size(obj)
        except StorageError as exc:
            # Fetched again then: the upload finds the object if it is there after all,
            # and otherwise fails as this id's outcome, not the batch's.
            logger.warning("could not check %s in the store: %s", path, exc)
            return None
        if size is None or size != video.size:
            return None
        return StoredVideo(obj.bucket, obj.key, size, None, True, video.index)


def encode_upload(state: UploadState) -> str:
    """An upload's state as the journal keeps it (JSON)."""
    data: dict[str, Any] = {
        "upload_id": state.upload_id,
        "part_size": state.part_size,
        "etag": state.etag,
        "last_modified": state.last_modified,
        "total": state.total,
        "parts": [[p.number, p.etag, p.size] for p in state.parts],
        "bucket": state.bucket,
        "key": state.key,
        "validated": state.validated,
    }
    return json.dumps(data, separators=(",", ":"))


def decode_upload(text: str) -> UploadState:
    """What :func:`encode_upload` wrote; ValueError, TypeError or KeyError if it is not."""
    data = json.loads(text)
    return UploadState(
        upload_id=str(data["upload_id"]),
        part_size=int(data["part_size"]),
        etag=data["etag"],
        last_modified=data["last_modified"],
        total=None if data["total"] is None else int(data["total"]),
        parts=tuple(UploadedPart(int(n), str(e), int(z)) for n, e, z in data["parts"]),
        # Absent from states recorded before the object was: taken to be this one.
        bucket=None if data.get("bucket") is None else str(data["bucket"]),
        key=None if data.get("key") is None else str(data["key"]),
        validated=data.get("validated") is not False,
    )


def _dest_text(dest: Path | S3Target) -> str:
    """A destination as the journal records it: an absolute folder, or ``s3://B/PREFIX/``."""
    return str(dest) if isinstance(dest, S3Target) else normalize_dest(dest)


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


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
