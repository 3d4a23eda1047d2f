"""Settings: environment variables and the frozen policy objects.

Policies are small value objects with module-level defaults; change one field for one call
with ``attrs.evolve(policy, field=value)``.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from ._exceptions import ConfigurationError

API_KEY_ENV = "SILICONFLOW_API_KEY"
BASE_URL_ENV = "SILICONFLOW_BASE_URL"
DEFAULT_BASE_URL = "https://api.siliconflow.cn/v1"


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{attribute.name} must be > 0, got {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ConfigurationError(f"{attribute.name} must be >= 0, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigurationError(f"{attribute.name} must be >= 1, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How one API request is retried on transient failures (429, 5xx, resets, timeouts,
    malformed 200 bodies): exponential backoff with full jitter, at most ``max_attempts``
    tries, honouring ``Retry-After`` when the server sends one."""

    max_attempts: int = attrs.field(default=4, validator=_at_least_one)
    base_delay: float = attrs.field(default=0.5, validator=_positive)
    max_delay: float = attrs.field(default=20.0, validator=_positive)
    #: Longest ``Retry-After`` that is honoured; a longer one is cut to this, so a server
    #: asking for hours cannot silence the client (or a wait) for hours.
    max_retry_after: float = attrs.field(default=120.0, validator=_positive)


@attrs.frozen
class PollPolicy:
    """How ``wait`` spaces its status calls.

    By default the client learns how long jobs run (per model and size when it submitted
    the job, pooled otherwise) and polls where a finish is likely: sparsely while it is
    not, densely across the window where it is, as the answers say when each run started.
    While nothing is learned yet, or once a job has outlived what was learned, it polls
    *blind*: from ``interval`` growing by ``growth`` per call up to ``max_blind_interval``.
    No gap is ever longer than ``max_interval``; each is spread by +/- ``jitter`` (a
    fraction). ``PollPolicy.growing()`` is the schedule of earlier releases (always blind:
    1 s growing by 1.5x up to 10 s).
    """

    interval: float = attrs.field(default=1.0, validator=_positive)
    #: The longest gap between two polls of one job, always.
    max_interval: float = attrs.field(default=60.0, validator=_positive)
    growth: float = attrs.field(default=1.5)
    jitter: float = attrs.field(default=0.2)
    #: The longest gap while polling blind (nothing learned, or a job slower than every
    #: learned run: its finish may come at any moment), and while a job waits in the queue.
    max_blind_interval: float = attrs.field(default=10.0, validator=_positive)
    #: Learn run times and poll where a finish is likely; False: always poll blind.
    learn: bool = True
    #: How many seconds of delay (from a job's finish to the poll that sees it) one status
    #: call is worth: larger means fewer calls and later sightings. Learned polling only.
    call_cost: float = attrs.field(default=0.5, validator=_positive)
    #: How long answers that are not a usable status (a status the API does not document,
    #: such as ``"Cancelled"``; a ``Succeed`` with no video URL; a body that is not a status)
    #: are asked again in a row, in seconds, before the wait ends with a
    #: ``MalformedResponseError`` naming the last one. Any usable answer starts it over.
    malformed_grace: float = attrs.field(default=60.0, validator=_not_negative)

    @growth.validator
    def _check_growth(self, _: attrs.Attribute[float], value: float) -> None:
        if value < 1.0:
            raise ConfigurationError(f"growth must be >= 1.0, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _: attrs.Attribute[float], value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ConfigurationError(f"jitter must be in [0, 1), got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.max_interval < self.interval:
            raise ConfigurationError(
                f"max_poll_interval ({self.max_interval}) must be >= "
                f"poll_interval ({self.interval})"
            )

    @property
    def blind_cap(self) -> float:
        """The longest gap while polling blind: ``max_blind_interval``, within
        ``max_interval``."""
        return min(self.max_blind_interval, self.max_interval)

    @classmethod
    def growing(cls, **changes: Any) -> PollPolicy:
        """The schedule of earlier releases, which learns nothing: 1 s growing by 1.5x per
        call up to 10 s (``changes`` override fields)."""
        fields: dict[str, Any] = {"max_interval": 10.0, "learn": False, **changes}
        return cls(**fields)


@attrs.frozen
class DownloadPolicy:
    """How one video is brought to disk."""

    #: When writes go through worker threads (see ``max_loop_write``): bytes gathered in
    #: memory before one write to disk, one thread hop each.
    write_buffer: int = attrs.field(default=4 * 1024 * 1024, validator=_at_least_one)
    #: Tries per video for 5xx, resets, timeouts and short bodies (each resumes).
    max_attempts: int = attrs.field(default=8, validator=_at_least_one)
    base_delay: float = attrs.field(default=0.5, validator=_positive)
    max_delay: float = attrs.field(default=20.0, validator=_positive)
    connect_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Longest wait for the video host: from the start of a request to its answer (with a
    #: session of your own whose connector limits connections, the wait for a free one
    #: counts too), and between pieces of the body. A silence is cut off within an eighth
    #: more. Time spent waiting for our own disk does not count.
    read_timeout: float = attrs.field(default=60.0, validator=_positive)
    #: How many times an expired URL is exchanged for a fresh one per video.
    max_url_refreshes: int = attrs.field(default=3, validator=_not_negative)
    #: Longest wait a video host's ``Retry-After`` (on 429 and 503) may impose on one
    #: retry, in seconds: a longer one is cut to this.
    max_retry_after: float = attrs.field(default=120.0, validator=_positive)
    #: fsync each file before its rename, so it survives a power cut, not only a crash.
    fsync: bool = False
    #: Longest a disk write (with its hashing) may hold the event loop, in seconds. Bytes
    #: are written from the loop as they arrive, while they are still in the CPU's cache
    #: (half the cost of handing them to a thread); after one write slower than this,
    #: writes go through worker threads, a ``write_buffer`` at a time, for a minute.
    #: 0: always through worker threads.
    max_loop_write: float = attrs.field(default=0.005, validator=_not_negative)
    #: Compute each video's sha256 while it streams (``VideoFile.sha256``). Off by default:
    #: it costs about as much CPU as the download itself, and SiliconFlow publishes no
    #: digest to check it against (the announced length guards every download either way,
    #: and the ``ETag``/``Last-Modified`` validator every resume).
    sha256: bool = False
    #: A cap on the bytes per second of all of one client's video transfers together
    #: (curl's ``--limit-rate``, for the whole batch); None: as fast as the host sends.
    max_bytes_per_second: float | None = attrs.field(default=None)
    #: What to do with a file at a video's name that this library did not record as that
    #: video (a ``ForeignFileError`` by default, the file left untouched): ``"replace"``
    #: downloads the video and puts it in that file's place (``--force``).
    foreign_files: Literal["refuse", "replace"] = attrs.field(default="refuse")

    @max_bytes_per_second.validator
    def _check_rate(self, attribute: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and not value >= 1:
            raise ConfigurationError(f"max_bytes_per_second must be >= 1 or None, got {value!r}")

    @foreign_files.validator
    def _check_foreign(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in ("refuse", "replace"):
            raise ConfigurationError(f"foreign_files must be 'refuse' or 'replace', got {value!r}")


DEFAULT_RETRY = RetryPolicy()
DEFAULT_POLL = PollPolicy()
DEFAULT_DOWNLOAD = DownloadPolicy()


def resolve_api_key(api_key: str | None) -> str:
    """The key given, else ``SILICONFLOW_API_KEY``; a clear error when there is none."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    key = (key or "").strip()
    if not key:
        raise ConfigurationError(
            f"no API key: set the {API_KEY_ENV} environment variable "
            "or pass api_key=... to AsyncClient"
        )
    if any(ch in key for ch in "\r\n\x00") or not key.isprintable():
        # Never echo the key itself: it is a secret even when it is malformed.
        raise ConfigurationError(
            f"the API key (from api_key=... or {API_KEY_ENV}) contains "
            "control characters; copy it again from the SiliconFlow console"
        )
    return key


def resolve_base_url(base_url: str | None) -> str:
    """The URL given, else ``SILICONFLOW_BASE_URL``, else the mainland default."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"base URL must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {url!r} "
            f"(from base_url=... or {BASE_URL_ENV})"
        )
    if parts.username is not None or parts.password is not None:
        # The key goes in the Authorization header; credentials in the URL would clash with
        # it (aiohttp refuses the pair) and show wherever the URL is shown.
        shown = url.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)
        raise ConfigurationError(
            f"base URL must not carry a user or password, got {shown!r} with one "
            f"(from base_url=... or {BASE_URL_ENV}); the API key goes in api_key= or "
            "SILICONFLOW_API_KEY"
        )
    return url
