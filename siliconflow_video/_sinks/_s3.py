"""Video bytes → one S3 object, streamed as a resumable multipart upload.

:class:`MultipartUpload` stands where a local ``.part`` file stands for a folder destination:

- ``start()`` creates the multipart upload, or takes over the one a journal recorded
  (``upload_id=``) and returns the offset to resume the video download from (``Range``);
- ``write()`` fills one fixed-size part in memory and uploads it when full; each uploaded
  part (number, ETag, size) is reported to ``on_part`` so a journal can persist it;
- ``complete(total_size)`` uploads the last part and completes the upload: the object
  appears only whole, atomically, and never with fewer bytes than ``total_size``;
- ``abort()`` gives up and leaves no upload open; ``detach()`` stops without aborting (the
  upload stays open for a resume, as after a crash).

Memory is bounded by the part size: one part filling and, with ``overlap`` (the default),
the previous part still being sent, so the video host and the store are read and written at
once. Without ``overlap`` each full part is sent before ``write()`` returns: one part.

aiobotocore is imported only when a store is opened; ``import siliconflow_video`` stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import attrs

from .._exceptions import (
    ConfigurationError,
    IncompleteUploadError,
    NoSuchUploadError,
    StorageError,
)
from .._logging import logger
from ._errors import map_storage_errors
from ._settings import MAX_PARTS, S3Settings, check_part_size
from ._target import S3Target

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = [
    "MultipartUpload",
    "ObjectInfo",
    "PartCallback",
    "S3Store",
    "StoredObject",
    "UploadedPart",
]

#: S3 lists at most 1000 parts (and uploads) per page.
_PAGE = 1000


@attrs.frozen
class UploadedPart:
    """One part the store holds: what ``complete_multipart_upload`` needs, and a journal keeps."""

    number: int
    etag: str
    size: int


@attrs.frozen
class StoredObject:
    """A whole object, visible in the bucket."""

    bucket: str
    key: str
    size: int
    etag: str | None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@attrs.frozen
class ObjectInfo:
    """What ``head_object`` says of an object: its size, ETag and user metadata (keys in
    lower case, without ``x-amz-meta-``)."""

    size: int
    etag: str | None
    metadata: Mapping[str, str]


#: Called after each part is uploaded, in part order; may be a coroutine function.
PartCallback = Callable[[UploadedPart], Awaitable[None] | None]


class S3Store:
    """One bucket destination and the aiobotocore client that reaches it.

    ``async with S3Store("s3://videos/2026/", S3Settings(...)) as store:``. A client the
    store created is closed by it; one passed in as ``client=`` is not (as aiohttp's
    ``connector_owner``). Every S3 error leaves as a :class:`StorageError` subclass.
    """

    def __init__(
        self,
        target: S3Target | str,
        settings: S3Settings | None = None,
        *,
        client: S3Client | None = None,
    ) -> None:
        self.target = target if isinstance(target, S3Target) else S3Target.parse(target)
        self.settings = settings if settings is not None else S3Settings()
        self._client = client
        self._stack: contextlib.AsyncExitStack | None = None
        self._secrets: tuple[str, ...] = self.settings.secrets()

    def __repr__(self) -> str:
        endpoint = self.settings.endpoint_url or "from AWS configuration"
        return f"<S3Store {self.target} endpoint={endpoint}>"

    @property
    def bucket(self) -> str:
        return self.target.bucket

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Store is not open: use `async with S3Store(...)`")
        return self._client

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the client (unless one was given); resolve credentials and endpoint."""
        if self._client is not None:
            return
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import AioSession
        except ImportError as exc:
            raise ConfigurationError(
                "s3:// destinations need aiobotocore: pip install 'siliconflow-video[s3]'"
            ) from exc
        s = self.settings
        config = AioConfig(
            region_name=s.region,
            signature_version="s3v4",
            s3={"addressing_style": s.addressing_style},
            retries={"mode": "standard", "total_max_attempts": s.max_attempts},
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            max_pool_connections=s.max_pool_connections,
            # botocore >= 1.36 adds CRC checksums to every upload and checks them on
            # download; MinIO, SeaweedFS, OSS and others reject or mangle them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        with self.errors(None):
            session = AioSession(profile=s.profile)
            if not self._secrets:
                # Credentials from the environment or a profile: learn them too, to keep
                # them out of every message.
                credentials = await session.get_credentials()
                if credentials is not None:
                    frozen = await credentials.get_frozen_credentials()
                    self._secrets = tuple(x for x in (frozen.secret_key, frozen.token) if x)
            client = session.create_client(
                "s3",
                endpoint_url=s.endpoint_url,
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                aws_session_token=s.session_token,
                config=config,
            )
            self._client = await stack.enter_async_context(client)
        self._stack = stack

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._client = None
            await stack.aclose()

    def errors(self, key: str | None) -> contextlib.AbstractContextManager[None]:
        """The error mapping for a call about ``key`` in this bucket."""
        return map_storage_errors(bucket=self.bucket, key=key, secrets=self._secrets)

    def key_for(self, name: str) -> str:
        """The object key for a video file name: PREFIX/ + name."""
        return self.target.key_for(name)

    async def head(self, key: str) -> ObjectInfo | None:
        """What is at ``key`` (size, ETag, user metadata), or None when nothing is."""
        from botocore.exceptions import ClientError

        with self.errors(key):
            try:
                head = await self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise
        return ObjectInfo(
            size=head["ContentLength"],
            etag=head.get("ETag"),
            metadata=dict(head.get("Metadata") or {}),
        )

    async def object_size(self, key: str) -> int | None:
        """The size of the object at ``key``, or None when there is none."""
        info = await self.head(key)
        return None if info is None else info.size

    async def exists(self, key: str, size: int | None = None) -> bool:
        """Whether a whole object of ``size`` bytes (any size when None) is at ``key``,
        so a rerun uploads nothing twice. Multipart objects appear only whole, so any
        object there is complete; the size check catches one from another source."""
        found = await self.object_size(key)
        return found is not None and (size is None or found == size)

    async def open_uploads(self, key: str) -> list[str]:
        """The ids of the multipart uploads open for exactly ``key`` (for cleaning up
        one a crash left before its id was recorded)."""
        ids: list[str] = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=key, PaginationConfig={"PageSize": _PAGE}
        )
        with self.errors(key):
            async for page in pages:
                ids += [u["UploadId"] for u in page.get("Uploads", []) if u.get("Key") == key]
        return ids

    async def idle_uploads(self, key: str, idle_for: float) -> list[str]:
        """The ids of the uploads open for exactly ``key`` whose last part (or, with none,
        whose start) is more than ``idle_for`` seconds old by the store's clock (its
        ``Date`` header: the local clock may be off). An upload with more parts than one
        listing page is never counted idle (its newest part is not on the first page)."""
        found: list[tuple[str, datetime]] = []
        now: datetime | None = None
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=key, PaginationConfig={"PageSize": _PAGE}
        )
        with self.errors(key):
            async for page in pages:
                now = now or _server_time(page)
                found += [
                    (u["UploadId"], u["Initiated"])
                    for u in page.get("Uploads", [])
                    if u.get("Key") == key and "Initiated" in u
                ]
        idle: list[str] = []
        for upload_id, initiated in found:
            listed = None
            with contextlib.suppress(NoSuchUploadError), self.errors(key):
                listed = await self.client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MaxParts=_PAGE
                )
            if listed is None or listed.get("IsTruncated"):
                continue  # completed or aborted meanwhile; or too many parts to judge
            parts = listed.get("Parts", [])
            last = max([initiated, *(p["LastModified"] for p in parts if "LastModified" in p)])
            if (now or datetime.now(UTC)) - last > timedelta(seconds=idle_for):
                idle.append(upload_id)
        return idle

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one open multipart upload of ``key`` (one already gone is no error)."""
        with contextlib.suppress(NoSuchUploadError), self.errors(key):
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    def upload(
        self,
        key: str,
        *,
        upload_id: str | None = None,
        part_size: int | None = None,
        on_part: PartCallback | None = None,
        content_type: str = "video/mp4",
        metadata: Mapping[str, str] | None = None,
        overlap: bool = True,
    ) -> MultipartUpload:
        """A :class:`MultipartUpload` to ``key``; ``upload_id`` (and the ``part_size`` it
        was started with) to resume one a journal recorded."""
        return MultipartUpload(
            self,
            key,
            upload_id=upload_id,
            part_size=self.settings.part_size if part_size is None else part_size,
            on_part=on_part,
            content_type=content_type,
            metadata=metadata,
            overlap=overlap,
        )


_State = Literal["new", "open", "broken", "done", "aborted"]


class MultipartUpload:
    """A streamed, resumable upload of one object, in fixed-size parts.

    Every part but the last is exactly ``part_size`` bytes, so part ``n`` always holds
    bytes ``[(n - 1) * part_size, n * part_size)``: that is what makes a resume from
    ``list_parts`` exact, and what R2 requires.

    After an error from ``write()`` or ``complete()`` the object only accepts ``abort()``:
    resume with a new one given the same ``upload_id``, which asks the store what it holds.
    """

    def __init__(
        self,
        store: S3Store,
        key: str,
        *,
        upload_id: str | None = None,
        part_size: int,
        on_part: PartCallback | None = None,
        content_type: str = "video/mp4",
        metadata: Mapping[str, str] | None = None,
        overlap: bool = True,
    ) -> None:
        if not key:
            raise ConfigurationError("an object key must not be empty")
        self._store = store
        self.key = key
        self.part_size = check_part_size(part_size)
        self._upload_id = upload_id
        self._on_part = on_part
        self._content_type = content_type
        self._metadata = dict(metadata or {})
        self._overlap = overlap
        self._state: _State = "new"
        self._parts: list[UploadedPart] = []
        self._next_number = 1  # the part number the buffer will be sent as
        self._buffer: io.BytesIO | None = None
        self._filled = 0
        self._offset = 0  # bytes accepted: in parts, in flight, and buffered
        self._pending: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<MultipartUpload s3://{self._store.bucket}/{self.key} {self._state} "
            f"upload_id={self._upload_id!r} parts={len(self._parts)} offset={self._offset}>"
        )

    @property
    def upload_id(self) -> str | None:
        """The store's id for this upload, known after ``start()``: record it in a journal
        before writing, to resume after a crash."""
        return self._upload_id

    @property
    def parts(self) -> tuple[UploadedPart, ...]:
        """The parts the store confirmed, in order."""
        return tuple(self._parts)

    @property
    def offset(self) -> int:
        """Bytes of the object accepted so far (uploaded, in flight or buffered)."""
        return self._offset

    # --- the lifecycle -------------------------------------------------------------------

    async def start(self) -> int:
        """Create the multipart upload, or take over ``upload_id``'s; return the offset of
        the first byte still needed (a multiple of ``part_size``; 0 for a new upload).

        Resuming keeps the longest run of parts 1, 2, ... that are each ``part_size`` long:
        a short or missing part and everything after it is uploaded again. When the
        recorded upload is gone (aborted, or expired by a lifecycle rule) a new one is
        created and 0 returned; check :meth:`S3Store.exists` first, so a finished object
        is not uploaded again.
        """
        self._expect("new")
        if self._upload_id is not None:
            try:
                listed = await self._list_parts(self._upload_id)
            except NoSuchUploadError:
                logger.info(
                    "multipart upload for s3://%s/%s is gone; starting a new one",
                    self._store.bucket,
                    self.key,
                )
                self._upload_id = None
            else:
                self._parts = _full_prefix(listed, self.part_size)
                if len(self._parts) < len(listed):
                    logger.debug(
                        "s3://%s/%s: keeping %d of %d uploaded parts; the rest are sent again",
                        self._store.bucket,
                        self.key,
                        len(self._parts),
                        len(listed),
                    )
        if self._upload_id is None:
            await self._create()
        self._next_number = len(self._parts) + 1
        self._offset = len(self._parts) * self.part_size
        self._state = "open"
        return self._offset

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; each time a part fills, upload it (at most one in flight)."""
        self._expect("open")
        view = memoryview(data).cast("B")
        try:
            while view:
                if self._buffer is None:
                    self._new_buffer()
                assert self._buffer is not None
                n = min(len(view), self.part_size - self._filled)
                self._buffer.write(view[:n])
                self._filled += n
                self._offset += n
                view = view[n:]
                if self._filled == self.part_size:
                    body, self._buffer, self._filled = self._buffer, None, 0
                    await self._send(body, self.part_size)
        except BaseException:
            self._state = "broken"
            raise

    async def complete(self, total_size: int | None = None) -> StoredObject:
        """Upload the last part and make the object visible, whole.

        ``total_size`` is the video's size: when the bytes written differ, nothing becomes
        visible, :class:`IncompleteUploadError` is raised and the upload stays open. An
        empty video becomes an empty object (``put_object``: S3 wants at least one part).
        """
        self._expect("open")
        if total_size is not None and total_size != self._offset:
            raise IncompleteUploadError(
                f"{self._offset} bytes written of {total_size}; not completing "
                f"s3://{self._store.bucket}/{self.key}",
                bucket=self._store.bucket,
                key=self.key,
            )
        try:
            await self._settle()
            if self._offset == 0:
                stored = await self._put_empty()
            else:
                if self._buffer is not None:
                    body, self._buffer = self._buffer, None
                    body.truncate(self._filled)  # shrinks in place: no copy of the part
                    await self._upload_part(self._next_number, body, self._filled)
                    self._next_number += 1
                stored = await self._complete()
        except BaseException:
            self._state = "broken"
            raise
        self._state = "done"
        return stored

    async def abort(self) -> None:
        """Give up: stop any part in flight and abort the upload, so the store keeps (and
        bills) nothing. Safe to call more than once, and after a failure."""
        if self._state in ("done", "aborted"):
            return
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # seen: its failure is moot once aborted
        self._buffer = None
        self._filled = 0
        if self._upload_id is not None:
            with contextlib.suppress(NoSuchUploadError), self._store.errors(self.key):
                await self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self.key, UploadId=self._upload_id
                )
        self._state = "aborted"

    async def detach(self) -> None:
        """Stop without aborting: cancel the part in flight (if any) and leave the upload
        open, as a crash would, for a resume from ``upload_id``. Afterwards this object
        only accepts ``abort()``."""
        if self._state in ("done", "aborted"):
            return
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # seen: a later resume asks the store what it holds
        self._buffer = None
        self._filled = 0
        self._state = "broken"

    async def restart(self) -> int:
        """Abort and begin a new upload from byte 0: for a video host that answered a
        ``Range`` request with the whole body (200), whose bytes cannot be spliced on."""
        await self.abort()
        self._upload_id = None
        self._parts.clear()
        self._state = "new"
        return await self.start()

    # --- S3 calls ------------------------------------------------------------------------

    async def _create(self) -> None:
        with self._store.errors(self.key):
            created = await self._store.client.create_multipart_upload(
                Bucket=self._store.bucket,
                Key=self.key,
                ContentType=self._content_type,
                Metadata=self._metadata,
            )
        self._upload_id = created["UploadId"]
        logger.debug("started multipart upload for s3://%s/%s", self._store.bucket, self.key)

    async def _list_parts(self, upload_id: str) -> list[UploadedPart]:
        parts: list[UploadedPart] = []
        marker = 0
        with self._store.errors(self.key):
            while True:
                page = await self._store.client.list_parts(
                    Bucket=self._store.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    MaxParts=_PAGE,
                    PartNumberMarker=marker,
                )
                parts += [
                    UploadedPart(p["PartNumber"], p["ETag"], p["Size"])
                    for p in page.get("Parts", [])
                ]
                if not page.get("IsTruncated"):
                    return parts
                marker = int(page.get("NextPartNumberMarker") or parts[-1].number)

    def _new_buffer(self) -> None:
        if self._next_number > MAX_PARTS:  # the number this buffer will be sent as
            raise StorageError(
                f"s3://{self._store.bucket}/{self.key} would need more than {MAX_PARTS} "
                f"parts of {self.part_size} bytes; choose a larger part_size "
                "(part_size_for(total_size))",
                bucket=self._store.bucket,
                key=self.key,
                code="TooManyParts",
            )
        # A BytesIO, not a bytearray: botocore sends a file-like body as it is, but wraps
        # bytes in a BytesIO, and aiohttp's getbuffer() on that copies the whole part.
        # Sized once: one grown by small writes reallocates, briefly holding two copies.
        buffer = io.BytesIO()
        buffer.seek(self.part_size - 1)
        buffer.write(b"\0")
        buffer.seek(0)
        self._buffer = buffer
        self._filled = 0

    async def _send(self, body: io.BytesIO, size: int) -> None:
        await self._settle()
        number = self._next_number
        self._next_number += 1
        if self._overlap:
            self._pending = asyncio.create_task(self._upload_part(number, body, size))
        else:
            await self._upload_part(number, body, size)

    async def _settle(self) -> None:
        """Wait for the part in flight; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def _upload_part(self, number: int, body: io.BytesIO, size: int) -> None:
        body.seek(0)
        with self._store.errors(self.key):
            sent = await self._store.client.upload_part(
                Bucket=self._store.bucket,
                Key=self.key,
                UploadId=self._require_id(),
                PartNumber=number,
                Body=body,
                ContentLength=size,
            )
        part = UploadedPart(number, sent["ETag"], size)
        self._parts.append(part)
        logger.debug(
            "uploaded part %d (%d bytes) of s3://%s/%s",
            number,
            part.size,
            self._store.bucket,
            self.key,
        )
        if self._on_part is not None:
            result = self._on_part(part)
            if inspect.isawaitable(result):
                await result

    async def _complete(self) -> StoredObject:
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": p.number, "ETag": p.etag} for p in self._parts
        ]
        bucket, upload_id = self._store.bucket, self._require_id()
        try:
            with self._store.errors(self.key):
                done = await self._store.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except NoSuchUploadError:
            # A retried complete whose first try succeeded but whose answer was lost.
            size = await self._store.object_size(self.key)
            if size != self._offset:
                raise
            return StoredObject(bucket, self.key, size, None)
        return StoredObject(bucket, self.key, self._offset, done.get("ETag"))

    async def _put_empty(self) -> StoredObject:
        with self._store.errors(self.key):
            put = await self._store.client.put_object(
                Bucket=self._store.bucket,
                Key=self.key,
                Body=b"",
                ContentType=self._content_type,
                Metadata=self._metadata,
            )
        upload_id = self._upload_id
        if upload_id is not None:
            with contextlib.suppress(NoSuchUploadError), self._store.errors(self.key):
                await self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self.key, UploadId=upload_id
                )
        return StoredObject(self._store.bucket, self.key, 0, put.get("ETag"))

    # --- helpers -------------------------------------------------------------------------

    def _expect(self, state: _State) -> None:
        if self._state != state:
            hint = " (resume with a new MultipartUpload)" if self._state == "broken" else ""
            raise RuntimeError(f"{self!r} is {self._state}, not {state}{hint}")

    def _require_id(self) -> str:
        assert self._upload_id is not None, "start() sets the upload id"
        return self._upload_id


def _server_time(page: Mapping[str, object]) -> datetime | None:
    """The ``Date`` the store answered with, if it sent a readable one."""
    meta = page.get("ResponseMetadata")
    headers = meta.get("HTTPHeaders") if isinstance(meta, dict) else None
    date = headers.get("date") if isinstance(headers, dict) else None
    try:
        when = parsedate_to_datetime(date) if isinstance(date, str) else None
    except (TypeError, ValueError):
        return None
    # HTTP dates are GMT; one written "-0000" parses naive, which cannot be compared.
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _full_prefix(listed: list[UploadedPart], part_size: int) -> list[UploadedPart]:
    """Parts 1, 2, ... n, each exactly ``part_size``: the bytes ``[0, n * part_size)``."""
    keep: list[UploadedPart] = []
    for part in sorted(listed, key=lambda p: p.number):
        if part.number != len(keep) + 1 or part.size != part_size:
            break
        keep.append(part)
    return keep
