"""What ``/video/status`` answers, as frozen attrs classes, and the one converter that
builds them.

The converter is the package's own (never cattrs' global one). It is strict where a video
depends on it: ``status`` and each ``videos[].url`` must be exactly right, or the body is
malformed (and asked again). The optional extras (``reason``, ``timings``, ``seed``) are
lenient: a value of the wrong type reads as ``None`` and is logged, so a schema change there
never costs a video. Unknown keys are ignored, as older answers carried ones like
``position``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import cattrs
import cattrs.gen
import cattrs.v

from ._exceptions import ConfigurationError, MalformedResponseError, SiliconFlowError
from ._logging import logger, redact_url, scrub_urls

__all__ = [
    "EventKind",
    "Naming",
    "Outcome",
    "ProgressCallback",
    "ProgressEvent",
    "Status",
    "StoredFile",
    "StoredVideo",
    "Timings",
    "Video",
    "VideoFile",
    "VideoResults",
    "VideoStatus",
    "WaitResult",
    "check_request_id",
    "parse_status",
]


class Status(enum.StrEnum):
    """A job's state. Members compare equal to the API's strings (``Status.SUCCEED ==
    "Succeed"``)."""

    IN_QUEUE = "InQueue"
    IN_PROGRESS = "InProgress"
    SUCCEED = "Succeed"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more."""
        return self is Status.SUCCEED or self is Status.FAILED


@attrs.frozen
class Video:
    """One generated video. ``url`` is valid for one hour; its query string is a credential,
    so ``repr`` leaves it out."""

    url: str = attrs.field(repr=lambda url: repr(redact_url(url)))


@attrs.frozen
class Timings:
    """How long generation took, in seconds."""

    inference: float | None = None


@attrs.frozen
class VideoResults:
    """What a job produced. ``videos`` is empty while the job runs."""

    videos: tuple[Video, ...] = ()
    timings: Timings | None = None
    seed: int | None = None


@attrs.frozen
class VideoStatus:
    """One answer of ``/video/status`` for one requestId."""

    request_id: str
    status: Status
    reason: str | None = None
    results: VideoResults | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job has succeeded or failed."""
        return self.status.is_terminal

    @property
    def urls(self) -> list[str]:
        """The video URLs, in the API's order (empty unless the job succeeded)."""
        return [v.url for v in self.results.videos] if self.results else []


def _strict(kind: type[Any], name: str) -> Any:
    # cattrs' default str/int/float hooks call str()/int()/float() on anything; a status
    # body with a number for a URL must be reported, not coerced.
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return hook


def _float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _status(value: Any, _: Any) -> Status:
    if not isinstance(value, str):
        raise TypeError(f"expected a status string, got {type(value).__name__}")
    try:
        return Status(value)
    except ValueError:
        raise ValueError(f"unknown status {value!r}") from None


def _is(kind: Any) -> Callable[[Any], bool]:
    return lambda t: bool(t == kind)


def _lenient(conv: cattrs.Converter, kind: Any) -> Any:
    """A hook for an optional extra: a value it cannot read becomes None, and is logged."""
    inner = kind.__args__[0]

    def hook(value: Any, _: Any) -> Any:
        if value is None:
            return None
        try:
            return conv.structure(value, inner)
        except Exception:  # noqa: BLE001 - an unreadable extra is dropped, never fatal
            logger.debug("ignoring an unreadable %s in a status body: %r", inner, value)
            return None

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(Status, _status)
    for optional in (str | None, int | None, float | None, Timings | None):
        conv.register_structure_hook_func(_is(optional), _lenient(conv, optional))

    def objects_only(cl: type[Any]) -> Any:
        # A list or a string where the API documents an object is malformed, not "empty".
        inner = cattrs.gen.make_dict_structure_fn(cl, conv)

        def hook(value: Any, kind: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return inner(value, kind)

        return hook

    conv.register_structure_hook_factory(attrs.has, objects_only)

    videos_hook = conv.get_structure_hook(tuple[Video, ...])

    def videos(value: Any, kind: Any) -> tuple[Video, ...]:
        if value is None:  # seen as null while a job runs
            return ()
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return videos_hook(value, kind)  # type: ignore[no-any-return]

    conv.register_structure_hook_func(lambda t: t == tuple[Video, ...], videos)
    return conv


converter = _make_converter()


def excerpt(body: bytes) -> str:
    """The start of a body, for error messages, with any signed URL's query dropped."""
    return scrub_urls(body[:200].decode("utf-8", "replace"))[:120]


def _describe(exc: BaseException, kind: type[Any] | None) -> str:
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)  # our own hooks say precisely what was wrong
    return cattrs.v.format_exception(exc, kind)


def _first_field(exc: Exception) -> tuple[str, str]:
    """The path and message of the first leaf error in a cattrs error group."""
    if isinstance(exc, cattrs.BaseValidationError):
        for message in cattrs.transform_error(exc, path="$", format_exception=_describe):
            problem, _, where = message.rpartition(" @ ")
            return (where or "$"), (problem or message)
    return "$", str(exc)


def parse_status(body: bytes, request_id: str) -> VideoStatus:
    """Build a VideoStatus from a 200 body, or raise MalformedResponseError naming the
    bad field. Any bytes at all give one of the two."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedResponseError(
            "status body is not JSON", field="$", excerpt=excerpt(body), request_id=request_id
        ) from None
    if not isinstance(data, dict):
        raise MalformedResponseError(
            f"status body is a JSON {type(data).__name__}, not an object",
            field="$",
            excerpt=excerpt(body),
            request_id=request_id,
        )
    if "status" not in data:
        raise MalformedResponseError(
            "status body has no status",
            field="$.status",
            excerpt=excerpt(body),
            request_id=request_id,
        )
    data["request_id"] = request_id
    try:
        status = converter.structure(data, VideoStatus)
    except Exception as exc:  # noqa: BLE001 - any structuring failure is a malformed body
        field, problem = _first_field(exc)
        raise MalformedResponseError(
            f"unexpected status body: {problem}",
            field=field,
            excerpt=excerpt(body),
            request_id=request_id,
        ) from None
    if status.status is Status.SUCCEED and not status.urls:
        # A paid job that "succeeded" with nothing to fetch is an answer to ask again,
        # never a success with zero files.
        raise MalformedResponseError(
            "job succeeded but the body lists no video URL",
            field="$.results.videos",
            excerpt=excerpt(body),
            request_id=request_id,
        )
    return status


# -- what the client gives back ------------------------------------------------------------


def check_request_id(request_id: object) -> str:
    """``request_id`` itself when it is a non-empty string; a typed error otherwise."""
    if not isinstance(request_id, str):
        raise TypeError(f"request_id must be a str, got {type(request_id).__name__}")
    if not request_id.strip():
        raise ConfigurationError("request_id must be a non-empty string")
    return request_id


@attrs.frozen
class WaitResult:
    """How waiting for one job ended: its terminal status, or the error that ended it
    (``JobFailedError``, ``WaitTimeoutError``, an ``APIStatusError``...)."""

    request_id: str
    status: VideoStatus | None
    error: SiliconFlowError | None

    @property
    def ok(self) -> bool:
        """True when the job succeeded."""
        return self.error is None


@attrs.frozen
class VideoFile:
    """A complete video on disk.

    ``sha256`` is the hex digest of its bytes when ``DownloadPolicy(sha256=True)`` asked
    for it, else None; ``reused`` is True when a complete file was already at ``path`` and
    nothing was downloaded; ``index`` is the video's place in the job's ``results.videos``.
    """

    path: Path
    size: int
    sha256: str | None
    reused: bool
    index: int

    @property
    def location(self) -> str:
        """Where the video is, as text: its path (what ``StoredVideo.location`` is to an
        object)."""
        return str(self.path)


@attrs.frozen
class StoredVideo:
    """A complete video in an object store (an ``s3://BUCKET/PREFIX`` destination), as
    :class:`VideoFile` is one on disk.

    ``key`` is PREFIX + the video's name; ``etag`` is the store's (None when a rerun found
    the object through the journal alone); ``reused`` is True when the object was already
    there, whole, and nothing was sent; ``index`` is the video's place in the job's
    ``results.videos``.
    """

    bucket: str
    key: str
    size: int
    etag: str | None
    reused: bool
    index: int

    @property
    def location(self) -> str:
        """``s3://BUCKET/KEY``."""
        return f"s3://{self.bucket}/{self.key}"

    @property
    def url(self) -> str:
        """``s3://BUCKET/KEY`` (the same as ``location``)."""
        return self.location

    @property
    def sha256(self) -> str | None:
        """Always None: uploads are not hashed (the store's ETag names the bytes)."""
        return None


#: A complete video: a file on disk or an object in a bucket.
StoredFile = VideoFile | StoredVideo


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
    #: where a ``FILE`` event's video is: its path, or ``s3://BUCKET/KEY`` (``path`` None)
    location: str | None = None


ProgressCallback = Callable[[ProgressEvent], None]


@attrs.frozen
class Outcome:
    """How one requestId ended.

    ``ok`` is True when the job succeeded and every one of its videos is stored, whole.
    ``files`` holds the complete videos, in the API's order: a :class:`VideoFile` (path,
    size, sha256) for a folder destination, a :class:`StoredVideo` (bucket, key, size,
    etag) for an ``s3://`` one; both have ``location``, ``size``, ``reused`` and ``index``.
    ``error`` is the first failed video's error (or the id's own); ``errors`` holds every
    failed video's, in the API's order (empty when the id failed before its videos).
    """

    request_id: str
    status: VideoStatus | None
    files: tuple[VideoFile | StoredVideo, ...] = ()
    error: SiliconFlowError | None = None
    errors: tuple[SiliconFlowError, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def paths(self) -> list[Path]:
        """The complete videos' paths on disk, in the API's order (none for ``s3://``)."""
        return [f.path for f in self.files if isinstance(f, VideoFile)]

    @property
    def locations(self) -> list[str]:
        """Where every complete video is: paths, or ``s3://BUCKET/KEY``, in the API's order."""
        return [f.location for f in self.files]
