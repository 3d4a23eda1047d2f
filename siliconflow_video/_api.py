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
from ._models import Naming, Outcome, ProgressCallback

__all__ = ["wait_and_download"]


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
) -> list[Outcome]:
    """Wait for every job and download every video into ``dest``.

    Returns one :class:`Outcome` per id, in the order given. A job that failed, an id the
    API rejects, or a video that cannot be fetched is that id's outcome; the others carry on.
    Downloads start as soon as each job succeeds. Files are written to ``<name>.part`` and
    renamed only when whole; a rerun over the same folder fetches nothing twice and resumes
    partial files.

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
    ) as client:
        return await client.wait_and_download(
            request_ids,
            dest,
            timeout=timeout,
            progress=progress,
            naming=naming,
        )
