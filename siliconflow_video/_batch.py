"""``download_as_completed`` and ``wait_and_download``: every video of every job on disk
(or in a bucket, for an ``s3://BUCKET/PREFIX`` destination), as one pipeline.

Jobs are polled together by the client's scheduler; the moment one succeeds its videos start
downloading (at most ``max_concurrent_downloads`` at once) while the others are still being
polled. Each id ends in its own ``Outcome``; nothing one id does cancels another.

The pipeline runs in a task of its own and hands each outcome, once recorded, to a queue
that :func:`stream_batch` yields from. So the caller's code between two outcomes never runs
inside the pipeline's task group (a failure there cannot cancel the caller), and closing
the stream cancels the pipeline: transfers stop, ``.part`` files stay for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol

from ._exceptions import (
    ConfigurationError,
    DownloadError,
    LeaseHeldError,
    SiliconFlowError,
    UnsafeFileNameError,
    WaitTimeoutError,
)
from ._journal import Recorder
from ._logging import WAITING_FOR, logger, scrub_urls
from ._models import (
    EventKind,
    Naming,
    Outcome,
    ProgressCallback,
    ProgressEvent,
    StoredFile,
    StoredVideo,
    VideoFile,
    VideoStatus,
    WaitResult,
    check_request_id,
)
from ._naming import check_name, default_name, target_path
from ._sinks import S3Object, S3Target, StateCallback, UploadState

__all__ = ["BatchClient", "Destination", "Target", "run_batch", "stream_batch"]

StatusListener = Callable[[VideoStatus], None]

#: Where a batch puts its videos: a folder, or a bucket and key prefix.
Destination = Path | S3Target
#: Where one video goes: a file path in the folder, or an object in the bucket.
Target = Path | S3Object


class BatchClient(Protocol):
    """What the pipeline needs from a client: its waits, a fresh status, and one video's
    transfer (the client owns the sessions, the limits and the disk-write state)."""

    def check_usable(self) -> None:
        """Raise a plain error when the client cannot be used here (closed, other loop)."""
        ...

    def completions(
        self,
        request_ids: list[str],
        *,
        timeout: float | None,
        on_status: Callable[[str], StatusListener | None] | None,
    ) -> AsyncGenerator[WaitResult, None]: ...

    async def get_status(self, request_id: str) -> VideoStatus: ...

    async def fetch_video(
        self,
        url: str,
        target: Target,
        *,
        refresh_url: Callable[[], Awaitable[str | None]],
        request_id: str,
        index: int,
        on_progress: Callable[[int, int | None], None] | None,
        resume: UploadState | None = None,
        on_state: StateCallback | None = None,
    ) -> StoredFile:
        """One video into ``target``: a file (``download_video``) or an object
        (``upload_video``, resumed from ``resume`` and reporting to ``on_state``)."""
        ...


def _safe(progress: ProgressCallback | None) -> ProgressCallback:
    """A progress callback that cannot break a download: a bug in a progress bar must not
    cost a paid video."""
    if progress is None:
        return lambda event: None

    def call(event: ProgressEvent) -> None:
        try:
            progress(event)
        except Exception:  # noqa: BLE001 - logged, never allowed to stop the batch
            logger.exception("progress callback raised on %s", event)

    return call


def _as_error(exc: BaseException, request_id: str) -> SiliconFlowError:
    if isinstance(exc, SiliconFlowError):
        if exc.request_id is None:
            exc.request_id = request_id
        return exc
    error = DownloadError(
        f"unexpected {type(exc).__name__}: {scrub_urls(str(exc))}", request_id=request_id
    )
    error.__cause__ = exc
    return error


class _Batch:
    def __init__(
        self,
        client: BatchClient,
        dest: Destination,
        *,
        max_concurrent_downloads: int,
        progress: ProgressCallback | None,
        naming: Naming | None,
        record: Recorder,
    ) -> None:
        self.client = client
        self.record = record
        self.releasing: set[asyncio.Task[None]] = set()
        self.dest = dest
        self.slots = asyncio.Semaphore(max_concurrent_downloads)
        self.notify = _safe(progress)
        # Byte counts come per piece of the body: with nobody to tell, skip them.
        self.counting_bytes = progress is not None
        self.naming = naming
        # Keyed case-insensitively for files: on macOS and Windows "A.mp4" and "a.mp4" are
        # one file. Object keys are exact (S3 keys are case-sensitive).
        self.claimed: dict[str, tuple[str, int]] = {}
        self.outcomes: dict[str, Outcome] = {}
        # What the stream yields, in the order the ids finished.
        self.finished: asyncio.Queue[Outcome | None] = asyncio.Queue()

    def listener(self, request_id: str) -> Callable[[VideoStatus], None]:
        def on_status(status: VideoStatus) -> None:
            self.record.polled(status)
            self.notify(ProgressEvent(request_id, EventKind.STATUS, status=status.status))

        return on_status

    def finish(self, outcome: Outcome) -> None:
        if outcome.request_id in self.outcomes:
            return  # one outcome per id, ever
        self.outcomes[outcome.request_id] = outcome
        if self.record.holds(outcome.request_id):
            # Given back now, not at the end of the batch: another process may be waiting
            # for this id while holding one this batch waits for.
            task = asyncio.get_running_loop().create_task(
                self.record.release_one(outcome.request_id)
            )
            self.releasing.add(task)
            task.add_done_callback(self.releasing.discard)
        self.finished.put_nowait(outcome)
        self.notify(
            ProgressEvent(
                outcome.request_id,
                EventKind.DONE,
                status=outcome.status.status if outcome.status else None,
                error=outcome.error,
            )
        )

    def target(self, request_id: str, index: int, url: str) -> Target:
        name = (self.naming or default_name)(request_id, index, url)
        target: Target
        if isinstance(self.dest, S3Target):
            # The same plain, safe names as on disk: PREFIX/ + name, never a deeper key.
            target = self.dest.object_for(check_name(name))
            claim = target.key
        else:
            target = target_path(self.dest, name)
            claim = target.name.casefold()
        owner = self.claimed.setdefault(claim, (request_id, index))
        if owner != (request_id, index):
            raise UnsafeFileNameError(
                f"file name {name!r} is already used by {owner[0]!r} video {owner[1]}; "
                "the naming function must give each video its own name",
                request_id=request_id,
            )
        return target

    async def refresh_url(self, request_id: str, index: int) -> str | None:
        urls = (await self.client.get_status(request_id)).urls
        if index >= len(urls):
            return None
        self.record.url_seen(request_id, index, urls[index])
        return urls[index]

    async def one_video(self, request_id: str, index: int, url: str, target: Target) -> StoredFile:
        def on_bytes(done: int, total: int | None) -> None:
            self.notify(
                ProgressEvent(
                    request_id, EventKind.BYTES, index=index, bytes_done=done, bytes_total=total
                )
            )

        async def on_state(state: UploadState) -> None:
            await self.record.save_upload_state(request_id, index, state)

        try:
            async with self.slots:
                uploading = isinstance(target, S3Object)
                video = await self.client.fetch_video(
                    url,
                    target,
                    refresh_url=lambda: self.refresh_url(request_id, index),
                    request_id=request_id,
                    index=index,
                    on_progress=on_bytes if self.counting_bytes else None,
                    # What an earlier process uploaded of this video, and each part as it
                    # goes: a crash then costs at most one part.
                    resume=await self.record.upload_state(request_id, index) if uploading else None,
                    on_state=on_state if uploading and self.record.keeps_uploads else None,
                )
        except Exception as exc:
            try:
                await self.record.video_failed(request_id, index, exc)
            except SiliconFlowError as journal_error:
                # The video's own failure is the news (a full disk fails both); unrecorded,
                # the job stays unfinished in the journal and resume tries it again.
                logger.warning("the journal did not record the failure: %s", journal_error)
            raise
        await self.record.video_done(request_id, video)
        self.notify(
            ProgressEvent(
                request_id,
                EventKind.FILE,
                index=index,
                bytes_done=video.size,
                bytes_total=video.size,
                path=video.path if isinstance(video, VideoFile) else None,
                location=video.location,
            )
        )
        return video

    async def download(self, status: VideoStatus) -> None:
        rid = status.request_id
        try:
            targets = [(i, url, self.target(rid, i, url)) for i, url in enumerate(status.urls)]
        except Exception as exc:  # noqa: BLE001 - a name refused, or a naming callback's
            # own bug: recorded as this id's failure, never the batch's
            await self.ended(WaitResult(rid, status, _as_error(exc, rid)))
            return
        try:
            await self.record.succeeded(status)
            # One video failing must not stop its siblings: gather them all, then report.
            results = await asyncio.gather(
                *(self.one_video(rid, i, url, target) for i, url, target in targets),
                return_exceptions=True,
            )
        except Exception as exc:  # noqa: BLE001 - becomes this id's outcome
            self.finish(Outcome(rid, status, (), _as_error(exc, rid)))
            return
        files = tuple(r for r in results if isinstance(r, (VideoFile, StoredVideo)))
        errors = [r for r in results if not isinstance(r, (VideoFile, StoredVideo))]
        for err in errors:
            if not isinstance(err, Exception):
                raise err  # CancelledError, KeyboardInterrupt: not ours to keep
        each = tuple(_as_error(err, rid) for err in errors)
        self.finish(Outcome(rid, status, files, each[0] if each else None, each))

    async def ended(self, result: WaitResult) -> None:
        error = result.error or SiliconFlowError("no status", request_id=result.request_id)
        try:
            await self.record.ended(result.request_id, error)
        except SiliconFlowError as exc:  # the journal refused: say so rather than lose it
            error = exc
        self.finish(Outcome(result.request_id, result.status, (), error))

    def waited(self, result: WaitResult, tasks: asyncio.TaskGroup) -> None:
        if result.error is not None or result.status is None:
            tasks.create_task(self.ended(result))
        else:
            tasks.create_task(self.download(result.status))

    async def wait_for(
        self, request_ids: list[str], timeout: float | None, tasks: asyncio.TaskGroup
    ) -> None:
        completions = self.client.completions(request_ids, timeout=timeout, on_status=self.listener)
        async with contextlib.aclosing(completions):
            async for result in completions:
                self.waited(result, tasks)

    async def after_lease(
        self, request_id: str, timeout: float | None, tasks: asyncio.TaskGroup
    ) -> None:
        """Another process holds this id: wait for it to let go (as a second process waits
        for a ``.part`` lock), then take what it finished, or carry on where it stopped."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        # For a progress display (the CLI's row says "waiting for another process").
        logger.info(
            "waiting for another process: it holds the journal's lease on %r",
            request_id,
            extra={WAITING_FOR: request_id},
        )
        try:
            if not await self.record.claim(request_id, wait=timeout):
                error = WaitTimeoutError(request_id, timeout or 0.0, None)
                error.__cause__ = LeaseHeldError(
                    "another process is working on this id", request_id=request_id
                )
                self.finish(Outcome(request_id, None, (), error))
                return
            known = await self.record.known_outcome(request_id)
        except Exception as exc:  # noqa: BLE001 - a journal that fails here fails this id
            self.finish(Outcome(request_id, None, (), _as_error(exc, request_id)))
            return
        if known is not None:
            self.finish(known)
            return
        left = None if timeout is None else max(0.0, timeout - (loop.time() - start))
        await self.wait_for([request_id], left, tasks)


def stream_batch(
    client: BatchClient,
    request_ids: Iterable[str],
    dest: Destination,
    *,
    timeout: float | None,
    max_concurrent_downloads: int,
    progress: ProgressCallback | None,
    naming: Naming | None,
    record: Recorder,
) -> AsyncGenerator[Outcome, None]:
    """One outcome per distinct id, each the moment its id is finished (and recorded);
    ``record`` is told of every step (a journal's, or one that records nothing).

    Closing the generator early (``aclose()``, or leaving an ``aclosing`` block) cancels
    what is still running: partial files are kept, leases released."""
    if isinstance(request_ids, str):
        raise TypeError("request_ids must be a list of ids, not one string")
    if max_concurrent_downloads < 1:
        raise ConfigurationError("max_concurrent_downloads must be >= 1")
    return _stream(
        client,
        list(request_ids),
        dest,
        timeout=timeout,
        max_concurrent_downloads=max_concurrent_downloads,
        progress=progress,
        naming=naming,
        record=record,
    )


async def _stream(
    client: BatchClient,
    ids: list[str],
    dest: Destination,
    *,
    timeout: float | None,
    max_concurrent_downloads: int,
    progress: ProgressCallback | None,
    naming: Naming | None,
    record: Recorder,
) -> AsyncGenerator[Outcome, None]:
    client.check_usable()  # a closed client, or another loop's: a plain error, before any task
    batch = _Batch(
        client,
        dest,
        max_concurrent_downloads=max_concurrent_downloads,
        progress=progress,
        naming=naming,
        record=record,
    )
    unique = list(dict.fromkeys(ids))
    valid: list[str] = []
    for rid in unique:
        try:
            valid.append(check_request_id(rid))
        except SiliconFlowError as exc:
            batch.finish(Outcome(rid, None, (), exc))
    runner = asyncio.create_task(_pipeline(batch, valid, dest, timeout))
    runner.add_done_callback(lambda _: batch.finished.put_nowait(None))
    try:
        while (outcome := await batch.finished.get()) is not None:
            yield outcome
        error = None if runner.cancelled() else runner.exception()
        if error is not None:
            raise error
        for rid in unique:
            if rid not in batch.outcomes:
                yield _no_result(rid)
    finally:
        if not runner.done():
            runner.cancel()
            # Not `await runner`: that would turn our own cancellation into the runner's.
            await asyncio.wait((runner,))
        if not runner.cancelled():
            runner.exception()  # retrieved: raised above, or the stream was left early


async def _pipeline(
    batch: _Batch, valid: list[str], dest: Destination, timeout: float | None
) -> None:
    record = batch.record
    if isinstance(dest, Path):  # a bucket has no folder to make: its keys are names
        try:
            await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(
                f"cannot create the destination folder {str(dest)!r}: {exc.strerror or exc}",
                path=str(dest),
            ) from exc
    try:
        known = await record.accept(valid, dest)
        ready: list[str] = []
        held: list[str] = []
        for rid in valid:
            if rid in known:
                batch.finish(known[rid])
            elif await record.claim(rid, wait=0):
                ready.append(rid)
            else:
                held.append(rid)
        async with asyncio.TaskGroup() as tasks:
            for rid in held:
                tasks.create_task(batch.after_lease(rid, timeout, tasks))
            await batch.wait_for(ready, timeout, tasks)
    finally:
        if batch.releasing:
            await asyncio.wait(set(batch.releasing))
        try:
            await asyncio.shield(record.release())
        except SiliconFlowError as exc:
            # Every outcome is out; a lease left behind expires on its own.
            logger.warning("the journal did not release this batch's leases: %s", exc)


async def run_batch(
    client: BatchClient,
    request_ids: Iterable[str],
    dest: Destination,
    *,
    timeout: float | None,
    max_concurrent_downloads: int,
    progress: ProgressCallback | None,
    naming: Naming | None,
    record: Recorder,
) -> list[Outcome]:
    """One outcome per id, in the order given: :func:`stream_batch`, collected."""
    if isinstance(request_ids, str):
        raise TypeError("request_ids must be a list of ids, not one string")
    ids = list(request_ids)
    outcomes: dict[str, Outcome] = {}
    stream = stream_batch(
        client,
        ids,
        dest,
        timeout=timeout,
        max_concurrent_downloads=max_concurrent_downloads,
        progress=progress,
        naming=naming,
        record=record,
    )
    async with contextlib.aclosing(stream):
        async for outcome in stream:
            outcomes[outcome.request_id] = outcome
    return [outcomes.get(rid) or _no_result(rid) for rid in ids]


def _no_result(request_id: str) -> Outcome:
    # Every id is reported by the pipeline; this only guards the promise of one outcome
    # per id against a bug, so that the other ids' outcomes are never lost to a KeyError.
    return Outcome(
        request_id, None, (), SiliconFlowError("no result came back", request_id=request_id)
    )
