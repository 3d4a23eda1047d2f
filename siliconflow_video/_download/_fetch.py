"""One video URL → one sink: the tries, the URL refreshes, the host's idle deadline and the
decoding of encoded bodies, shared by every destination.

A :class:`Sink` is where the bytes go: a locked ``.part`` file (``_transfer``) or a
multipart upload (``_sinks._upload``). It says how many bytes it already holds (the
``Range`` of the next request), takes bytes in order, forgets them all (``start_over``), and
at the end makes them visible at once (``finish``) or gives up (``abandon``). Everything
else, from what an answer means to when to try again, is decided here, once.

Transient failures (dropped connections, short bodies, read timeouts, 429, 5xx) are retried
with exponential backoff and full jitter, each try resuming from the bytes the sink holds; a
``Retry-After`` on a 429 or 503 is waited out, up to ``policy.max_retry_after``. An answer
that looks like an expired URL (403, 410, or a 400 that says "expired") is answered by asking
``refresh_url()`` for a fresh URL, at most ``policy.max_url_refreshes`` times.

A body the host encoded anyway (``Content-Encoding: gzip`` or ``deflate``, despite
``Accept-Encoding: identity``) is decoded on the way to the sink, and its length checked
against the encoded length announced. Its encoded bytes cannot be continued with ``Range``: a
broken one starts over. Any other encoding is an error, never a file of encoded bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, NoReturn, Protocol, TypeVar

import aiohttp
import backoff
import yarl

from .._config import DownloadPolicy
from .._exceptions import DownloadError, VideoURLExpiredError
from .._http import Proxies, backoff_delay, no_proxies, parse_retry_after
from .._logging import logger, redact_url, scrub_urls
from ._partfile import Validator
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

__all__ = ["Fetch", "HostClock", "IdleDeadline", "Progress", "Sink", "Source", "Throttle"]

_R_co = TypeVar("_R_co", covariant=True)

#: ``on_progress(bytes received, bytes announced or None)``.
Progress = Callable[[int, int | None], None]


class Source(Protocol):
    """Which video is fetched, from where (``url`` changes when refreshed), and how a
    failure is told."""

    url: str
    request_id: str
    index: int

    def error(
        self,
        message: str,
        *,
        status_code: int | None = None,
        cls: type[DownloadError] = DownloadError,
    ) -> DownloadError: ...


class Sink(Protocol[_R_co]):
    """Where one video's bytes go, as :class:`Fetch` drives it.

    ``done`` bytes are held, all from the response ``validator`` describes: the next request
    resumes after them. ``copy`` appends a body after them; ``start_over`` forgets them all
    (and the validator), so the next byte is byte 0. Never are bytes of two responses
    spliced: that is what ``validator`` and ``start_over`` are for.
    """

    @property
    def done(self) -> int:
        """Bytes held so far: where the next request resumes."""

    @property
    def validator(self) -> Validator | None:
        """The response the held bytes came from (None: not known, or nothing held)."""

    async def resume(self) -> None:
        """Take over what an earlier run left (then ``done`` and ``validator`` say what),
        or start from nothing."""

    async def remember(self, validator: Validator) -> None:
        """A response ``validator`` describes is about to send bytes after ``done``:
        record it before the first of them (a crash after that can resume)."""

    async def copy(self, body: AsyncIterator[bytes]) -> None:
        """Append ``body`` after the ``done`` bytes. On a network error what arrived is
        kept (it is a correct prefix), then the error goes on."""

    async def start_over(self) -> None:
        """Forget every byte held and the validator: the next byte is byte 0."""

    async def finish(self, total: int | None) -> _R_co:
        """Every byte is held (``total`` when announced): make the video visible, whole and
        at once, and say where it is."""

    async def abandon(self, error: BaseException) -> None:
        """The transfer ends with ``error`` (a cancellation too): leave what a later call
        can resume, and nothing half-visible."""

    def kept(self) -> str:
        """What is left for a later call, for a message: "no bytes had arrived yet"..."""


class HostClock(Protocol):
    """The host's idle deadline, as a sink sees it."""

    def heard(self, *, force: bool = False) -> None:
        """The host was just heard from."""

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """While we wait for our own storage: a slow write is not a silent host."""


class _Retry(Exception):
    """A failure worth another try; the bytes held are kept and the next try resumes,
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


class IdleDeadline:
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
        """While we wait for our own storage, the host's idle clock stands still: a slow
        write is not a silent host. It starts again from now afterwards (not after an
        error, which ends the request anyway)."""
        if self.timeout is not None and not self.timeout.expired():
            self.timeout.reschedule(None)
        yield
        self.heard(force=True)


class Throttle:
    """A cap on the bytes per second of every transfer that shares it (one per client):
    ``DownloadPolicy.max_bytes_per_second``, as curl's ``--limit-rate``.

    Virtual scheduling: each piece books the time its bytes take at the cap after the
    bookings before it, and waits until it is at most ``burst`` seconds ahead of the clock.
    Transfers that share it take turns piece by piece, so the sum stays under the cap
    however many there are. A throttle with no rate (None) never waits.
    """

    #: How far ahead of the clock bookings may run before a piece waits: pieces are
    #: small and frequent, and a sleep of a few milliseconds is not worth its wakeup.
    burst = 0.05

    def __init__(
        self,
        *,
        now: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # The running loop's clock by default; tests give their own clock and sleep.
        self._now = now
        self._sleep = sleep
        self._booked_until = 0.0

    async def take(self, count: int, rate: float | None, clock: HostClock) -> None:
        """Book ``count`` bytes at ``rate`` bytes/s; sleep (the host's idle clock standing
        still: we are the slow one) until they fit under the cap."""
        if rate is None or count <= 0:
            return
        now = self._now() if self._now is not None else asyncio.get_running_loop().time()
        self._booked_until = max(self._booked_until, now) + count / rate
        delay = self._booked_until - now - self.burst
        if delay > 0:
            with clock.paused():
                await self._sleep(delay)


class Fetch:
    """Moves the bytes of one video into a sink, with tries and URL refreshes.

    Made first, so the sink can be given its ``clock`` and ``report``; then ``run(sink)``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        source: Source,
        refresh_url: Callable[[], Awaitable[str | None]],
        policy: DownloadPolicy,
        on_progress: Progress | None,
        proxies: Proxies = no_proxies,
        throttle: Throttle | None = None,
    ) -> None:
        self.session = session
        self.proxies = proxies
        # One per client, shared by its transfers (DownloadPolicy.max_bytes_per_second);
        # a throttle of this transfer's own when none is given.
        self.throttle = throttle if throttle is not None else Throttle()
        self.source = source
        self.refresh_url = refresh_url
        self.policy = policy
        self.on_progress = on_progress
        # No sock_read: read_timeout is kept by self.clock instead.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout)
        self.clock = IdleDeadline(policy.read_timeout)
        self.total: int | None = None
        self.refreshes = 0
        self.same_url_retried = False
        # Bytes of an encoded body in the sink: they cannot be continued with Range.
        self.decoded_prefix = False
        self._sink: Sink[object] | None = None

    @property
    def report(self) -> Callable[[int], None] | None:
        """For the sink: ``report(bytes received)``, whenever more arrive (None when
        nobody listens)."""
        return None if self.on_progress is None else self._report

    def _report(self, received: int) -> None:
        assert self.on_progress is not None
        self.on_progress(received, self.total)

    @property
    def sink(self) -> Sink[object]:
        assert self._sink is not None, "run() sets the sink"
        return self._sink

    async def run(self, sink: Sink[_R_co]) -> _R_co:
        """Bring the whole video into ``sink`` and return what its ``finish`` returns; on
        any failure or cancellation ``sink.abandon`` decides what stays."""
        self._sink = sink
        try:
            await sink.resume()
            if sink.done and sink.validator is not None:
                self.total = sink.validator.total
            await self._tries()
            result = await sink.finish(self.total)
        except BaseException as exc:
            await sink.abandon(exc)
            raise
        if self.on_progress is not None:
            self.on_progress(sink.done, self.total if self.total is not None else sink.done)
        return result

    async def _tries(self) -> None:
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
                return
            except _Expired as expired:
                await self._refresh(expired)
            except _Retry as exc:
                raise self.source.error(
                    f"gave up downloading {redact_url(self.source.url)} after "
                    f"{self.policy.max_attempts} tries: {exc}; {self._kept()}",
                    status_code=exc.status,
                ) from None  # the chain holds aiohttp errors that quote the signed URL

    async def _start_over(self) -> None:
        """Throw the bytes held away: never splice two responses."""
        self.total = None
        await self.sink.start_over()

    # -- one request

    async def _attempt(self) -> None:
        """One GET; returns once the sink holds the whole video."""
        if self.decoded_prefix:
            await self._start_over()
            self.decoded_prefix = False
        sink = self.sink
        headers = {"Accept-Encoding": "identity"}
        if sink.done:
            headers["Range"] = f"bytes={sink.done}-"
            if_range = sink.validator.if_range() if sink.validator else None
            if if_range:
                headers["If-Range"] = if_range
        target = yarl.URL(self.source.url, encoded=True)
        with self._network_errors():
            async with (
                self.clock.running(),
                self.session.get(
                    # encoded=True: send the signed query byte for byte, as it was signed.
                    target,
                    headers=headers,
                    timeout=self.timeout,
                    raise_for_status=False,
                    **self.proxies(target),
                ) as resp,
            ):
                self.clock.heard(force=True)
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
            raise self.source.error("could not request the video: too many redirects") from None
        except aiohttp.ClientResponseError as exc:
            # An answer aiohttp could not parse (a bad Content-Length, a garbled status
            # line) is a gateway's passing fault as often as not: try again.
            raise _Retry(f"the host sent a malformed answer ({_describe(exc)})") from None
        except aiohttp.ClientError as exc:
            # Not from the network itself (bad URL, ...): retrying won't help.
            raise self.source.error(f"could not request the video: {_describe(exc)}") from None

    async def _handle(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        answer = classify(status, resuming=bool(self.sink.done))
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
            raise self.source.error(
                f"the video host answered HTTP 400 ({detail}) for {redact_url(self.source.url)}",
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
            raise self.source.error(
                f"the video host answered HTTP {status} ({detail}) for "
                f"{redact_url(self.source.url)}",
                status_code=status,
            )

    async def _on_whole_body(self, resp: aiohttp.ClientResponse) -> None:
        if self.sink.done:
            # The host ignored Range, or If-Range no longer matched: this is the whole
            # file again, perhaps a different one.
            logger.debug(
                "%s answered 200 to a Range request; starting over",
                redact_url(self.source.url),
            )
            await self._start_over()
        total = content_length(resp.headers)
        if _encoding(resp) is None:  # an encoded body cannot be resumed: no validator
            await self._remember(Validator.from_headers(resp.headers, total))
        await self._stream(resp, total)

    async def _on_partial_body(self, resp: aiohttp.ClientResponse) -> None:
        sink = self.sink
        problem = range_problem(resp.headers, sink.done, sink.validator)
        if problem is None and _encoding(resp) is not None:
            problem = "the host encoded the range it sent (Content-Encoding), so it cannot continue"
        if problem is not None:
            await self._start_over()
            raise _Retry(f"{problem}; starting over from byte 0")
        _, _, total = parse_content_range(resp.headers.get("Content-Range"))
        if sink.validator is None:  # a 206 to a request without Range, from byte 0
            await self._remember(Validator.from_headers(resp.headers, total))
        await self._stream(resp, total)

    async def _on_range_not_satisfiable(self, resp: aiohttp.ClientResponse) -> None:
        sink = self.sink
        if range_was_complete(resp.headers, sink.done, sink.validator):
            self.total = sink.done  # the sink already holds every byte: nothing to fetch
            return
        done = sink.done
        await self._start_over()
        raise _Retry(
            f"the host answered 416 to a Range request from byte {done}; starting over from byte 0"
        )

    async def _remember(self, validator: Validator) -> None:
        with self.clock.paused():
            await self.sink.remember(validator)

    async def _stream(self, resp: aiohttp.ClientResponse, total: int | None) -> None:
        """Copy the body to the sink, then check its length against the announced one."""
        sink = self.sink
        encoding = _encoding(resp)
        # iter_any: the pieces as they came off the socket (joined only when several wait,
        # which is rare), not regrouped into fixed sizes: iter_chunked's join copied every
        # byte once more.
        body: AsyncIterator[bytes] = resp.content.iter_any()
        if self.policy.max_bytes_per_second is not None:
            body = self._throttled(body)
        start = sink.done
        if encoding is None:
            self.total = total
            if self.on_progress is not None:
                # Where this body starts (0, or the bytes kept from before): a listener
                # counting what arrives (a worker's metrics) can tell the two apart.
                self.on_progress(start, total)
            await sink.copy(body)
            received = sink.done
        else:
            # The announced length is the encoded one; how long the video is, nobody said.
            self.total = None
            decoder = _Decoder(encoding, self.source, self.policy.write_buffer)
            try:
                await sink.copy(decoder.decode(body))
            except zlib.error as exc:
                await self._start_over()
                raise _Retry(f"the {encoding} body is corrupt ({exc}); starting over") from None
            finally:
                self.decoded_prefix = sink.done > 0
            received = decoder.received
            if total is None and not decoder.finished:
                raise _Retry(f"the {encoding} body ended before its end")
        if total is not None and received < total:
            raise _Retry(f"the body ended after {received} of {total} bytes")
        if total is not None and received > total:
            await self._start_over()
            raise _Retry(f"the host sent more than the {total} bytes it announced")
        self.decoded_prefix = False
        # -v: each video request that brought its body, never with its signed query.
        logger.debug(
            "GET %s%s: HTTP %d, %d bytes (requestId %s, video %d)",
            redact_url(self.source.url),
            f" Range: bytes={start}-" if resp.status == 206 else "",
            resp.status,
            sink.done - start,
            self.source.request_id,
            self.source.index,
        )

    async def _throttled(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        rate = self.policy.max_bytes_per_second
        async for chunk in body:
            await self.throttle.take(len(chunk), rate, self.clock)
            yield chunk

    # -- expiry and retries

    async def _refresh(self, expired: _Expired) -> None:
        """Swap the URL for a fresh one from ``refresh_url``, or raise."""
        source = self.source
        if self.refreshes >= self.policy.max_url_refreshes:
            if not self.refreshes:
                self._fail_expired(expired, "asking for a fresh one is off (max_url_refreshes)")
            if expired.says_expired:
                self._fail_expired(
                    expired, f"the {self.refreshes} fresh URL(s) from /video/status failed too"
                )
            # Refused again and again with fresh URLs, never saying "expired": not expiry.
            raise source.error(
                f"the video host refused access ({expired}) to "
                f"{redact_url(source.url)}, also with {self.refreshes} fresh URLs "
                f"from /video/status; {self._kept()}",
                status_code=expired.status,
            )
        logger.debug(
            "%s answered %s; asking /video/status for a fresh URL",
            redact_url(source.url),
            expired,
        )
        fresh = await self.refresh_url()
        self.refreshes += 1
        if not fresh:
            self._fail_expired(expired, "/video/status gave no fresh URL")
        if fresh == source.url:
            if self.same_url_retried:
                self._fail_expired(expired, "/video/status gave the same URL again")
            # A 403 can be a passing fault at the host: the same URL gets one more try.
            self.same_url_retried = True
        source.url = fresh

    def _fail_expired(self, expired: _Expired, why: str) -> NoReturn:
        host = redact_url(self.source.url)
        # A bare 403 does not say why; expiry is by far the likeliest reason, but say so.
        what = (
            f"the video URL has expired ({host} answered {expired})"
            if expired.says_expired
            else f"the video URL was refused ({host} answered {expired}), most likely "
            "because it has expired"
        )
        raise self.source.error(
            f"{what}: SiliconFlow's video URLs are valid for one hour, and {why}. "
            f"{self._kept(sentence=True)}. Download videos soon after their job succeeds",
            status_code=expired.status,
            cls=VideoURLExpiredError,
        )

    def _kept(self, *, sentence: bool = False) -> str:
        text = self.sink.kept()
        return text[0].upper() + text[1:] if sentence else text

    def _log_retry(self, details: Any) -> None:
        logger.debug(
            "download of %s (requestId %s, video %d) failed: %s; "
            "try %d of %d in %.2f s, resuming at byte %d",
            redact_url(self.source.url),
            self.source.request_id,
            self.source.index,
            details.get("exception"),
            details["tries"] + 1,
            self.policy.max_attempts,
            details.get("wait", 0.0),
            self.sink.done,
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

    def __init__(self, encoding: str, source: Source, limit: int) -> None:
        if encoding not in _WBITS:
            raise source.error(
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
