"""``wait_and_download``: every video of every job on disk, as one pipeline.

Jobs are polled together by the client's scheduler; the moment one succeeds its videos start
downloading (at most ``max_concurrent_downloads`` at once) while the others are still being
polled. Each id ends in its own ``Outcome``; nothing one id does cancels another.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from ._client import AsyncClient, WaitResult, _check_request_id
from ._download import VideoFile, download_video
from ._exceptions import (
    ConfigurationError,
    DownloadError,
    SiliconFlowError,
    UnsafeFileNameError,
)
from ._logging import logger, scrub_urls
from ._models import Status, VideoStatus
from ._naming import default_name, target_path

__all__ = ["EventKind", "Outcome", "ProgressEvent", "run_batch", "wait_and_download"]

#: ``naming(request_id, index, url) -> file name``; the name must be one plain component.
Naming = Callable[[str, int, str], str]


class EventKind(enum.StrEnum):
    """What a ``ProgressEvent`` reports."""

    STATUS = "status"  #: the job's status changed
    BYTES = "bytes"  #: more bytes of one video arrived (``bytes_done`` of ``bytes_total``)
    FILE = "file"  #: one video is complete under its final name
    DONE = "done"  #: the id is finished; ``error`` says whether it failed


@attrs.frozen
class ProgressEvent:
    """One step of one id's progress, given to the ``progress`` callback."""

    request_id: str
    kind: EventKind
    status: Status | None = None
    index: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    path: Path | None = None
    error: SiliconFlowError | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@attrs.frozen
class Outcome:
    """How one requestId ended.

    ``ok`` is True when the job succeeded and every one of its videos is on disk, whole.
    ``files`` holds the complete videos (path, size, sha256), in the API's order.
    """

    request_id: str
    status: VideoStatus | None
    files: tuple[VideoFile, ...] = ()
    error: SiliconFlowError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def paths(self) -> list[Path]:
        """The complete videos' paths, one per video, in the API's order."""
        return [f.path for f in self.files]


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
        client: AsyncClient,
        dest: Path,
        *,
        max_concurrent_downloads: int,
        progress: ProgressCallback | None,
        naming: Naming | None,
    ) -> None:
        self.client = client
        self.dest = dest
        self.slots = asyncio.Semaphore(max_concurrent_downloads)
        self.notify = _safe(progress)
        # Byte counts come per piece of the body: with nobody to tell, skip them.
        self.counting_bytes = progress is not None
        self.naming = naming
        # Keyed case-insensitively: on macOS and Windows "A.mp4" and "a.mp4" are one file.
        self.claimed: dict[str, tuple[str, int]] = {}
        self.outcomes: dict[str, Outcome] = {}

    def listener(self, request_id: str) -> Callable[[VideoStatus], None]:
        def on_status(status: VideoStatus) -> None:
            self.notify(ProgressEvent(request_id, EventKind.STATUS, status=status.status))

        return on_status

    def finish(self, outcome: Outcome) -> None:
        self.outcomes[outcome.request_id] = outcome
        self.notify(
            ProgressEvent(
                outcome.request_id,
                EventKind.DONE,
                status=outcome.status.status if outcome.status else None,
                error=outcome.error,
            )
        )

    def target(self, request_id: str, index: int, url: str) -> Path:
        name = (self.naming or default_name)(request_id, index, url)
        path = target_path(self.dest, name)
        owner = self.claimed.setdefault(path.name.casefold(), (request_id, index))
        if owner != (request_id, index):
            raise UnsafeFileNameError(
                f"file name {name!r} is already used by {owner[0]!r} video {owner[1]}; "
                "the naming function must give each video its own name",
                request_id=request_id,
            )
        return path

    async def refresh_url(self, request_id: str, index: int) -> str | None:
        urls = (await self.client.get_status(request_id)).urls
        return urls[index] if index < len(urls) else None

    async def one_video(self, request_id: str, index: int, url: str, path: Path) -> VideoFile:
        def on_bytes(done: int, total: int | None) -> None:
            self.notify(
                ProgressEvent(
                    request_id, EventKind.BYTES, index=index, bytes_done=done, bytes_total=total
                )
            )

        async with self.slots:
            video = await download_video(
                self.client._videos(),
                url,
                path,
                refresh_url=lambda: self.refresh_url(request_id, index),
                policy=self.client.download_policy,
                writes=self.client._disk_writes,
                request_id=request_id,
                index=index,
                on_progress=on_bytes if self.counting_bytes else None,
            )
        self.notify(
            ProgressEvent(
                request_id,
                EventKind.FILE,
                index=index,
                bytes_done=video.size,
                bytes_total=video.size,
                path=video.path,
            )
        )
        return video

    async def download(self, status: VideoStatus) -> None:
        rid = status.request_id
        try:
            targets = [(i, url, self.target(rid, i, url)) for i, url in enumerate(status.urls)]
            # One video failing must not stop its siblings: gather them all, then report.
            results = await asyncio.gather(
                *(self.one_video(rid, i, url, path) for i, url, path in targets),
                return_exceptions=True,
            )
        except Exception as exc:  # noqa: BLE001 - becomes this id's outcome
            self.finish(Outcome(rid, status, (), _as_error(exc, rid)))
            return
        files = tuple(r for r in results if isinstance(r, VideoFile))
        errors = [r for r in results if not isinstance(r, VideoFile)]
        for err in errors:
            if not isinstance(err, Exception):
                raise err  # CancelledError, KeyboardInterrupt: not ours to keep
        error = _as_error(errors[0], rid) if errors else None
        self.finish(Outcome(rid, status, files, error))

    def waited(self, result: WaitResult, tasks: asyncio.TaskGroup) -> None:
        if result.error is not None or result.status is None:
            self.finish(Outcome(result.request_id, result.status, (), result.error))
        else:
            tasks.create_task(self.download(result.status))


async def run_batch(
    client: AsyncClient,
    request_ids: Iterable[str],
    dest: Path,
    *,
    timeout: float | None,
    max_concurrent_downloads: int,
    progress: ProgressCallback | None,
    naming: Naming | None,
) -> list[Outcome]:
    if isinstance(request_ids, str):
        raise TypeError("request_ids must be a list of ids, not one string")
    if max_concurrent_downloads < 1:
        raise ConfigurationError("max_concurrent_downloads must be >= 1")
    client._api()  # a closed client, or another loop's: a plain error, before any task
    ids = list(request_ids)
    batch = _Batch(
        client,
        dest,
        max_concurrent_downloads=max_concurrent_downloads,
        progress=progress,
        naming=naming,
    )
    valid: list[str] = []
    for rid in dict.fromkeys(ids):
        try:
            valid.append(_check_request_id(rid))
        except SiliconFlowError as exc:
            batch.finish(Outcome(rid, None, (), exc))
    try:
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the destination folder {str(dest)!r}: {exc.strerror or exc}",
            path=str(dest),
        ) from exc
    async with asyncio.TaskGroup() as tasks:
        completions = client._completions(valid, timeout=timeout, listener=batch.listener)
        async with contextlib.aclosing(completions):
            async for result in completions:
                batch.waited(result, tasks)
    return [batch.outcomes.get(rid) or _no_result(rid) for rid in ids]


def _no_result(request_id: str) -> Outcome:
    # Every id is reported by the pipeline; this only guards the promise of one outcome
    # per id against a bug, so that the other ids' outcomes are never lost to a KeyError.
    return Outcome(
        request_id, None, (), SiliconFlowError("no result came back", request_id=request_id)
    )


async def wait_and_download(
    request_ids: Iterable[str],
    dest: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    max_concurrent_downloads: int | None = None,
    progress: ProgressCallback | None = None,
    naming: Naming | None = None,
    **client_options: Any,
) -> list[Outcome]:
    """Wait for every job and download every video into ``dest``.

    Returns one :class:`Outcome` per id, in the order given. A job that failed, an id the
    API rejects, or a video that cannot be fetched is that id's outcome; the others carry on.
    Downloads start as soon as each job succeeds. Files are written to ``<name>.part`` and
    renamed only when whole; a rerun over the same folder fetches nothing twice and resumes
    partial files.

    ``client_options`` go to :class:`AsyncClient` (``max_concurrent_requests``,
    ``poll_interval``, ...). To share one client, use ``AsyncClient.wait_and_download``.
    """
    async with AsyncClient(api_key, base_url, **client_options) as client:
        return await client.wait_and_download(
            request_ids,
            dest,
            timeout=timeout,
            max_concurrent_downloads=max_concurrent_downloads,
            progress=progress,
            naming=naming,
        )
