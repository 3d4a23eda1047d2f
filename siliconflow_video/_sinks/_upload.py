"""One video URL → one S3 object: ``download_video``'s counterpart for ``s3://`` destinations.

The bytes go from the video host straight into a :class:`MultipartUpload`, never through a
local file; memory holds at most two parts (one filling, one being sent). The tries, URL
refreshes, idle deadline, ``Retry-After`` and what each answer means are ``_download._fetch``'s,
the very loop that fills ``.part`` files: here is only the sink it fills (:class:`ObjectSink`).

What happens to the multipart upload:

- It is created once the host's first answer is in (so its part size can fit the announced
  length), and reported to ``on_state`` with the answer's validator before the first body
  byte; ``on_state`` is called again after each part. A journal that persists these can
  resume after a crash: ``resume=`` the last :class:`UploadState`, and ``list_parts`` gives the
  next part boundary, fetched with ``Range`` and ``If-Range`` (the answer's validator is also
  compared here: some hosts ignore ``If-Range``).
- A host that answers a ``Range`` request with the whole body (200) gets a new upload from
  byte 0 (``restart``): bytes of two responses are never spliced.
- The object becomes visible only whole (``complete_multipart_upload``), carrying the request
  id and index in its metadata: a rerun finds it and uploads nothing (``reused``).
- A transfer that gives up (tries used up, a refusal, an expired URL with no fresh one, a
  store error retrying cannot fix) aborts its upload.

Never is an upload left open that nobody can resume:

- With ``on_state`` (a journal records the upload), a cancellation and a store outage (a
  retryable :class:`StorageError`) leave the upload open for the resume, as a crash does.
- Without it, nobody knows the upload's id: a cancellation aborts it, shielded from the
  cancellation and bounded to :data:`ABORT_WAIT` seconds (a failure to abort is logged).
- A recorded upload of another key (the destination or the naming changed since) is
  aborted, not continued into this key.
- A process killed outright (SIGKILL, power loss) cannot clean up. So before a new upload
  is created for a key, the open uploads of exactly that key idle for more than
  ``S3Settings.abandoned_after`` (an hour; by the store's clock, from the last part) are
  aborted: no live upload is that silent (it sends a part every ``part_size`` bytes), and
  one a journal still records only costs that resume a fresh start (it finds the upload
  gone, or this object whole). Without the ``ListBucketMultipartUploads`` permission this
  step is skipped (logged). A bucket lifecycle rule ``AbortIncompleteMultipartUpload``
  (after a day or two) remains the backstop for everything else.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from urllib.parse import quote

import aiohttp
import attrs

from .._config import DownloadPolicy
from .._download import Fetch, Progress, Throttle, Validator
from .._exceptions import DownloadError, ForeignFileError, StorageError
from .._http import Proxies, no_proxies
from .._logging import logger, redact_url, scrub_urls
from .._models import StoredVideo
from ._s3 import MultipartUpload, S3Store, UploadedPart
from ._settings import part_size_for

__all__ = ["ObjectSink", "StateCallback", "StoredVideo", "UploadState", "upload_video"]

#: The longest a cancelled upload with nobody to resume it waits for its abort.
ABORT_WAIT = 10.0

#: User metadata that says whose video an object is (``x-amz-meta-...``).
REQUEST_ID_KEY = "siliconflow-request-id"
INDEX_KEY = "siliconflow-index"


@attrs.frozen
class UploadState:
    """What a journal keeps to resume one video's upload after a crash.

    ``upload_id`` and ``part_size`` name the multipart upload; ``etag``, ``last_modified``
    and ``total`` are the validator of the video host's answer its parts came from (sent as
    ``If-Range`` and compared with the resumed answer). ``parts`` are those the store has
    confirmed, in order: informative, since a resume asks the store itself (``list_parts``).
    ``bucket`` and ``key`` say which object the upload is for (None in a state recorded
    before they were: then it is taken to be this one). ``validated`` is False when the
    parts came from an answer with no validator to resume against (an encoded body, whose
    bytes cannot be continued by a ``Range`` request): such an upload starts over.
    """

    upload_id: str
    part_size: int
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    parts: tuple[UploadedPart, ...] = ()
    bucket: str | None = None
    key: str | None = None
    validated: bool = True

    @property
    def validator(self) -> Validator:
        return Validator(self.etag, self.last_modified, self.total)


#: ``on_state(state)``, whenever the upload's state changes; may be a coroutine function.
StateCallback = Callable[[UploadState], Awaitable[None] | None]


@attrs.define
class ObjectSource:
    """Which video goes to which object: what every message needs."""

    url: str
    bucket: str
    key: str
    request_id: str
    index: int

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def error(
        self,
        message: str,
        *,
        status_code: int | None = None,
        cls: type[DownloadError] = DownloadError,
    ) -> DownloadError:
        return cls(
            scrub_urls(message),
            request_id=self.request_id,
            url=redact_url(self.url),
            path=self.where,
            status_code=status_code,
        )


async def upload_video(
    session: aiohttp.ClientSession,
    url: str,
    store: S3Store,
    key: str,
    *,
    refresh_url: Callable[[], Awaitable[str | None]],
    policy: DownloadPolicy,
    request_id: str,
    index: int,
    on_progress: Progress | None = None,
    resume: UploadState | None = None,
    on_state: StateCallback | None = None,
    proxies: Proxies = no_proxies,
    throttle: Throttle | None = None,
) -> StoredVideo:
    """Stream the video at ``url`` into the object ``key`` of ``store`` (an open
    :class:`S3Store`) and return it with its size.

    ``session``, ``refresh_url``, ``policy``, ``request_id``, ``index``, ``on_progress``
    and ``proxies`` are as for ``download_video`` (``policy.sha256`` does not apply:
    nothing is hashed); ``throttle`` is the client's one cap on all its transfers
    (``policy.max_bytes_per_second``; a throttle of this upload's own when None).
    ``resume`` is the last state ``on_state`` was given by an earlier call that did not
    finish; ``on_state`` is called with the upload's id, part size and source validator as
    soon as they are known, and after each part.

    Raises ``DownloadError`` (the video host's side: refusals, tries used up),
    ``VideoURLExpiredError``, ``ForeignFileError`` (an object this library did not upload
    as this video is at ``key``: it is left as it is) or :class:`StorageError`.
    """
    source = ObjectSource(url, store.bucket, key, request_id, index)
    try:
        try:
            found = await _reuse(store, source)
        except ForeignFileError:
            if resume is not None:  # its record is dropped with this failure: not left open
                await _abort_recorded(store, resume, source)
            raise
        if found is not None:
            if resume is not None:
                # The object is whole (an earlier run completed it, or another process):
                # the recorded upload is then gone, or stray; its record is dropped.
                await _abort_recorded(store, resume, source)
            if on_progress is not None:
                on_progress(found.size, found.size)
            return found
        fetch = Fetch(session, source, refresh_url, policy, on_progress, proxies, throttle)
        sink = ObjectSink(store, source, fetch, resume=resume, on_state=on_state)
        return await fetch.run(sink)
    except StorageError as exc:
        if exc.request_id is None:
            exc.request_id = request_id
        raise


async def _abort_recorded(store: S3Store, state: UploadState, source: ObjectSource) -> None:
    """Abort the upload ``state`` records (one already gone is no error: the usual case
    after a complete); failing that, or for another bucket, log that it stays open."""
    key = source.key if state.key is None else state.key
    where = f"s3://{state.bucket or source.bucket}/{key}"
    if state.bucket not in (None, store.bucket):
        logger.warning(
            "the recorded multipart upload %s of %s is not continued into %s; it stays "
            "open until a lifecycle rule removes it",
            state.upload_id,
            where,
            source.where,
        )
        return
    try:
        await store.abort_upload(key, state.upload_id)
    except StorageError as exc:
        logger.warning(
            "could not abort the multipart upload %s of %s (%s)", state.upload_id, where, exc
        )
    else:
        logger.debug("aborted the recorded multipart upload %s of %s", state.upload_id, where)


async def _reuse(store: S3Store, source: ObjectSource) -> StoredVideo | None:
    """The object at the key when it is this video, complete (multipart objects only
    appear whole); None when there is none. Anything else there is an error."""
    info = await store.head(source.key)
    if info is None:
        return None
    meta = info.metadata
    whose = (meta.get(REQUEST_ID_KEY), meta.get(INDEX_KEY))
    if whose == (_meta_id(source.request_id), str(source.index)):
        return StoredVideo(source.bucket, source.key, info.size, info.etag, True, source.index)
    raise source.error(
        f"{source.where} already exists and was not uploaded by siliconflow-video as "
        f"video {source.index} of this job; it is left as it is. Move it away (or choose "
        "another prefix or naming) to upload the video",
        cls=ForeignFileError,
    )


class ObjectSink:
    """A multipart upload as the sink ``Fetch`` fills: ``done`` is the bytes the upload
    has accepted (sent, in flight and buffered), so a retry in this process resumes at the
    exact byte; after a crash the store's parts say where (a part boundary)."""

    def __init__(
        self,
        store: S3Store,
        source: ObjectSource,
        fetch: Fetch,
        *,
        resume: UploadState | None,
        on_state: StateCallback | None,
    ) -> None:
        self.store = store
        self.source = source
        self.clock = fetch.clock
        self.report = fetch.report
        self.resume_from = resume
        self.on_state = on_state
        self.upload: MultipartUpload | None = None
        self._validator: Validator | None = None

    @property
    def done(self) -> int:
        return 0 if self.upload is None else self.upload.offset

    @property
    def validator(self) -> Validator | None:
        return self._validator

    async def resume(self) -> None:
        """Take over the recorded upload: the offset of its first missing part."""
        state = self.resume_from
        if state is None:
            return
        if (state.bucket, state.key) not in ((None, None), (self.source.bucket, self.source.key)):
            # Recorded for another object (the destination or naming changed): never
            # continued into this one, and not left open either.
            await _abort_recorded(self.store, state, self.source)
            return
        upload = self._new(state.part_size, upload_id=state.upload_id)
        offset = await upload.start()
        self.upload = upload
        known = state.total
        if upload.upload_id == state.upload_id and offset:
            if not state.validated:
                logger.debug("%s came from an encoded answer; starting over", self.source.where)
                await self.start_over()
                return
            if known is not None and offset > known:
                logger.debug("%s holds more than the video; starting over", self.source.where)
                await self.start_over()
                return
            self._validator = state.validator
        await self._publish()

    async def remember(self, validator: Validator) -> None:
        self._validator = validator
        if self.upload is None:
            await self._open(validator.total)  # which reports the state
        else:
            await self._publish()

    async def copy(self, body: AsyncIterator[bytes]) -> None:
        if self.upload is None:  # an encoded body: no validator was remembered
            with self.clock.paused():
                await self._open(None)
        upload = self._require()
        part, clock, report = upload.part_size, self.clock, self.report
        # A network error from the body leaves the upload open and its buffer whole: the
        # next try resumes after the last byte accepted.
        async for chunk in body:
            clock.heard()
            if upload.offset % part + len(chunk) >= part:
                # This chunk fills a part, which is sent (after the one in flight): the
                # time the store takes is not the host's silence.
                with clock.paused():
                    await upload.write(chunk)
            else:
                await upload.write(chunk)
            if report is not None:
                report(upload.offset)

    async def start_over(self) -> None:
        """A new upload from byte 0: never splice two responses."""
        self._validator = None
        if self.upload is not None and self.upload.offset:
            with self.clock.paused():
                await self.upload.restart()
                await self._publish()

    async def finish(self, total: int | None) -> StoredVideo:
        upload = await self._open(total)
        stored = await upload.complete(total)
        return StoredVideo(
            stored.bucket, stored.key, stored.size, stored.etag, False, self.source.index
        )

    async def abandon(self, error: BaseException) -> None:
        upload = self.upload
        if upload is None:
            return
        if isinstance(error, asyncio.CancelledError) and self.on_state is None:
            await self._abort_cancelled(upload)
            return
        if _resumable(error, recorded=self.on_state is not None):
            await upload.detach()
            logger.debug(
                "left the multipart upload %s of %s open for a resume (%s)",
                upload.upload_id,
                self.source.where,
                type(error).__name__,
            )
            return
        try:
            await upload.abort()
        except StorageError as exc:
            # The original error says what went wrong; this one only that cleanup failed.
            logger.warning(
                "could not abort the multipart upload %s of %s (%s); it stays open until "
                "a lifecycle rule or S3Store.open_uploads() removes it",
                upload.upload_id,
                self.source.where,
                exc,
            )

    def kept(self) -> str:
        if not self.done:
            return "no bytes had arrived yet"
        return (
            f"the multipart upload of the {self.done} bytes received so far is aborted, "
            "and a later call starts over"
        )

    async def _abort_cancelled(self, upload: MultipartUpload) -> None:
        """Abort an upload whose transfer was cancelled with nobody to resume it: in a
        task of its own (a second cancellation does not stop it), waited for at most
        ``ABORT_WAIT`` seconds, its failure only logged (the cancellation goes on)."""
        where = self.source.where

        def seen(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                logger.warning("gave up aborting the multipart upload of %s; it stays open", where)
            elif (exc := task.exception()) is not None:
                logger.warning(
                    "could not abort the multipart upload of %s (%s); it stays open until a "
                    "lifecycle rule or a later upload of the key removes it",
                    where,
                    exc,
                )

        task = asyncio.get_running_loop().create_task(upload.abort())
        task.add_done_callback(seen)
        done, _ = await asyncio.wait({task}, timeout=ABORT_WAIT)
        if not done:
            task.cancel()
        else:
            logger.debug("cancelled: aborted the multipart upload of %s", where)

    async def _abort_abandoned(self) -> None:
        """Before a new upload of the key: abort those of the key a killed process left
        (idle for ``abandoned_after``); looking is best effort and never fails the video."""
        idle_for = self.store.settings.abandoned_after
        if idle_for is None:
            return
        key = self.source.key
        try:
            for upload_id in await self.store.idle_uploads(key, idle_for):
                await self.store.abort_upload(key, upload_id)
                logger.info(
                    "aborted the abandoned multipart upload %s of %s", upload_id, self.source.where
                )
        except StorageError as exc:
            logger.debug("could not look for abandoned uploads of %s: %s", self.source.where, exc)

    # -- the upload

    def _new(self, part_size: int, *, upload_id: str | None = None) -> MultipartUpload:
        metadata: Mapping[str, str] = {
            REQUEST_ID_KEY: _meta_id(self.source.request_id),
            INDEX_KEY: str(self.source.index),
        }
        return self.store.upload(
            self.source.key,
            upload_id=upload_id,
            part_size=part_size,
            on_part=self._on_part,
            metadata=metadata,
        )

    async def _open(self, total: int | None) -> MultipartUpload:
        """The upload, created now if there is none yet (sized for ``total``)."""
        if self.upload is None:
            upload = self._new(part_size_for(total, self.store.settings.part_size))
            await self._abort_abandoned()
            await upload.start()
            self.upload = upload
            await self._publish()
        return self.upload

    def _require(self) -> MultipartUpload:
        assert self.upload is not None, "_open() creates the upload"
        return self.upload

    async def _on_part(self, part: UploadedPart) -> None:
        await self._publish()

    async def _publish(self) -> None:
        upload = self.upload
        if self.on_state is None or upload is None or upload.upload_id is None:
            return
        v = self._validator or Validator(None, None, None)
        state = UploadState(
            upload.upload_id,
            upload.part_size,
            v.etag,
            v.last_modified,
            v.total,
            upload.parts,
            self.source.bucket,
            self.source.key,
            validated=self._validator is not None,
        )
        result = self.on_state(state)
        if inspect.isawaitable(result):
            await result


def _meta_id(request_id: str) -> str:
    """The request id as object metadata carries it: S3 takes only ASCII there and trims
    spaces, so anything but letters, digits and ``_.-~`` is percent-encoded (a hex or
    uuid id, as SiliconFlow's are, is itself)."""
    return quote(request_id, safe="")


def _resumable(error: BaseException, *, recorded: bool) -> bool:
    """Whether an upload ended by ``error`` is left open for a resume."""
    if not isinstance(error, Exception):
        # A recorded cancellation (an unrecorded one was aborted before this is asked), a
        # KeyboardInterrupt or SystemExit outside a loop that can still run an abort: as a
        # crash would. One nobody records is aborted by the next upload of its key once
        # idle for ``abandoned_after``.
        return True
    return recorded and isinstance(error, StorageError) and error.retryable
