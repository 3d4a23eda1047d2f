"""The fake storage host: signed ``GET``/``HEAD /videos/{rid}/{index}/video.mp4``.

It answers like an OSS bucket: XML errors, ``ETag``/``Last-Modified`` validators and single
byte ranges (``Range``, ``If-Range``). It never looks at ``Authorization``; it only logs it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from aiohttp import web

from . import _transport
from ._content import CHUNK_SIZE, VideoContent
from ._faults import (
    ConnectionReset,
    DropMidBody,
    EncodedBody,
    ErrorResponse,
    ExpiredURL,
    Fault,
    HTMLPage,
    IgnoreRange,
    Slow,
    SlowBody,
    StallMidBody,
    TruncatedBody,
)
from ._jobs import LoggedRequest
from ._state import FakeState
from ._urls import parse_video_path

__all__ = ["make_video_app", "parse_range"]

UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"


def _digits(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def parse_range(header: str, total: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """``(start, end)`` (end exclusive) of a single byte range, ``"unsatisfiable"``, or
    ``None`` when the header is to be ignored (malformed or several ranges), per RFC 9110."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.partition("-")
    if not dash:
        return None
    if not first.strip():  # suffix range: the last N bytes
        count = _digits(last)
        if count is None:
            return None
        if count == 0 or total == 0:
            return UNSATISFIABLE
        return max(total - count, 0), total
    start = _digits(first)
    end = _digits(last) if last.strip() else start
    if start is None or end is None or end < start:
        return None
    if start >= total:
        return UNSATISFIABLE
    return start, (total if not last.strip() else min(end + 1, total))


def _oss_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return web.Response(
        status=status, body=body.encode(), content_type="application/xml", headers=headers
    )


def _expired() -> web.Response:
    return _oss_error(403, "AccessDenied", "Request has expired.")


class _VideoHandler:
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        path = request.raw_path.partition("?")[0]
        parsed = parse_video_path(path)
        request_id = None if parsed is None else parsed[0]
        status: int | None = None
        fault: Fault | None = None
        try:
            if request.method not in ("GET", "HEAD"):
                response: web.StreamResponse = _oss_error(
                    405,
                    "MethodNotAllowed",
                    "The specified method is not allowed.",
                    Allow="GET, HEAD",
                )
            else:
                # Only GETs consume faults: a HEAD has no body to break.
                if request.method == "GET":
                    fault = self.state.pick_fault("video", request_id)
                answer = await self._answer(request, parsed, fault)
                if answer is None:
                    # The connection is gone: aiohttp fails to send this, quietly.
                    return web.Response()
                response = answer
            status = response.status
            return response
        finally:
            if self.state.log_requests:
                self.state.record(
                    LoggedRequest(
                        target="video",
                        method=request.method,
                        path=path,
                        query=dict(request.query),
                        headers=dict(request.headers),
                        json=None,
                        request_id=request_id,
                        status=status,
                        fault=None if fault is None else type(fault).__name__,
                        time=arrived,
                    )
                )

    async def _answer(
        self, request: web.Request, parsed: tuple[str, int] | None, fault: Fault | None
    ) -> web.StreamResponse | None:
        """The response to one request, or ``None`` when the connection was reset."""
        if isinstance(fault, Slow):
            await asyncio.sleep(fault.seconds)
        elif isinstance(fault, ConnectionReset):
            _transport.reset(request)
            return None
        elif isinstance(fault, ErrorResponse):
            return web.Response(
                status=fault.status,
                body=fault.encoded_body(),
                content_type=fault.content_type,
                headers=dict(fault.headers),
            )
        elif isinstance(fault, HTMLPage):
            return web.Response(
                status=fault.status, body=fault.encoded_body(), content_type="text/html"
            )
        elif isinstance(fault, ExpiredURL):
            return _expired()
        content = None if parsed is None else self.state.find_video(*parsed)
        if parsed is None or content is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        verdict = self.state.check_url(
            *parsed, request.query.get("Expires"), request.query.get("Signature")
        )
        if verdict == "expired":
            return _expired()
        if verdict == "bad_signature":
            return _oss_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return await _serve(request, content, fault)


async def _serve(
    request: web.Request, content: VideoContent, fault: Fault | None
) -> web.StreamResponse:
    headers = {
        "Content-Type": "video/mp4",
        "ETag": content.etag,
        "Last-Modified": content.last_modified,
        "Accept-Ranges": "bytes",
    }
    if isinstance(fault, EncodedBody):
        # The stored object is the encoded bytes: ranges and lengths count those.
        encoded = fault.encode(content.to_bytes())
        content = VideoContent(len(encoded), content.etag, content.last_modified, data=encoded)
        headers["Content-Encoding"] = fault.encoding
    total = content.size
    start, end, status = 0, total, 200
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if (
        range_header is not None
        and not isinstance(fault, IgnoreRange)
        and (if_range is None or if_range in (content.etag, content.last_modified))
    ):
        byte_range = parse_range(range_header, total)
        if byte_range == UNSATISFIABLE:
            return _oss_error(
                416,
                "InvalidRange",
                "The requested range cannot be satisfied.",
                **{"Content-Range": f"bytes */{total}"},
            )
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"

    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    if request.method == "HEAD":
        return response

    stop = end
    if isinstance(fault, (DropMidBody, TruncatedBody)):
        stop = min(end, start + fault.after_bytes)
    rate = fault.bytes_per_second if isinstance(fault, SlowBody) else None
    chunk_size = CHUNK_SIZE if rate is None else max(1, min(CHUNK_SIZE, int(rate / 20)))
    stall = fault if isinstance(fault, StallMidBody) else None
    began = time.monotonic()
    sent = 0
    try:
        for chunk in content.chunks(start, stop, chunk_size):
            if stall is not None and sent + len(chunk) > stall.after_bytes:
                # Send exactly up to the stall point, then nothing for a while.
                head = max(0, stall.after_bytes - sent)
                if head:
                    await response.write(chunk[:head])
                    sent += head
                    chunk = chunk[head:]
                await _transport.flush(request)
                await asyncio.sleep(stall.seconds)
                stall = None
            await response.write(chunk)
            sent += len(chunk)
            if rate is not None:
                delay = began + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        if isinstance(fault, DropMidBody):
            await _transport.flush(request)
            _transport.reset(request)
        elif isinstance(fault, TruncatedBody):
            await _transport.flush(request)
            _transport.close_cleanly(request)
    except ConnectionError:
        pass  # the client went away; nothing more to send
    return response


def make_video_app(state: FakeState) -> web.Application:
    """The aiohttp application of the storage host."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _VideoHandler(state).handle)
    return app
