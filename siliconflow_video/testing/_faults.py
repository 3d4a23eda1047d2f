"""Scripted faults: what the fake does instead of (or on top of) a normal answer.

::

    Fault
     +-- ErrorResponse        submit, status, video   any status code and body
     +-- ConnectionReset      submit, status, video   TCP RST, no response at all
     +-- Slow                 submit, status, video   wait, then answer normally
     +-- TruncatedJSON        submit, status          200, JSON body cut in half
     +-- HTMLPage             submit, status, video   an HTML page (200: not SiliconFlow)
     +-- UnknownStatus        status                  200, status not one of the four
     +-- NoVideoURL           status                  200 "Succeed" without a video URL
     +-- MalformedBody        submit, status          200, exactly the given bytes
     +-- DropMidBody          video                   part of the body, then RST
     +-- TruncatedBody        video                   part of the body, then clean close
     +-- ExpiredURL           video                   403 AccessDenied "Request has expired."
     +-- SlowBody             video                   body throttled to a byte rate
     +-- IgnoreRange          video                   200 with the whole body despite Range
     +-- EncodedBody          video                   Content-Encoding the client never asked for

The factory functions (:func:`rate_limited`, :func:`overloaded`, ...) build the
:class:`ErrorResponse` of each documented SiliconFlow error with its real body;
:func:`slow_down` and :func:`not_found_html` build storage-host errors.
"""

from __future__ import annotations

import gzip
import html
import json
import math
import zlib
from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import ClassVar, Literal

import attrs

__all__ = [
    "ConnectionReset",
    "DropMidBody",
    "EncodedBody",
    "ErrorResponse",
    "ExpiredURL",
    "Fault",
    "FaultRule",
    "HTMLPage",
    "IgnoreRange",
    "MalformedBody",
    "NoVideoShape",
    "NoVideoURL",
    "Slow",
    "SlowBody",
    "Target",
    "TruncatedBody",
    "TruncatedJSON",
    "UnknownStatus",
    "bad_gateway_html",
    "bad_request",
    "forbidden",
    "gateway_timeout",
    "not_found",
    "not_found_html",
    "overloaded",
    "payment_required",
    "rate_limited",
    "server_error",
    "slow_down",
    "unauthorized",
]

Target = Literal["submit", "status", "video"]
"""Which kind of request a fault applies to."""

_API: frozenset[Target] = frozenset({"submit", "status"})
_VIDEO: frozenset[Target] = frozenset({"video"})
_ALL: frozenset[Target] = _API | _VIDEO

RATE_LIMIT_MESSAGE = (
    "Request was rejected due to rate limiting. If you want more, please contact "
    "contact@siliconflow.cn. Details:RPM limit reached."
)


@attrs.frozen
class Fault:
    """Base class of every fault. ``targets`` says where the fault may be used."""

    targets: ClassVar[frozenset[Target]] = _ALL


def _frozen_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(headers))


@attrs.frozen
class ErrorResponse(Fault):
    """Answer with ``status`` and ``body`` instead of the normal response.

    ``bytes`` and ``str`` bodies are sent as they are (a ``str`` as UTF-8); any other
    object is JSON-encoded, so ``"Invalid token"`` must be given as ``'"Invalid token"'``
    to become a JSON string. On the video host it may stand for an OSS error too.
    """

    status: int
    body: bytes | str | object = b""
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_headers)
    content_type: str = "application/json"

    def encoded_body(self) -> bytes:
        """The body as it goes on the wire."""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@attrs.frozen
class ConnectionReset(Fault):
    """Abort the connection with a TCP RST before sending anything.

    An aiohttp client sees ``ClientOSError`` (``ECONNRESET``), or
    ``ServerDisconnectedError`` on some platforms; never an HTTP status. Note that aiohttp
    silently retries an idempotent request (``GET``, ``HEAD``) once on a new connection
    after such an error, so a reset video download reaches the caller only with
    ``times=2`` or more; a ``POST`` is never retried.
    """


@attrs.frozen
class Slow(Fault):
    """Wait ``seconds`` before handling the request, then answer normally."""

    seconds: float = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class TruncatedJSON(Fault):
    """Answer 200 with the normal JSON body cut in half.

    ``Content-Length`` matches the cut body, so the HTTP exchange is sound and only the
    JSON is broken. On ``submit`` the job is still created, as if the gateway mangled the
    answer on its way back.
    """

    targets: ClassVar[frozenset[Target]] = _API


@attrs.frozen
class UnknownStatus(Fault):
    """Answer 200 with a well-formed status body whose ``status`` is ``value`` (a status the
    API does not document, such as ``"Cancelled"`` or ``"Expired"``) and ``reason``."""

    targets: ClassVar[frozenset[Target]] = frozenset({"status"})
    value: str = "Paused"
    reason: str = ""


NoVideoShape = Literal["absent", "null", "no_videos", "empty", "no_url"]
"""How a :class:`NoVideoURL` answer lacks its URL."""


@attrs.frozen
class NoVideoURL(Fault):
    """Answer 200 ``{"status": "Succeed", ...}`` that carries no video URL, whatever the job.

    ``shape`` says how: ``"absent"`` (no ``results``), ``"null"`` (``results`` is null),
    ``"no_videos"`` (``results`` without ``videos``), ``"empty"`` (``videos`` is ``[]``) or
    ``"no_url"`` (``videos`` is ``[{}]``). ``timings`` and ``seed`` are the job's when
    ``results`` is an object.
    """

    targets: ClassVar[frozenset[Target]] = frozenset({"status"})
    shape: NoVideoShape = attrs.field(
        default="empty",
        validator=attrs.validators.in_(("absent", "null", "no_videos", "empty", "no_url")),
    )


_FILLER = (
    "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua.</p>\n"
)


def _html_page(title: str, size: int = 0) -> str:
    """A small HTML document titled ``title``, padded with paragraphs to at least ``size``
    bytes."""
    head = (
        f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n"
    )
    tail = "</body></html>\n"
    paragraphs = max(0, math.ceil((size - len(head) - len(tail)) / len(_FILLER)))
    return head + _FILLER * paragraphs + tail


@attrs.frozen
class HTMLPage(Fault):
    """Answer ``status`` (200 by default) with an HTML page (``text/html``) of at least
    ``size`` bytes, titled ``title``.

    On the API it is what a base URL that is not SiliconFlow (a web site, a captive
    portal) answers: no trace id header, no JSON. On the video host it stands for a portal
    or a CDN page served instead of the video.
    """

    status: int = 200
    title: str = "Welcome"
    size: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def encoded_body(self) -> bytes:
        """The page as it goes on the wire."""
        return _html_page(self.title, self.size).encode()


@attrs.frozen
class MalformedBody(Fault):
    """Answer 200 (``application/json``) with exactly ``body``."""

    targets: ClassVar[frozenset[Target]] = _API
    body: bytes


@attrs.frozen
class DropMidBody(Fault):
    """Send the headers with the full ``Content-Length``, ``after_bytes`` of the body, then RST.

    An aiohttp client reading the body sees ``ClientPayloadError`` (not enough data for the
    content length). The bytes sent do reach the client, and it gets about 50 ms to read them
    before the reset: aiohttp discards received bytes the application has not read yet once
    the error arrives.
    """

    targets: ClassVar[frozenset[Target]] = _VIDEO
    after_bytes: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class TruncatedBody(Fault):
    """Like :class:`DropMidBody` but the connection is closed cleanly (FIN, no RST)."""

    targets: ClassVar[frozenset[Target]] = _VIDEO
    after_bytes: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class ExpiredURL(Fault):
    """Answer the OSS 403 ``AccessDenied`` / "Request has expired." for this request."""

    targets: ClassVar[frozenset[Target]] = _VIDEO


@attrs.frozen
class SlowBody(Fault):
    """Stream the body at about ``bytes_per_second``."""

    targets: ClassVar[frozenset[Target]] = _VIDEO
    bytes_per_second: float = attrs.field(validator=attrs.validators.gt(0))


@attrs.frozen
class StallMidBody(Fault):
    """Send ``after_bytes`` of the body, go silent for ``seconds`` (the connection stays
    open), then send the rest: a host that hangs mid-transfer, for read timeouts."""

    targets: ClassVar[frozenset[Target]] = _VIDEO
    after_bytes: int = attrs.field(validator=attrs.validators.ge(0))
    seconds: float = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class IgnoreRange(Fault):
    """Answer 200 with the whole body even when a ``Range`` was asked for."""

    targets: ClassVar[frozenset[Target]] = _VIDEO


@attrs.frozen
class EncodedBody(Fault):
    """Send the video with ``Content-Encoding: encoding``, whatever ``Accept-Encoding`` the
    client sent (``identity`` included), as OSS does for an object stored with that metadata.

    ``"gzip"`` and ``"deflate"`` send the real video compressed; ``"identity"`` sends it as
    it is; any other name (``"br"``, ``"zstd"``, ...) sends bytes that are not that encoding,
    so a client can test its "cannot decode" error. ``Content-Length``, ``Range`` and
    ``Content-Range`` count the encoded bytes, as for any stored object; ``ETag`` and
    ``Last-Modified`` stay the video's. The video is materialised: keep it small.
    """

    targets: ClassVar[frozenset[Target]] = _VIDEO
    encoding: str = "gzip"

    def encode(self, data: bytes) -> bytes:
        """The bytes sent for a video whose content is ``data``."""
        name = self.encoding.strip().lower()
        if name == "gzip":
            return gzip.compress(data, mtime=0)
        if name == "deflate":
            return zlib.compress(data)
        if name == "identity":
            return data
        garbage = f"this is not {self.encoding} data\n".encode()
        return (garbage * (len(data) // len(garbage) + 1))[: max(len(data), len(garbage))]


@attrs.define(eq=False)
class FaultRule:
    """One entry of the fake's fault list, as returned by ``add_fault``.

    A rule matches a request of its ``target`` (and of its ``request_id``, when set); it then
    fires with ``probability`` and, once it fired ``times`` times, is removed.
    """

    target: Target
    fault: Fault
    times: int | None = 1
    probability: float = 1.0
    request_id: str | None = None
    fired: int = 0
    """How many requests this rule has answered so far."""

    @property
    def remaining(self) -> int | None:
        """How many more times the rule will fire (``None``: no limit)."""
        return None if self.times is None else max(self.times - self.fired, 0)


def _api_error(status: int, code: int, message: str) -> ErrorResponse:
    return ErrorResponse(status, {"code": code, "message": message, "data": None})


def bad_request(
    message: str = "The parameter is invalid. Please check again.", code: int = 20012
) -> ErrorResponse:
    """400 ``{"code": 20012, "message": ..., "data": null}``."""
    return _api_error(400, code, message)


def unauthorized() -> ErrorResponse:
    """401 with the bare JSON string ``"Invalid token"``."""
    return ErrorResponse(401, b'"Invalid token"')


def payment_required() -> ErrorResponse:
    """402 ``{"code": 30001, ...}``: insufficient balance."""
    return _api_error(402, 30001, "Sorry, your account balance is insufficient")


def forbidden() -> ErrorResponse:
    """403 with the bare JSON string ``"Forbidden"``."""
    return ErrorResponse(403, b'"Forbidden"')


def not_found() -> ErrorResponse:
    """404 with the bare JSON string ``"404 page not found"``."""
    return ErrorResponse(404, b'"404 page not found"')


def _retry_after_value(retry_after: str | float) -> str:
    return retry_after if isinstance(retry_after, str) else f"{retry_after:g}"


def rate_limited(retry_after: str | float | None = None) -> ErrorResponse:
    """429 ``{"code": 50603, ...}``; a ``Retry-After`` header only when ``retry_after`` is given.

    A number is sent as seconds (``2`` → ``"2"``, ``0.5`` → ``"0.5"``); a string is sent as
    it is, so an HTTP date works too.
    """
    headers = {} if retry_after is None else {"Retry-After": _retry_after_value(retry_after)}
    body = {"code": 50603, "message": RATE_LIMIT_MESSAGE, "data": None}
    return ErrorResponse(429, body, headers)


def overloaded(retry_after: str | float | None = None) -> ErrorResponse:
    """503 ``{"code": 50505, "message": "Model service overloaded. ..."}``; a ``Retry-After``
    header only when ``retry_after`` is given (as for :func:`rate_limited`)."""
    fault = _api_error(503, 50505, "Model service overloaded. Please try again later.")
    if retry_after is None:
        return fault
    return attrs.evolve(fault, headers={"Retry-After": _retry_after_value(retry_after)})


def slow_down(retry_after: str | float | None = 1, status: int = 503) -> ErrorResponse:
    """``status`` (503, or e.g. 429) with a storage host's XML ``SlowDown`` error and a
    ``Retry-After`` header (seconds, as for :func:`rate_limited`; ``None``: no header).

    Meant for the video host: the throttling answer of an OSS/S3-like bucket.
    """
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    headers = {} if retry_after is None else {"Retry-After": _retry_after_value(retry_after)}
    return ErrorResponse(status, body, headers, content_type="application/xml")


def gateway_timeout() -> ErrorResponse:
    """504 with a plain-text body."""
    return ErrorResponse(504, "upstream request timeout", content_type="text/plain")


def server_error(status: int = 500) -> ErrorResponse:
    """``status`` (500 by default) with a plain-text body; works on the video host too."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Server Error"
    return ErrorResponse(status, f"{status} {phrase}", content_type="text/plain")


_NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def bad_gateway_html() -> ErrorResponse:
    """502 with nginx's HTML error page (``text/html``), as a gateway in between sends it."""
    return ErrorResponse(502, _NGINX_502, content_type="text/html")


def not_found_html(size: int = 64 * 1024) -> ErrorResponse:
    """404 with an HTML page (``text/html``) of at least ``size`` bytes, as a CDN or web
    server in front of the storage sends it: for testing that error messages stay short."""
    return ErrorResponse(404, _html_page("404 Not Found", size), content_type="text/html")
