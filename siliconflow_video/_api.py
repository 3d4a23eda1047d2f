"""The top-level functions: each builds one ``AsyncClient`` for its call and closes it.

Every keyword is spelled out (as in httpx's ``_api.py``), so a misspelt option is a
``TypeError`` at the call, not a silent default. To share one client across calls (a
service), use ``AsyncClient`` and its methods instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ._client import AsyncClient
from ._config import (
    DEFAULT_DOWNLOAD,
    DEFAULT_POLL,
    DEFAULT_RETRY,
    DownloadPolicy,
    PollPolicy,
    RetryPolicy,
)
from ._journal import Journal
from ._models import Naming, Outcome, ProgressCallback
from ._sinks import S3Settings

__all__ = ["resume", "wait_and_download"]


async def wait_and_download(
    request_ids: Iterable[str],
    dest: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    max_concurrent_downloads: int = 4,
    progress: ProgressCallback | None = None,
    naming: Naming | None = None,
    max_concurrent_requests: int = 16,
    poll: PollPolicy = DEFAULT_POLL,
    poll_interval: float | None = None,
    max_poll_interval: float | None = None,
    request_timeout: float = 60.0,
    retry: RetryPolicy = DEFAULT_RETRY,
    download: DownloadPolicy = DEFAULT_DOWNLOAD,
    trust_env: bool = True,
    journal: str | os.PathLike[str] | Journal | None = None,
    s3: S3Settings | None = None,
) -> list[Outcome]:
    """Wait for every job and download every video into ``dest``: a folder, or
    ``s3://BUCKET/PREFIX`` (with the ``[s3]`` extra; ``s3=`` an :class:`S3Settings`, else
    the standard AWS configuration), where each video is streamed into a multipart upload
    and appears, whole, as PREFIX + its file name.

    Returns one :class:`Outcome` per id, in the order given. A job that failed, an id the
    API rejects, or a video that cannot be fetched is that id's outcome; the others carry on.
    Downloads start as soon as each job succeeds. Files are written to ``<name>.part`` and
    renamed only when whole; a rerun over the same folder fetches nothing twice and resumes
    partial files.

    With ``journal=`` (a path: an SQLite file, created 0600; or an open ``Journal``) every
    id is recorded before its first status call and each step after it, so that
    :func:`resume` finishes the work after a restart; what the journal recorded as done is
    reported again without a request.

    ``timeout`` is the deadline for the whole wait (jobs still running then get a
    ``WaitTimeoutError`` outcome); ``request_timeout`` bounds one API request. The other
    keywords are :class:`AsyncClient`'s. To share one client, use
    ``AsyncClient.wait_and_download``.
    """
    async with AsyncClient(
        api_key,
        base_url,
        max_concurrent_requests=max_concurrent_requests,
        poll=poll,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        request_timeout=request_timeout,
        retry=retry,
        max_concurrent_downloads=max_concurrent_downloads,
        download=download,
        trust_env=trust_env,
        journal=journal,
        s3=s3,
    ) as client:
        return await client.wait_and_download(
            request_ids,
            dest,
            timeout=timeout,
            progress=progress,
            naming=naming,
        )


async def resume(
    journal: str | os.PathLike[str] | Journal,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float | None = None,
    max_concurrent_downloads: int = 4,
    progress: ProgressCallback | None = None,
    naming: Naming | None = None,
    max_concurrent_requests: int = 16,
    poll: PollPolicy = DEFAULT_POLL,
    poll_interval: float | None = None,
    max_poll_interval: float | None = None,
    request_timeout: float = 60.0,
    retry: RetryPolicy = DEFAULT_RETRY,
    download: DownloadPolicy = DEFAULT_DOWNLOAD,
    trust_env: bool = True,
    s3: S3Settings | None = None,
) -> list[Outcome]:
    """Finish every unfinished job in ``journal``, each into the destination recorded with
    it, and return one :class:`Outcome` per job (journal order).

    Unfinished: waiting, downloading, or failed on our side (a download that ran out of
    tries, an outage). Jobs SiliconFlow said ``Failed`` stay failed. Jobs whose submit may
    have reached SiliconFlow unanswered (``submit_unknown``) have no requestId to resume:
    they are never resubmitted, and ``read_jobs`` lists them for a person to settle.
    An upload to ``s3://`` cut short by a crash continues from its last recorded part.
    """
    async with AsyncClient(
        api_key,
        base_url,
        max_concurrent_requests=max_concurrent_requests,
        poll=poll,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        request_timeout=request_timeout,
        retry=retry,
        max_concurrent_downloads=max_concurrent_downloads,
        download=download,
        trust_env=trust_env,
        journal=journal,
        s3=s3,
    ) as client:
        return await client.resume(timeout=timeout, progress=progress, naming=naming)
