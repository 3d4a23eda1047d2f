"""One video URL → one file: the lock, the tries, the URL refreshes, the rename.

Transient failures (dropped connections, short bodies, read timeouts, 429, 5xx) are retried
with exponential backoff and full jitter, each try resuming from the bytes on disk; a
``Retry-After`` on a 429 or 503 is waited out, up to ``policy.max_retry_after``. An answer
that looks like an expired URL (403, 410, or a 400 that says "expired") is answered by asking
``refresh_url()`` for a fresh URL, at most ``policy.max_url_refreshes`` times.

A body the host encoded anyway (``Content-Encoding: gzip`` or ``deflate``, despite
``Accept-Encoding: identity``) is decoded on the way to disk, and its length checked against
the encoded length announced. Its encoded bytes cannot be continued with ``Range``: a broken
one starts over. Any other encoding is an error, never a file of encoded bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import backoff
import yarl

from .._config import DownloadPolicy
from .._exceptions import ForeignFileError, VideoURLExpiredError
from .._http import Proxies, backoff_delay, no_proxies, parse_retry_after
from .._logging import logger, redact_url, scrub_urls
from .._models import VideoFile
from ._partfile import (
    RECORDS,
    Completion,
    Context,
    Final,
    PartLock,
    Validator,
    final_state,
    hash_file,
    lock_part,
    make_folder,
    read_sidecar,
    remove_leftovers,
    write_sidecar,
)
from ._responses import (
    ERROR_BODY_LIMIT,
    Answer,
    classify,
    content_length,
    error_detail,
    parse_content_range,
    range_problem,
    range_was_complete,
)
from ._writer import DiskWrites, PartWriter

__all__ = ["VideoFile", "download_video"]


async def download_video(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    *,
    refresh_url: Callable[[], Awaitable[str | None]],
    policy: DownloadPolicy,
    writes: DiskWrites,
    request_id: str,
    index: int,
    on_progress: Callable[[int, int | None], None] | None = None,
    proxies: Proxies = no_proxies,
) -> VideoFile:
    """Bring the video at ``url`` to ``path`` (an already validated file path), resuming
    any ``.part`` left by an earlier run, and return it with its size (and its sha256, when
    the policy asks for it).

    ``session`` belongs to the caller and is used only for the video host: it is not closed,
    and no Authorization header is added. ``refresh_url`` asks ``/video/status`` again for a
    fresh URL when this one has expired; it returns None when there is none. ``writes`` is
    the calling client's: its disk, and whether its downloads write from the event loop.
    ``proxies`` gives each request its proxy (the client's ``EnvProxies``).

    Raises ``DownloadError`` (disk errors, non-retryable statuses, retries used up) or
    ``VideoURLExpiredError``. On any failure or cancellation the bytes received stay in
    ``<path>.part`` for a later call, and nothing is left under ``path``.
    """
    ctx = Context(url=url, path=path, request_id=request_id, index=index)
    done = await _reuse_complete(ctx, policy, on_progress)
    if done is not None:
        return done
    await ctx.disk("create the folder", path.parent, make_folder, path.parent)
    lock = await lock_part(ctx, lambda: _final(ctx)[0] is Final.COMPLETE)
    if lock is None:  # another process completed it while we waited for its lock
        return await _reuse_or_fail(ctx, policy, on_progress)
    try:
        done = await _reuse_complete(ctx, policy, on_progress)
        if done is not None:
            # Completed by a holder we never waited for; what is in .part is a leftover.
            await ctx.disk("remove", ctx.part, remove_leftovers, ctx.part, ctx.meta)
            return done
        transfer = _Transfer(session, ctx, lock, refresh_url, policy, writes, on_progress, proxies)
        try:
            return await transfer.run()
        except BaseException:
            _drop_if_empty(ctx, lock)
            raise
    finally:
        lock.release()


def _final(ctx: Context) -> tuple[Final, int]:
    return final_state(ctx.path, ctx.request_id, ctx.index)


def _drop_if_empty(ctx: Context, lock: PartLock) -> None:
    """Remove a ``.part`` (and its sidecar) that nothing ever arrived in: there is nothing
    to resume. Done in place, not in a thread: this also runs on a cancellation."""
    with contextlib.suppress(OSError):
        if os.fstat(lock.fd).st_size == 0:
            remove_leftovers(ctx.part, ctx.meta)


# --- reusing a finished file ---------------------------------------------------------------


async def _reuse_complete(
    ctx: Context,
    policy: DownloadPolicy,
    on_progress: Callable[[int, int | None], None] | None,
) -> VideoFile | None:
    """Our complete file already at the final path (hashed if the policy asks); None when
    there is none, or ours no longer has its recorded size (it is fetched again). Anything
    else under that name is an error, and is left as it is."""
    state, size = await asyncio.to_thread(_final, ctx)
    if state in (Final.NOTHING, Final.STALE):
        if state is Final.STALE:
            logger.debug("%s is no longer its recorded size; fetching it again", ctx.path)
        return None
    _refuse(ctx, state)
    digest = None
    if policy.sha256:
        size, hasher = await ctx.disk(
            "read", ctx.path, hash_file, ctx.path, None, policy.write_buffer
        )
        digest = hasher.hexdigest()
    if on_progress is not None:
        on_progress(size, size)
    return VideoFile(path=ctx.path, size=size, sha256=digest, reused=True, index=ctx.index)


def _refuse(ctx: Context, state: Final) -> None:
    """Raise unless ``state`` is our complete file (or nothing)."""
    if state is Final.NOT_A_FILE:
        raise ctx.error(f"{ctx.path} exists and is not a regular file; move it away")
    if state is Final.FOREIGN:
        raise ctx.error(
            f"{ctx.path} already exists and was not downloaded by siliconflow-video as "
            f"video {ctx.index} of this job; it is left as it is. Move it away (or choose "
            "another naming) to download the video",
            cls=ForeignFileError,
        )


async def _reuse_or_fail(
    ctx: Context,
    policy: DownloadPolicy,
    on_progress: Callable[[int, int | None], None] | None,
) -> VideoFile:
    found = await _reuse_complete(ctx, policy, on_progress)
    if found is None:  # pragma: no cover - only reached if the file vanished in between
        raise ctx.error(f"{ctx.path} disappeared right after another process wrote it")
    return found


# --- one transfer --------------------------------------------------------------------------


class _Retry(Exception):
    """A failure worth another try; the bytes on disk are kept and the next try resumes,
    after at least ``retry_after`` seconds when the host asked for that."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retry_waits(policy: DownloadPolicy) -> Generator[float, BaseException | None, None]:
    """A ``backoff`` wait generator: full-jitter exponential delays, or the host's
    ``Retry-After`` (capped by the policy) when that is longer."""
    exc = yield 0.0  # primed by backoff with None
    attempt = 0
    while True:
        attempt += 1
        delay = backoff_delay(attempt, policy.base_delay, policy.max_delay)
        retry_after = exc.retry_after if isinstance(exc, _Retry) else None
        if retry_after is not None:
            delay = max(delay, min(retry_after, policy.max_retry_after))
        exc = yield delay


class _Expired(Exception):
    """The host answered as it does for an expired URL."""

    def __init__(self, status: int, detail: str, says_expired: bool) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.says_expired = says_expired


class _IdleDeadline:
    """``read_timeout`` as a bound on each silence of the host, not on the transfer.

    aiohttp's sock_read re-arms a timer on every socket read, about a tenth of a fast
    download's CPU. Instead one ``asyncio.Timeout`` per request is moved at most eight
    times per ``read_timeout``, each time to ``read_timeout`` plus an eighth from now: a
    silence is cut off after between one and one and an eighth ``read_timeout``, at the
    cost of one clock read per piece.
    """

    def __init__(self, read_timeout: float) -> None:
        self.read_timeout = read_timeout
        self.timeout: asyncio.Timeout | None = None
        self.pushed = 0.0
        self.clock: Callable[[], float] = time.monotonic  # the running loop's, once known

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.clock = asyncio.get_running_loop().time
        try:
            async with asyncio.timeout(None) as self.timeout:
                self.heard(force=True)
                yield
        finally:
            self.timeout = None

    def heard(self, *, force: bool = False) -> None:
        """The host was just heard from: it has ``read_timeout`` again to send more."""
        timeout = self.timeout
        if timeout is None or timeout.expired():
            return
        now = self.clock()
        slack = self.read_timeout / 8
        if force or now - self.pushed >= slack:
            timeout.reschedule(now + self.read_timeout + slack)
            self.pushed = now

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """While we wait for our own disk, the host's idle clock stands still: a slow write
        is not a silent host. It starts again from now afterwards (not after an error,
        which ends the request anyway)."""
        if self.timeout is not None and not self.timeout.expired():
            self.timeout.reschedule(None)
        yield
        self.heard(force=True)


class _Transfer:
    """Moves the bytes of one video into the locked ``.part`` file, then renames it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ctx: Context,
        lock: PartLock,
        refresh_url: Callable[[], Awaitable[str | None]],
        policy: DownloadPolicy,
        writes: DiskWrites,
        on_progress: Callable[[int, int | None], None] | None,
        proxies: Proxies,
    ) -> None:
        self.session = session
        self.proxies = proxies
        self.ctx = ctx
        self.lock = lock
        self.fd = lock.fd
        self.refresh_url = refresh_url
        self.policy = policy
        self.disk = writes.disk
        self.on_progress = on_progress
        # No sock_read: read_timeout is kept by self.idle instead.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout)
        self.idle = _IdleDeadline(policy.read_timeout)
        self.validator: Validator | None = None
        self.total: int | None = None
        self.writer = PartWriter(
            ctx,
            lock.fd,
            writes,
            policy,
            self.idle,
            None if on_progress is None else self._report,
        )
        self.refreshes = 0
        self.same_url_retried = False
        # Bytes of an encoded body in .part: they cannot be continued with Range.
        self.decoded_prefix = False

    def _report(self, received: int) -> None:
        assert self.on_progress is not None
        self.on_progress(received, self.total)

    @property
    def done(self) -> int:
        return self.writer.done

    async def run(self) -> VideoFile:
        # The descriptor carries the lock and is closed by our caller.
        await self._load_partial()
        tries = backoff.on_exception(
            lambda: _retry_waits(self.policy),
            _Retry,
            max_tries=self.policy.max_attempts,
            jitter=None,  # in _retry_waits, where it cannot shorten a Retry-After
            on_backoff=self._log_retry,
            logger=None,
        )(self._attempt)
        while True:
            try:
                await tries()
                break
            except _Expired as expired:
                await self._refresh(expired)
            except _Retry as exc:
                raise self.ctx.error(
                    f"gave up downloading {redact_url(self.ctx.url)} after "
                    f"{self.policy.max_attempts} tries: {exc}; {self._kept()}",
                    status_code=exc.status,
                ) from None  # the chain holds aiohttp errors that quote the signed URL
        return await self._finish()

    # -- state on disk

    async def _load_partial(self) -> None:
        """Take over what an earlier run left in .part, or start from nothing."""
        self.validator = await self.ctx.disk("read", self.ctx.meta, read_sidecar, self.ctx.meta)
        size = os.fstat(self.fd).st_size
        known_total = self.validator.total if self.validator else None
        if size and (self.validator is None or (known_total is not None and size > known_total)):
            logger.debug("%s cannot be tied to a response; starting over", self.ctx.part)
            await self._start_over()
            return
        if not size:
            return
        hasher = self.writer.hasher
        if hasher is not None:
            # Hash the kept prefix now: the digest must cover the whole file at the end.
            size, hasher = await self.ctx.disk(
                "read", self.ctx.part, hash_file, self.ctx.part, size, self.policy.write_buffer
            )
        self.total = known_total
        self.writer.resume(size, hasher)

    async def _start_over(self) -> None:
        """Throw the partial bytes and their sidecar away: never splice two responses."""
        self.total = None
        self.validator = None
        await self.writer.start_over()
        with self.idle.paused():
            await self.ctx.disk("remove", self.ctx.meta, remove_leftovers, self.ctx.meta)

    async def _remember(self, validator: Validator) -> None:
        self.validator = validator
        with self.idle.paused():
            await self.ctx.disk("write", self.ctx.meta, write_sidecar, self.ctx.meta, validator)

    async def _finish(self) -> VideoFile:
        """Rename the complete .part to the final name, still holding its lock."""
        part, path = self.ctx.part, self.ctx.path
        if self.policy.fsync:
            await self.ctx.disk("flush", part, self.disk.fsync, self.fd)
        # A file that appeared under the final name meanwhile is not ours to replace.
        state, _ = await asyncio.to_thread(_final, self.ctx)
        _refuse(self.ctx, state)
        # Recorded before the rename: a crash in between leaves a complete .part (finished
        # on the next run), never a complete file without its record.
        validator = self.validator or Validator(None, None, None)
        completion = Completion(
            self.ctx.request_id,
            self.ctx.index,
            self.done,
            validator.etag,
            validator.last_modified,
        )
        await self.ctx.disk("write", path, RECORDS.save, path, completion)
        if sys.platform == "win32":
            # Windows cannot rename an open file; there is no lock to hold there anyway.
            self.lock.release()
        try:
            os.replace(part, path)
        except OSError as exc:
            raise self.ctx.disk_error(exc, "rename", part) from exc
        if self.policy.fsync:
            await self.ctx.disk("flush", path.parent, self.disk.fsync_folder, path.parent)
        await self.ctx.disk("remove", self.ctx.meta, remove_leftovers, self.ctx.meta)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total if self.total is not None else self.done)
        return VideoFile(
            path=path,
            size=self.done,
            sha256=self.writer.digest(),
            reused=False,
            index=self.ctx.index,
        )

    # -- one request

    async def _attempt(self) -> None:
        """One GET; returns once .part holds the whole video."""
        if self.decoded_prefix:
            await self._start_over()
            self.decoded_prefix = False
        headers = {"Accept-Encoding": "identity"}
        if self.done:
            headers["Range"] = f"bytes={self.done}-"
            if_range = self.validator.if_range() if self.validator else None
            if if_range:
                headers["If-Range"] = if_range
        target = yarl.URL(self.ctx.url, encoded=True)
        with self._network_errors():
            async with (
                self.idle.running(),
                self.session.get(
                    # encoded=True: send the signed query byte for byte, as it was signed.
                    target,
                    headers=headers,
                    timeout=self.timeout,
                    raise_for_status=False,
                    **self.proxies(target),
                ) as resp,
            ):
                self.idle.heard(force=True)
                await self._handle(resp)

    @contextlib.contextmanager
    def _network_errors(self) -> Iterator[None]:
        """aiohttp's errors as ours, most specific first: a passing fault is a ``_Retry``,
        anything retrying cannot help a ``DownloadError``. Never chained to aiohttp's error
        where that quotes the signed URL."""
        try:
            yield
        except TimeoutError as exc:  # before ClientConnectionError: aiohttp's is both
            raise _Retry(
                f"timed out (connect timeout {self.policy.connect_timeout:g} s, "
                f"read timeout {self.policy.read_timeout:g} s: {_describe(exc)})"
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise _Retry(f"the connection broke ({_describe(exc)})") from exc
        except aiohttp.TooManyRedirects:
            raise self.ctx.error("could not request the video: too many redirects") from None
        except aiohttp.ClientResponseError as exc:
            # An answer aiohttp could not parse (a bad Content-Length, a garbled status
            # line) is a gateway's passing fault as often as not: try again.
            raise _Retry(f"the host sent a malformed answer ({_describe(exc)})") from None
        except aiohttp.ClientError as exc:
            # Not from the network itself (bad URL, ...): retrying won't help.
            raise self.ctx.error(f"could not request the video: {_describe(exc)}") from None

    async def _handle(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        answer = classify(status, resuming=bool(self.done))
        if answer is Answer.WHOLE:
            await self._on_whole_body(resp)
        elif answer is Answer.PARTIAL:
            await self._on_partial_body(resp)
        elif answer is Answer.RANGE_NOT_SATISFIABLE:
            await self._on_range_not_satisfiable(resp)
        elif answer is Answer.REFUSED:
            detail, says_expired = error_detail(await _error_body(resp))
            if status != 400 or says_expired:
                raise _Expired(status, detail, says_expired or status == 410)
            raise self.ctx.error(
                f"the video host answered HTTP 400 ({detail}) for {redact_url(self.ctx.url)}",
                status_code=status,
            )
        elif answer is Answer.RETRY:
            retry_after = (
                parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
            )
            raise _Retry(
                f"the video host answered HTTP {status}", status=status, retry_after=retry_after
            )
        else:
            detail, _ = error_detail(await _error_body(resp))
            raise self.ctx.error(
                f"the video host answered HTTP {status} ({detail}) for {redact_url(self.ctx.url)}",
                status_code=status,
            )

    async def _on_whole_body(self, resp: aiohttp.ClientResponse) -> None:
        if self.done:
            # The host ignored Range, or If-Range no longer matched: this is the whole
            # file again, perhaps a different one.
            logger.debug(
                "%s answered 200 to a Range request; starting %s over",
                redact_url(self.ctx.url),
                self.ctx.part,
            )
            await self._start_over()
        total = content_length(resp.headers)
        if _encoding(resp) is None:  # an encoded body cannot be resumed: no sidecar
            await self._remember(Validator.from_headers(resp.headers, total))
        await self._stream(resp, total)

    async def _on_partial_body(self, resp: aiohttp.ClientResponse) -> None:
        problem = range_problem(resp.headers, self.done, self.validator)
        if problem is None and _encoding(resp) is not None:
            problem = "the host encoded the range it sent (Content-Encoding), so it cannot continue"
        if problem is not None:
            await self._start_over()
            raise _Retry(f"{problem}; starting over from byte 0")
        _, _, total = parse_content_range(resp.headers.get("Content-Range"))
        if self.validator is None:  # a 206 to a request without Range, from byte 0
            await self._remember(Validator.from_headers(resp.headers, total))
        await self._stream(resp, total)

    async def _on_range_not_satisfiable(self, resp: aiohttp.ClientResponse) -> None:
        if range_was_complete(resp.headers, self.done, self.validator):
            self.total = self.done  # .part already holds every byte: nothing left to fetch
            return
        done = self.done
        await self._start_over()
        raise _Retry(
            f"the host answered 416 to a Range request from byte {done}; starting over from byte 0"
        )

    async def _stream(self, resp: aiohttp.ClientResponse, total: int | None) -> None:
        """Copy the body to .part, then check its length against the announced one."""
        encoding = _encoding(resp)
        # iter_any: the pieces as they came off the socket (joined only when several wait,
        # which is rare), not regrouped into fixed sizes: iter_chunked's join copied every
        # byte once more.
        body = resp.content.iter_any()
        if encoding is None:
            self.total = total
            await self.writer.copy(body)
            received = self.done
        else:
            # The announced length is the encoded one; how long the video is, nobody said.
            self.total = None
            decoder = _Decoder(encoding, self.ctx, self.policy.write_buffer)
            try:
                await self.writer.copy(decoder.decode(body))
            except zlib.error as exc:
                await self._start_over()
                raise _Retry(f"the {encoding} body is corrupt ({exc}); starting over") from None
            finally:
                self.decoded_prefix = self.done > 0
            received = decoder.received
            if total is None and not decoder.finished:
                raise _Retry(f"the {encoding} body ended before its end")
        if total is not None and received < total:
            raise _Retry(f"the body ended after {received} of {total} bytes")
        if total is not None and received > total:
            await self._start_over()
            raise _Retry(f"the host sent more than the {total} bytes it announced")
        self.decoded_prefix = False

    # -- expiry and retries

    async def _refresh(self, expired: _Expired) -> None:
        """Swap the URL for a fresh one from ``refresh_url``, or raise."""
        if self.refreshes >= self.policy.max_url_refreshes:
            if not self.refreshes:
                self._fail_expired(expired, "asking for a fresh one is off (max_url_refreshes)")
            if expired.says_expired:
                self._fail_expired(
                    expired, f"the {self.refreshes} fresh URL(s) from /video/status failed too"
                )
            # Refused again and again with fresh URLs, never saying "expired": not expiry.
            raise self.ctx.error(
                f"the video host refused access ({expired}) to "
                f"{redact_url(self.ctx.url)}, also with {self.refreshes} fresh URLs "
                f"from /video/status; {self._kept()}",
                status_code=expired.status,
            )
        logger.debug(
            "%s answered %s; asking /video/status for a fresh URL",
            redact_url(self.ctx.url),
            expired,
        )
        fresh = await self.refresh_url()
        self.refreshes += 1
        if not fresh:
            self._fail_expired(expired, "/video/status gave no fresh URL")
        if fresh == self.ctx.url:
            if self.same_url_retried:
                self._fail_expired(expired, "/video/status gave the same URL again")
            # A 403 can be a passing fault at the host: the same URL gets one more try.
            self.same_url_retried = True
        self.ctx.url = fresh

    def _fail_expired(self, expired: _Expired, why: str) -> NoReturn:
        host = redact_url(self.ctx.url)
        # A bare 403 does not say why; expiry is by far the likeliest reason, but say so.
        what = (
            f"the video URL has expired ({host} answered {expired})"
            if expired.says_expired
            else f"the video URL was refused ({host} answered {expired}), most likely "
            "because it has expired"
        )
        raise self.ctx.error(
            f"{what}: SiliconFlow's video URLs are valid for one hour, and {why}. "
            f"{self._kept(sentence=True)}. Download videos soon after their job succeeds",
            status_code=expired.status,
            cls=VideoURLExpiredError,
        )

    def _kept(self, *, sentence: bool = False) -> str:
        if not self.done:
            text = "no bytes had arrived yet"
        else:
            text = (
                f"the {self.done} bytes received so far are kept in {self.ctx.part}, "
                "and a later call resumes from there"
            )
        return text[0].upper() + text[1:] if sentence else text

    def _log_retry(self, details: Any) -> None:
        logger.debug(
            "download of %s (requestId %s, video %d) failed: %s; "
            "try %d of %d in %.2f s, resuming at byte %d",
            redact_url(self.ctx.url),
            self.ctx.request_id,
            self.ctx.index,
            details.get("exception"),
            details["tries"] + 1,
            self.policy.max_attempts,
            details.get("wait", 0.0),
            self.done,
        )


def _encoding(resp: aiohttp.ClientResponse) -> str | None:
    """The body's Content-Encoding; None when it is the bytes themselves."""
    value = resp.headers.get("Content-Encoding", "").strip().lower()
    return None if value in ("", "identity") else value


#: zlib's wbits for each encoding it can undo: 31 = gzip's header, 15 = zlib's (deflate).
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


class _Decoder:
    """Undoes a Content-Encoding while the body streams, counting the encoded bytes (what
    Content-Length announced), each output at most ``limit`` bytes so memory stays flat
    whatever the compression ratio."""

    def __init__(self, encoding: str, ctx: Context, limit: int) -> None:
        if encoding not in _WBITS:
            raise ctx.error(
                f"the video host sent the video in the {encoding!r} encoding, which cannot "
                "be decoded here (only gzip and deflate can); it was asked for the plain "
                "bytes (Accept-Encoding: identity)"
            )
        self.zlib = zlib.decompressobj(wbits=_WBITS[encoding])
        self.limit = limit
        self.received = 0

    @property
    def finished(self) -> bool:
        return self.zlib.eof

    async def decode(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.received += len(chunk)
            data = chunk
            while data and not self.zlib.eof:
                out = self.zlib.decompress(data, self.limit)
                data = self.zlib.unconsumed_tail
                if out:
                    yield out
        rest = self.zlib.flush()
        if rest:
            yield rest


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    """The start of an error answer's body (what arrived, if the connection breaks)."""
    body = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(ERROR_BODY_LIMIT):
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status says enough
    return bytes(body)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return scrub_urls(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
