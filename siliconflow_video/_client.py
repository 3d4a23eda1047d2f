"""``AsyncClient``: status, waiting, submitting, and the session that carries them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiofiles
import aiohttp
import attrs

from ._batch import Destination, Target, run_batch, stream_batch
from ._config import (
    DEFAULT_DOWNLOAD,
    DEFAULT_POLL,
    DEFAULT_RETRY,
    DownloadPolicy,
    PollPolicy,
    RetryPolicy,
    resolve_api_key,
    resolve_base_url,
)
from ._download import DiskWrites, download_video
from ._exceptions import (
    APIStatusError,
    ConfigurationError,
    InvalidDestinationError,
    JobFailedError,
    JournalError,
    MalformedResponseError,
    SiliconFlowError,
    SubmitUnknownError,
    WaitTimeoutError,
)
from ._http import (
    APITransport,
    EnvProxies,
    Proxies,
    is_safe_to_resubmit,
    no_proxies,
    with_retries,
)
from ._journal import (
    JobRecord,
    JobState,
    Journal,
    JournalRecord,
    Lease,
    Recorder,
    open_journal,
)
from ._journal._base import normalize_dest
from ._learning import RunTimes
from ._logging import logger
from ._models import (
    Naming,
    Outcome,
    ProgressCallback,
    Status,
    StoredFile,
    VideoStatus,
    WaitResult,
    check_request_id,
    excerpt,
    parse_status,
)
from ._pacing import GovernorStats, Pacing, RateGovernor
from ._poller import Poller, StatusListener
from ._sinks import (
    S3Object,
    S3Settings,
    S3Store,
    S3Target,
    StateCallback,
    UploadState,
    is_s3_url,
    upload_video,
)

__all__ = ["AsyncClient", "destination", "resume_plan"]

ImageInput = str | bytes | os.PathLike[str]

#: Per id, the callback told of each status a poll reads (or None for none).
OnStatus = Callable[[str], StatusListener | None]


def _sniff_image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    raise ConfigurationError("image bytes are not a PNG, JPEG, WebP or GIF image")


async def _image_field(image: ImageInput) -> str:
    """A URL or data URI as SiliconFlow takes it, from a URL, a path or raw bytes."""
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        path = Path(image)
        try:
            async with aiofiles.open(path, "rb") as f:
                data = await f.read()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read image {str(path)!r}: {exc.strerror or exc}"
            ) from exc
    encoded = base64.b64encode(data).decode("ascii")
    return f"data:{_sniff_image_type(data)};base64,{encoded}"


class AsyncClient:
    """An asyncio client for SiliconFlow's video API.

    ::

        async with AsyncClient() as client:
            request_id = await client.submit(model="Wan-AI/Wan2.2-T2V-A14B", prompt="...")
            status = await client.wait(request_id)

    The key comes from ``api_key`` or ``SILICONFLOW_API_KEY``; the base URL from
    ``base_url``, ``SILICONFLOW_BASE_URL``, or ``https://api.siliconflow.cn/v1``.

    One client polls any number of jobs through one connection pool, with at most
    ``max_concurrent_requests`` API requests in flight, and adapts its request rate to the
    account's rate limit. At most ``max_concurrent_downloads`` videos are in transfer at
    once across every call on the client.

    ``poll`` sets how status calls are spaced; ``poll_interval`` and ``max_poll_interval``
    are shorthands that override those two fields of it. ``request_timeout`` bounds one API
    request (the ``timeout=`` of ``wait`` and friends is the deadline of a whole wait).

    A ``session`` passed in is used for API calls and is not closed by the client; video
    downloads use a separate session that never sees the key: ``video_session`` if given
    (it must have ``auto_decompress=False``; it is not closed either), else one the client
    creates. Sessions the client creates follow ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``
    as requests and httpx do, unless ``trust_env=False`` (``.netrc`` is never read: its
    credentials would clash with the key, or reach the video host).

    A destination may be ``s3://BUCKET/PREFIX`` wherever a folder is accepted (the ``[s3]``
    extra): videos are streamed from the video host into multipart uploads, each object
    visible only once whole. ``s3`` sets the endpoint, region, credentials and part size
    (:class:`S3Settings`); what it leaves out comes from the standard AWS configuration
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...), as boto does. The
    client opens one store per bucket when it is first needed and closes it with itself.

    ``pacing`` replaces the client's own rate governor with one the caller provides (a
    :class:`~siliconflow_video._pacing.Pacing`), for example a rate budget shared by several
    processes on one account; the caller opens and closes it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        max_concurrent_requests: int = 16,
        poll: PollPolicy = DEFAULT_POLL,
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
        request_timeout: float = 60.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_concurrent_downloads: int = 4,
        download: DownloadPolicy = DEFAULT_DOWNLOAD,
        session: aiohttp.ClientSession | None = None,
        video_session: aiohttp.ClientSession | None = None,
        trust_env: bool = True,
        journal: str | os.PathLike[str] | Journal | None = None,
        s3: S3Settings | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        self._api_key = resolve_api_key(api_key)
        self.base_url = resolve_base_url(base_url)
        if max_concurrent_requests < 1:
            raise ConfigurationError("max_concurrent_requests must be >= 1")
        if max_concurrent_downloads < 1:
            raise ConfigurationError("max_concurrent_downloads must be >= 1")
        if not request_timeout > 0:
            raise ConfigurationError("request_timeout must be > 0")
        for name, policy, kind in (
            ("poll", poll, PollPolicy),
            ("retry", retry, RetryPolicy),
            ("download", download, DownloadPolicy),
            ("s3", S3Settings() if s3 is None else s3, S3Settings),
        ):
            if not isinstance(policy, kind):
                raise ConfigurationError(
                    f"{name} must be a {kind.__name__}, got {type(policy).__name__}"
                )
        # The two shorthands override those fields of ``poll``; PollPolicy checks the result.
        shorthands: dict[str, Any] = {"interval": poll_interval, "max_interval": max_poll_interval}
        self.poll_policy = attrs.evolve(
            poll, **{field: value for field, value in shorthands.items() if value is not None}
        )
        self.retry_policy = retry
        self.download_policy = download
        self.max_concurrent_requests = max_concurrent_requests
        self.max_concurrent_downloads = max_concurrent_downloads
        self._request_timeout = request_timeout
        self._session = session
        self._owns_session = session is None
        if video_session is not None and video_session.auto_decompress:
            raise ConfigurationError(
                "video_session must be created with auto_decompress=False: the bytes on "
                "disk must be the bytes the host sent, and their length the announced one"
            )
        # Proxies from the environment, asked per request (never .netrc: see EnvProxies),
        # for the sessions this client makes; a session passed in keeps its own settings.
        self._api_proxies: Proxies = EnvProxies() if trust_env and session is None else no_proxies
        self._video_proxies: Proxies = (
            EnvProxies() if trust_env and video_session is None else no_proxies
        )
        self._download_session = video_session
        self._owns_download_session = video_session is None
        # One cap for every call on this client: a FastAPI app's many requests share it.
        self._download_slots = asyncio.Semaphore(max_concurrent_downloads)
        self._disk_writes = DiskWrites()  # shared by this client's downloads, no one else's
        # The client's own governor, unless the caller shares one between clients or
        # processes (a worker fleet's rate budget in PostgreSQL).
        self._governor: Pacing = RateGovernor() if pacing is None else pacing
        self._transport: APITransport | None = None
        self._poller = Poller(
            self._status_once,
            reachable=self._reached,
            base_url=self.base_url,
            policy=self.poll_policy,
            retry=retry,
            max_in_flight=max_concurrent_requests,
        )
        # A journal given by path (or URL) is opened on first use and closed by the
        # client; one given as a Journal must be open already, and stays the caller's.
        self._owns_journal = journal is not None and not isinstance(journal, Journal)
        self._journal: Journal | None = (
            journal if journal is None or isinstance(journal, Journal) else open_journal(journal)
        )
        self._journal_opened = not self._owns_journal
        self._journal_lock = asyncio.Lock()
        self._learned_loaded = False
        #: The journal says a status was read through this base URL before (see _reached).
        self._journal_vouches = False
        self._answer_kept = False  # this base URL is in the journal already (or was saved)
        self.s3_settings = S3Settings() if s3 is None else s3
        # One store (an aiobotocore client) per bucket, opened on its first video.
        self._stores: dict[str, S3Store] = {}
        self._stores_lock = asyncio.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<AsyncClient base_url={self.base_url!r}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling and close the sessions (and the journal) this client opened."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._poller.aclose()
        finally:
            try:
                if self._owns_download_session and self._download_session is not None:
                    await self._download_session.close()
                if self._owns_session and self._session is not None:
                    await self._session.close()
                await self._close_stores()
            finally:
                await self._save_learned()
                if self._owns_journal and self._journal is not None and self._journal_opened:
                    await self._journal.aclose()

    async def journal(self) -> Journal | None:
        """The client's journal, opened (None when it has none)."""
        self._api()  # a closed client, or another loop's, opens nothing
        if self._journal is None:
            return None
        async with self._journal_lock:
            if not self._journal_opened:
                await self._journal.open()
                self._journal_opened = True
            if not self._learned_loaded:
                self._learned_loaded = True
                await self._load_learned(self._journal)
                await self._load_answered(self._journal)
        return self._journal

    def _reached(self) -> bool:
        """Whether the API at this base URL is known to exist: it answered this client, or
        the journal saw a status read through it. Either way a connection refused is an
        outage to wait out, not a wrong base URL (a restarted service resuming mid-outage)."""
        transport = self._transport
        return self._journal_vouches or (transport is not None and transport.ever_answered)

    async def _load_answered(self, journal: Journal) -> None:
        self._journal_vouches = self._answer_kept = await journal_vouches(journal, self.base_url)

    async def _keep_answered(self) -> None:
        """Record in the journal that a status was read through this base URL, once."""
        journal = self._journal
        if self._answer_kept or journal is None or not self._journal_opened:
            return
        self._answer_kept = True
        if journal.read_only:
            return
        try:
            await journal.save_value(_ANSWERED, _fingerprint(self.base_url))
        except SiliconFlowError as exc:  # worth a warning, never a poll's failure
            logger.warning("journal: could not keep the base URL that answered: %s", exc)

    async def _load_learned(self, journal: Journal) -> None:
        """Take up what an earlier process learned of run times (kept in its journal)."""
        try:
            kept = await journal.load_value(_LEARNED)
        except SiliconFlowError as exc:  # learning again from scratch is no failure
            logger.warning("journal: could not read the learned run times: %s", exc)
            return
        if kept is None or self._poller.learned.to_dict()["samples"]:
            return  # nothing kept, or this client has learned on its own already
        try:
            self._poller.learned = RunTimes.from_dict(json.loads(kept))
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("journal: the run times kept there are unreadable: %s", exc)

    async def _save_learned(self) -> None:
        """Keep what the poller learned in the journal, for the next process."""
        journal = self._journal
        if journal is None or not self._journal_opened or journal.read_only:
            return
        learned = self._poller.learned.to_dict()
        if not learned["samples"]:
            return
        try:
            await journal.save_value(_LEARNED, json.dumps(learned))
        except SiliconFlowError as exc:  # worth a warning, never an outcome
            logger.warning("journal: could not keep the learned run times: %s", exc)

    @property
    def learned(self) -> dict[str, Any]:
        """What the poller has learned of run times, as plain data: ``{"version": 1,
        "samples": {key: [seconds, ...]}}`` (a key is a model and size; ``""`` pools every job).
        With a journal it is kept there when the client closes and taken up by the next."""
        return self._poller.learned.to_dict()

    @property
    def rate_stats(self) -> GovernorStats:
        """The adaptive rate now in force (None: no limit) and the request and 429 counts."""
        return self._governor.stats()

    # -- plumbing ----------------------------------------------------------------------

    def _api(self) -> APITransport:
        if self._closed:
            raise SiliconFlowError("the AsyncClient is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            # Sessions, futures and the poller belong to one loop; silently mixing them
            # hangs or fails deep inside aiohttp.
            raise SiliconFlowError(
                "this AsyncClient was first used in another event loop; create one "
                "AsyncClient per event loop (for example, one per asyncio.run call)"
            )
        if self._transport is None:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=self.max_concurrent_requests, ttl_dns_cache=300
                    ),
                    raise_for_status=False,
                )
            self._transport = APITransport(
                self._session,
                self.base_url,
                self._api_key,
                timeout=self._request_timeout,
                max_concurrent_requests=self.max_concurrent_requests,
                governor=self._governor,
                max_retry_after=self.retry_policy.max_retry_after,
                proxies=self._api_proxies,
            )
        return self._transport

    def _videos(self) -> aiohttp.ClientSession:
        """The video-host session: its own pool, no Authorization, no decompression (the
        bytes on disk must be the bytes served, and their length the announced one)."""
        if self._closed:
            raise SiliconFlowError("the AsyncClient is closed")
        if self._download_session is None:
            self._download_session = aiohttp.ClientSession(
                # No cap here: the client's download slots are the limit.
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
                raise_for_status=False,
            )
        return self._download_session

    async def _store(self, bucket: str) -> S3Store:
        """The open store for ``bucket``: one per bucket per client, made on first use."""
        if self._closed:
            raise SiliconFlowError("the AsyncClient is closed")
        async with self._stores_lock:
            store = self._stores.get(bucket)
            if store is None:
                store = S3Store(S3Target(bucket), self.s3_settings)
                await store.open()
                if self._closed:  # aclose() ran while this one opened: it is not kept
                    await store.aclose()
                    raise SiliconFlowError("the AsyncClient is closed")
                self._stores[bucket] = store
            return store

    async def _close_stores(self) -> None:
        """Close every store; one that fails to close does not keep the others open."""
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            try:
                await store.aclose()
            except Exception as exc:  # noqa: BLE001 - closing: say so, carry on
                logger.warning(
                    "could not close the store for s3://%s: %s", store.bucket, type(exc).__name__
                )

    async def _object_size(self, obj: S3Object) -> int | None:
        store = await self._store(obj.bucket)
        return await store.object_size(obj.key)

    async def _status_once(self, request_id: str) -> VideoStatus:
        body = await self._api().post(
            "/video/status", {"requestId": request_id}, request_id=request_id
        )
        status = parse_status(body, request_id)
        await self._keep_answered()  # a real status: this base URL is SiliconFlow's
        return status

    # -- status --------------------------------------------------------------------------

    async def get_status(self, request_id: str) -> VideoStatus:
        """The job's status now. Transient failures are retried within the retry policy;
        400/401/402/403/404 raise at once."""
        request_id = check_request_id(request_id)
        return await with_retries(self.retry_policy, lambda: self._status_once(request_id))

    async def wait(self, request_id: str, *, timeout: float | None = None) -> VideoStatus:
        """Poll until the job is done and return its ``Succeed`` status.

        Raises ``JobFailedError`` (with ``.reason``) when the job failed, and
        ``WaitTimeoutError`` (a ``TimeoutError``) when ``timeout`` seconds pass first.
        Transient API failures only delay the next poll. Cancelling is clean.
        """
        request_id = check_request_id(request_id)
        status = await self._wait(request_id, timeout=timeout, listener=None)
        if status.status is Status.FAILED:
            raise JobFailedError(request_id, status.reason)
        return status

    async def _wait(
        self, request_id: str, *, timeout: float | None, listener: StatusListener | None
    ) -> VideoStatus:
        self._api()
        future = self._poller.watch(request_id, listener)
        try:
            done, _ = await asyncio.wait((future,), timeout=timeout)
            if not done:
                last = self._poller.last_status(request_id)
                raise WaitTimeoutError(
                    request_id, timeout or 0.0, last.status.value if last else None
                )
            return future.result()
        finally:
            future.cancel()  # a no-op once done; otherwise stops polling for this waiter

    def as_completed(
        self,
        request_ids: Iterable[str],
        *,
        timeout: float | None = None,
        on_status: OnStatus | None = None,
    ) -> AsyncGenerator[WaitResult, None]:
        """Yield one ``WaitResult`` per id, in the order the jobs finish.

        Like ``asyncio.as_completed``, but each result names its id and carries either the
        status or the error: one job's failure never stops the others. After ``timeout``
        seconds the jobs still running come out with a ``WaitTimeoutError``. Leaving the
        loop early stops polling for the rest once the iterator is closed: use
        ``async with contextlib.aclosing(client.as_completed(ids)) as results:`` to make
        that immediate.

        ``on_status(request_id)`` may return a callback that is told of every status a
        poll reads for that id (a live display's feed); it must not raise.
        """
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a list of ids, not one string")
        ids = [check_request_id(rid) for rid in request_ids]
        return self._completions(ids, timeout=timeout, listener=on_status)

    async def _completions(
        self,
        ids: list[str],
        *,
        timeout: float | None,
        listener: OnStatus | None,
    ) -> AsyncGenerator[WaitResult, None]:
        self._api()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Futures, not results, go through the queue: at the deadline a job may be done
        # with its callback not yet run, and it must still come out as done, exactly once.
        finished: asyncio.Queue[asyncio.Future[VideoStatus]] = asyncio.Queue()
        pending: dict[asyncio.Future[VideoStatus], str] = {}
        delivered: set[asyncio.Future[VideoStatus]] = set()

        def on_done(future: asyncio.Future[VideoStatus]) -> None:
            if not future.cancelled():
                finished.put_nowait(future)

        for rid in ids:
            future = self._poller.watch(rid, listener(rid) if listener else None)
            pending[future] = rid
            future.add_done_callback(on_done)
        try:
            while len(delivered) < len(pending):
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    future = await asyncio.wait_for(finished.get(), remaining)
                except TimeoutError:
                    break
                delivered.add(future)
                yield _result(pending[future], future)
            # The deadline passed: the rest come out in the order given, as finished if
            # they did, else timed out.
            for future, rid in pending.items():
                if future in delivered:
                    continue
                if future.done() and not future.cancelled():
                    yield _result(rid, future)
                    continue
                last = self._poller.last_status(rid)
                future.cancel()
                yield WaitResult(
                    rid,
                    last,
                    WaitTimeoutError(rid, timeout or 0.0, last.status.value if last else None),
                )
        finally:
            for future in pending:
                future.cancel()

    # -- submit ----------------------------------------------------------------------------

    async def submit(
        self,
        *,
        model: str,
        prompt: str,
        image_size: str = "1280x720",
        negative_prompt: str | None = None,
        image: ImageInput | None = None,
        seed: int | None = None,
        dest: str | os.PathLike[str] | None = None,
        submit_key: str | None = None,
    ) -> str:
        """Start a generation job and return its requestId.

        ``image`` (for image-to-video models) may be a URL, a path or raw bytes; paths and
        bytes are sent as a data URI. Only answers that prove the job was not created (429,
        503, no connection) are retried: a second submit could pay for a second video.

        With a journal, the intent is committed before the POST and the requestId right
        after it, with ``dest`` (required then) for ``resume``. A ``submit_key`` already
        journaled returns that job's requestId instead of submitting again; a POST that may
        have reached SiliconFlow unanswered leaves the job ``submit_unknown``, and submitting
        its key again raises ``SubmitUnknownError``: it is never resubmitted on its own.
        """
        if not model or not isinstance(model, str):
            raise ConfigurationError("model must be a non-empty string")
        if not prompt or not isinstance(prompt, str):
            raise ConfigurationError("prompt must be a non-empty string")
        payload: dict[str, Any] = {"model": model, "prompt": prompt, "image_size": image_size}
        if negative_prompt is not None:
            payload["negative_prompt"] = negative_prompt
        if image is not None:
            payload["image"] = await _image_field(image)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigurationError("seed must be an integer")
            payload["seed"] = seed

        async def once() -> str:
            body = await self._api().post("/video/submit", payload, request_id=None)
            request_id = _request_id_from(body)
            self._poller.expect(request_id, f"{model} {image_size}")  # what it learns under
            return request_id

        journal = await self.journal()
        if journal is None:
            return await with_retries(self.retry_policy, once, retry_if=is_safe_to_resubmit)
        if dest is None:
            raise ConfigurationError(
                "with a journal, submit needs dest=: the folder where resume puts the job's videos"
            )
        intent = await journal.begin_submit(
            payload, dest=_dest_text(destination(dest)), submit_key=submit_key
        )
        job = intent.job
        if not intent.proceed:
            if job.request_id is not None:
                return job.request_id  # submitted before: never twice
            raise SubmitUnknownError(
                f"a submit with this key is journaled as {job.state.value} and may already "
                "have reached SiliconFlow; it is not sent again (that could charge twice). "
                "Find its requestId in SiliconFlow's console, or give it up",
                job_key=job.job_key,
            )
        # begin_submit holds the new job's lease; given back once the outcome is written.
        lease = Lease(job.job_key, None, journal.owner, datetime.now(UTC))
        try:
            try:
                request_id = await with_retries(
                    self.retry_policy, once, retry_if=is_safe_to_resubmit
                )
            except BaseException as exc:
                if isinstance(exc, SiliconFlowError) and _surely_not_created(exc):
                    await journal.failed(job.job_key, exc)
                else:  # cancelled, dropped or answered oddly mid-POST: nobody knows
                    await asyncio.shield(journal.submit_unknown(job.job_key, exc))
                raise
            await _record_submitted(journal, job.job_key, request_id)
            return request_id
        finally:
            with contextlib.suppress(SiliconFlowError):
                await asyncio.shield(journal.release(lease))

    # -- download ---------------------------------------------------------------------------

    async def wait_and_download(
        self,
        request_ids: Iterable[str],
        dest: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_concurrent_downloads: int | None = None,
        progress: ProgressCallback | None = None,
        naming: Naming | None = None,
    ) -> list[Outcome]:
        """Wait for every job and download every video into ``dest`` (a folder, or
        ``s3://BUCKET/PREFIX``); see :func:`siliconflow_video.wait_and_download`.
        ``max_concurrent_downloads`` may lower the client's cap for this call; the client's
        cap holds across all calls. The outcomes of :meth:`download_as_completed`, in the
        order given."""
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a list of ids, not one string")
        where = destination(dest)
        return await run_batch(
            _BatchPort(self),
            request_ids,
            where,
            timeout=timeout,
            max_concurrent_downloads=self._download_cap(max_concurrent_downloads),
            progress=progress,
            naming=naming,
            record=await self._recorder(),
        )

    async def _recorder(self) -> Recorder:
        """What one batch tells the journal: nothing without one."""
        journal = await self.journal()
        if journal is None:
            return Recorder()
        return JournalRecord(
            journal, sha256=self.download_policy.sha256, object_size=self._object_size
        )

    def download_as_completed(
        self,
        request_ids: Iterable[str],
        dest: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_concurrent_downloads: int | None = None,
        progress: ProgressCallback | None = None,
        naming: Naming | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Yield each id's :class:`Outcome` the moment it is finished: its videos in
        ``dest`` (a folder, or ``s3://BUCKET/PREFIX``) and journaled, or its error. The
        same pipeline as :meth:`wait_and_download` (one status stream for every id, one
        check that no two videos share a file name), in the order the ids finish rather
        than the order given; each distinct id once.

        Leaving the loop early stops the rest (transfers cancelled, ``.part`` files kept
        for the next run) once the iterator is closed; ``async with
        contextlib.aclosing(client.download_as_completed(ids, dest)) as outcomes:`` makes
        that immediate.
        """
        if isinstance(request_ids, str):
            raise TypeError("request_ids must be a list of ids, not one string")
        return self._download_stream(
            list(request_ids),
            destination(dest),
            timeout=timeout,
            max_concurrent_downloads=self._download_cap(max_concurrent_downloads),
            progress=progress,
            naming=naming,
        )

    def _download_cap(self, max_concurrent_downloads: int | None) -> int:
        cap = (
            self.max_concurrent_downloads
            if max_concurrent_downloads is None
            else max_concurrent_downloads
        )
        if cap < 1:
            raise ConfigurationError("max_concurrent_downloads must be >= 1")
        return cap

    async def _download_stream(
        self,
        ids: list[str],
        dest: Destination,
        *,
        timeout: float | None,
        max_concurrent_downloads: int,
        progress: ProgressCallback | None,
        naming: Naming | None,
    ) -> AsyncGenerator[Outcome, None]:
        stream = stream_batch(
            _BatchPort(self),
            ids,
            dest,
            timeout=timeout,
            max_concurrent_downloads=max_concurrent_downloads,
            progress=progress,
            naming=naming,
            record=await self._recorder(),
        )
        async with contextlib.aclosing(stream):
            async for outcome in stream:
                yield outcome

    async def resume(
        self,
        *,
        timeout: float | None = None,
        max_concurrent_downloads: int | None = None,
        progress: ProgressCallback | None = None,
        naming: Naming | None = None,
    ) -> list[Outcome]:
        """Carry on with every unfinished job in the client's journal, each into the
        destination recorded with it; see :func:`siliconflow_video.resume`."""
        journal = await self.journal()
        if journal is None:
            raise ConfigurationError("resume needs a journal: AsyncClient(journal=PATH)")
        jobs = await journal.jobs()
        by_dest = resume_plan(jobs)
        wanted = {rid for ids in by_dest.values() for rid in ids}
        order = [job.request_id for job in jobs if job.request_id in wanted]
        dests = list(by_dest)
        runs = await asyncio.gather(
            *(
                self.wait_and_download(
                    by_dest[dest],
                    dest,
                    timeout=timeout,
                    max_concurrent_downloads=max_concurrent_downloads,
                    progress=progress,
                    naming=naming,
                )
                for dest in dests
            ),
            return_exceptions=True,
        )
        outcomes: dict[str, Outcome] = {}
        for dest, run in zip(dests, runs, strict=True):
            if isinstance(run, BaseException):
                if not isinstance(run, SiliconFlowError):
                    raise run  # a bug or a cancellation, not one destination's trouble
                # One destination that cannot be used (a folder gone) fails its own ids.
                outcomes.update({rid: Outcome(rid, None, (), run) for rid in by_dest[dest]})
            else:
                outcomes.update({o.request_id: o for o in run})
        return [outcomes[rid] for rid in order if rid is not None]


class _BatchPort:
    """The client as the pipeline sees it (``_batch.BatchClient``)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def check_usable(self) -> None:
        self._client._api()

    def completions(
        self, request_ids: list[str], *, timeout: float | None, on_status: OnStatus | None
    ) -> AsyncGenerator[WaitResult, None]:
        return self._client._completions(request_ids, timeout=timeout, listener=on_status)

    async def get_status(self, request_id: str) -> VideoStatus:
        return await self._client.get_status(request_id)

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
        client = self._client
        async with client._download_slots:
            if isinstance(target, S3Object):
                return await upload_video(
                    client._videos(),
                    url,
                    await client._store(target.bucket),
                    target.key,
                    refresh_url=refresh_url,
                    policy=client.download_policy,
                    request_id=request_id,
                    index=index,
                    on_progress=on_progress,
                    resume=resume,
                    on_state=on_state,
                    proxies=client._video_proxies,
                    throttle=client._disk_writes.throttle,
                )
            return await download_video(
                client._videos(),
                url,
                target,
                refresh_url=refresh_url,
                policy=client.download_policy,
                writes=client._disk_writes,
                proxies=client._video_proxies,
                request_id=request_id,
                index=index,
                on_progress=on_progress,
            )


def _result(request_id: str, future: asyncio.Future[VideoStatus]) -> WaitResult:
    error = future.exception()
    if error is not None:
        if not isinstance(error, SiliconFlowError):
            error = SiliconFlowError(
                f"unexpected {type(error).__name__}: {error}", request_id=request_id
            )
        return WaitResult(request_id, None, error)
    status = future.result()
    if status.status is Status.FAILED:
        return WaitResult(request_id, status, JobFailedError(request_id, status.reason))
    return WaitResult(request_id, status, None)


#: The journal value that keeps the poller's learned run times.
_LEARNED = "poll.learned"
#: The journal value that keeps the base URL a status was last read through: a client
#: with that base URL rides out an outage before its own first answer.
_ANSWERED = "api.answered_base_url"


async def _record_submitted(journal: Journal, job_key: str, request_id: str) -> None:
    """Write the requestId SiliconFlow just gave: a few tries, since after this only
    SiliconFlow knows it. If the journal still refuses, the id goes into the error and the
    log, so that a person can settle the job by hand."""
    for attempt in range(3):
        try:
            await asyncio.shield(journal.submitted(job_key, request_id))
            return
        except JournalError as exc:
            if attempt == 2:
                logger.error(
                    "journal: submitted job %s is requestId %s, but it could not be recorded: %s",
                    job_key,
                    request_id,
                    exc,
                )
                raise JournalError(
                    f"SiliconFlow accepted the job as requestId {request_id}, but the "
                    f"journal could not record it ({exc}); keep this id: the journal "
                    "still shows the submit as unknown",
                    path=exc.path,
                    request_id=request_id,
                ) from exc
            await asyncio.sleep(0.2 * (attempt + 1))


def destination(dest: str | os.PathLike[str]) -> Destination:
    """A folder, or the bucket and prefix of an ``s3://BUCKET/PREFIX`` (checked now, and
    the ``[s3]`` extra with it: before any job is waited for, not at its first video)."""
    if not is_s3_url(dest):
        if isinstance(dest, str) and "://" in dest:
            raise InvalidDestinationError(
                f"{dest[:60]!r}: a destination is a folder or s3://BUCKET/PREFIX"
            )
        return Path(dest)
    target = S3Target.parse(str(dest))
    if importlib.util.find_spec("aiobotocore") is None:
        raise ConfigurationError(
            "s3:// destinations need aiobotocore: pip install 'siliconflow-video[s3]'"
        )
    return target


def _dest_text(dest: Destination) -> str:
    """A destination as the journal records it."""
    return str(dest) if isinstance(dest, S3Target) else normalize_dest(dest)


async def journal_vouches(journal: Journal, base_url: str) -> bool:
    """Whether a client on ``journal`` last read a status through ``base_url``: an API known
    to exist there, so a connection refused is an outage. (False: never, another URL, or
    unreadable.)"""
    try:
        kept = await journal.load_value(_ANSWERED)
    except SiliconFlowError as exc:  # then only an answer to the client itself vouches
        logger.warning("journal: could not read the base URL that answered: %s", exc)
        return False
    return kept == _fingerprint(base_url)


def _fingerprint(base_url: str) -> str:
    """What the journal keeps of a base URL: a digest, never the URL (it may carry a
    gateway's credentials, and a fleet shares the journal)."""
    return "sha256:" + hashlib.sha256(base_url.encode()).hexdigest()


def resume_plan(jobs: Iterable[JobRecord]) -> dict[str, list[str]]:
    """The requestIds ``resume`` carries on with, by the destination recorded with them."""
    by_dest: dict[str, list[str]] = {}
    for job in jobs:
        if job.request_id is None or not _resumable(job):
            continue  # submit_unknown and submitting rows are a person's to settle
        by_dest.setdefault(job.dest, []).append(job.request_id)
    return by_dest


def _resumable(job: JobRecord) -> bool:
    """Work is left: waiting or downloading, or failed on our side (a download that ran out
    of tries, an outage); not a job SiliconFlow itself said Failed."""
    if job.state in (JobState.WAITING, JobState.DOWNLOADING):
        return True
    return job.state is JobState.FAILED and job.remote_status != "Failed"


def _surely_not_created(exc: SiliconFlowError) -> bool:
    """The submit's answer proves no job was made: rejected (4xx) or never sent."""
    if is_safe_to_resubmit(exc):
        return True
    return (
        isinstance(exc, APIStatusError)
        and 400 <= exc.status_code < 500
        and (exc.status_code != 408)
    )


def _request_id_from(body: bytes) -> str:
    start = excerpt(body)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedResponseError("submit body is not JSON", field="$", excerpt=start) from None
    request_id = data.get("requestId") if isinstance(data, dict) else None
    if not isinstance(request_id, str) or not request_id:
        raise MalformedResponseError(
            "submit body has no requestId", field="$.requestId", excerpt=start
        )
    return request_id
