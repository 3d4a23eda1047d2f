"""What the journal records, and the interface every backend offers.

A *job* is one video generation, known on our side by its ``job_key`` from before it has a
requestId (a submit is journaled before its POST). Its states are spelled as ``jobs
--json`` will show them, and change only so::

    submitting ──▶ waiting ──▶ downloading ──▶ done
        │  │          │             │
        │  └──────────┴─────────────┴──▶ failed ──(accepted again)──▶ waiting
        ▼                                  ▲
    submit_unknown ──(given up)────────────┘
        └──(requestId found by hand)──▶ waiting

    submitting     → waiting         submitted(): the POST answered with a requestId
    submitting     → failed          failed(): the POST surely created nothing (400, 402)
    submitting     → submit_unknown  submit_unknown(): the connection broke mid-POST; or
                                     its writer is gone (found when a journal opens, and
                                     at each heartbeat), or closed before the answer
    submit_unknown → waiting         resolve_unknown(key, request_id)
    submit_unknown → failed          resolve_unknown(key, None)
    waiting        → downloading     succeeded(urls)
    waiting        → failed          failed(): ``Failed`` at SiliconFlow, or an API error
    downloading    → done            video_done() of the last video
    downloading    → failed          video_failed() once no video is left in flight,
                                     or failed()
    failed         → waiting         accept() again, unless SiliconFlow said ``Failed``
    failed         → submitting      begin_submit() of its submit key, if no job was created

``submit_unknown`` is never resubmitted by the library: SiliconFlow has no idempotency key,
so a second POST may pay for a second video.

Each video of a job goes ``pending`` → ``downloading`` → ``done`` (or ``failed``). A video
is complete when the journal says ``done``: a file's name is no proof.

Writes are of two kinds. *Durable* ones (``accept``, ``begin_submit``, ``submitted``,
``succeeded``, ``video_done``, ...) are coroutines that return once their change is
committed. *Notes* (``note_poll``, ``note_video``) are fire-and-forget: frequent, cheap to
lose, merged with the next commit.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import attrs

from .._exceptions import ConfigurationError
from .._logging import redact_url, scrub_urls
from .._sinks._target import S3Target, is_s3_url

__all__ = [
    "ErrorInfo",
    "JobRecord",
    "JobState",
    "Journal",
    "Lease",
    "SubmitIntent",
    "VideoRecord",
    "VideoState",
    "sanitize_payload",
    "strip_query",
    "submit_key_for",
]


class JobState(enum.StrEnum):
    """Where a job stands in the journal. The values are a contract (``jobs --json``)."""

    SUBMITTING = "submitting"  #: journaled, its POST not answered yet
    SUBMIT_UNKNOWN = "submit_unknown"  #: nobody knows whether the POST created a job
    WAITING = "waiting"  #: has a requestId; polling until SiliconFlow finishes it
    DOWNLOADING = "downloading"  #: succeeded; its videos are being fetched
    DONE = "done"  #: every video is complete
    FAILED = "failed"  #: see ``error``

    @property
    def is_finished(self) -> bool:
        """True for ``done`` and ``failed``: nothing more will happen on its own."""
        return self is JobState.DONE or self is JobState.FAILED


class VideoState(enum.StrEnum):
    """Where one video of a job stands."""

    PENDING = "pending"  #: its URL is known, no byte yet
    DOWNLOADING = "downloading"
    DONE = "done"  #: complete at ``path``
    FAILED = "failed"


def strip_query(url: str | None) -> str | None:
    """``scheme://host/path`` of a video URL, for showing it: the query string of a signed
    URL opens the video for anyone who has it."""
    return None if url is None else redact_url(url)


def moment_of(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@attrs.frozen
class ErrorInfo:
    """Why a job or video failed: the exception's class name and its message (any URL in
    it without its query string)."""

    type: str
    message: str

    @classmethod
    def of(cls, error: BaseException | ErrorInfo) -> ErrorInfo:
        if isinstance(error, ErrorInfo):
            return error
        return cls(type(error).__name__, scrub_urls(str(error)))


@attrs.frozen
class VideoRecord:
    """One video of a job, as the journal knows it. ``url`` is the last one seen, with its
    credential: ``repr`` and ``as_dict`` leave the query out."""

    job_key: str
    index: int
    state: VideoState
    url: str | None = attrs.field(default=None, repr=lambda url: repr(strip_query(url)))
    url_seen_at: datetime | None = None
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    bytes_done: int = 0
    #: a file path, or an object key under an ``s3://`` dest
    path: str | None = None
    sha256: str | None = None
    error: ErrorInfo | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def complete(self) -> bool:
        """True once the journal has recorded the whole video at ``path``."""
        return self.state is VideoState.DONE

    def as_dict(self, *, url_query: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; URLs lose their query string unless ``url_query``."""
        return {
            "index": self.index,
            "state": self.state.value,
            "url": self.url if url_query else strip_query(self.url),
            "url_seen_at": _iso(self.url_seen_at),
            "size": self.size,
            "bytes_done": self.bytes_done,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "path": self.path,
            "sha256": self.sha256,
            "error": attrs.asdict(self.error) if self.error else None,
            "finished_at": _iso(self.finished_at),
        }


@attrs.frozen
class JobRecord:
    """One job, as the journal knows it.

    ``job_key`` is the request id for jobs accepted by id, and a generated key for jobs
    journaled before their submit. ``lease_owner`` is the process working on it now, if any.
    """

    job_key: str
    request_id: str | None
    state: JobState
    dest: str
    model: str | None = None
    payload_json: str | None = None
    submit_key: str | None = None
    remote_status: str | None = None
    remote_reason: str | None = None
    error: ErrorInfo | None = None
    poll_count: int = 0
    inference_s: float | None = None
    created_at: datetime | None = None
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    last_polled_at: datetime | None = None
    finished_at: datetime | None = None
    videos: tuple[VideoRecord, ...] = ()
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    @property
    def payload(self) -> dict[str, Any] | None:
        """The submit body as journaled (``None`` for jobs accepted by id)."""
        return None if self.payload_json is None else json.loads(self.payload_json)

    @property
    def paths(self) -> list[str]:
        """Where the complete videos are, in the API's order."""
        return [v.path for v in self.videos if v.complete and v.path is not None]

    def as_dict(self, *, url_query: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (what ``jobs --json`` prints); URLs lose their query string
        unless ``url_query``. The payload is left out: it may be large."""
        return {
            "job_key": self.job_key,
            "request_id": self.request_id,
            "state": self.state.value,
            "dest": self.dest,
            "model": self.model,
            "submit_key": self.submit_key,
            "remote_status": self.remote_status,
            "remote_reason": self.remote_reason,
            "error": attrs.asdict(self.error) if self.error else None,
            "poll_count": self.poll_count,
            "inference_s": self.inference_s,
            "created_at": _iso(self.created_at),
            "submitted_at": _iso(self.submitted_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
            "paths": self.paths,
            "videos": [v.as_dict(url_query=url_query) for v in self.videos],
            "lease_owner": self.lease_owner,
        }


@attrs.frozen
class Lease:
    """The right to work on one job (``index`` None) or one video of it, until
    ``expires_at`` unless renewed. An open journal renews its leases on its own."""

    job_key: str
    index: int | None
    owner: str
    expires_at: datetime


@attrs.frozen
class SubmitIntent:
    """What ``begin_submit`` decided. POST only when ``proceed`` is True: otherwise ``job``
    is the job already journaled under the same submit key (done, waiting, unknown, or
    being submitted by another process right now)."""

    job: JobRecord
    proceed: bool


#: Body fields that would put a credential in the journal.
_SECRET_FIELDS = frozenset({"api_key", "apikey", "authorization", "access_token", "secret"})
#: A data URI longer than this is journaled as its digest: the journal is no image store.
_MAX_DATA_URI = 1024


def sanitize_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The submit body as it is journaled: credentials refused, large ``data:`` URIs
    replaced by ``data:<type>;sha256=<hex>;bytes=<n>``."""
    clean: dict[str, Any] = {}
    for name, value in payload.items():
        if not isinstance(name, str):
            raise ConfigurationError(f"payload field names must be strings, got {name!r}")
        if name.casefold() in _SECRET_FIELDS:
            raise ConfigurationError(
                f"payload field {name!r} looks like a credential; the journal never holds one"
            )
        if isinstance(value, str) and value.startswith("data:") and len(value) > _MAX_DATA_URI:
            kind = value[5:].split(";", 1)[0].split(",", 1)[0]
            digest = hashlib.sha256(value.encode()).hexdigest()
            value = f"data:{kind};sha256={digest};bytes={len(value)}"
        clean[name] = value
    return clean


def submit_key_for(entry: Mapping[str, Any]) -> str:
    """The dedup key of one submit-from-file line: ``key:<its key>`` when it has a
    ``key``, else ``sha256:<digest of its canonical JSON>``. The same line submitted twice
    has the same key, so the second is recognised and not paid for again."""
    key = entry.get("key")
    if isinstance(key, str) and key:
        return f"key:{key}"
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def normalize_dest(dest: str | os.PathLike[str]) -> str:
    """A local folder as an absolute path (the journal outlives the working directory);
    URLs such as ``s3://bucket/prefix`` as given."""
    text = os.fspath(dest)
    if not text:
        raise ConfigurationError("dest must not be empty")
    if is_s3_url(text):
        return str(S3Target.parse(text))  # one spelling: s3://BUCKET/PREFIX/
    return text if "://" in text else os.path.abspath(text)


class Journal(abc.ABC):
    """A durable record of jobs and their videos. ``async with`` opens and closes it.

    Durable writes are coroutines that return once committed; notes return at once. Every
    method may raise a :class:`~siliconflow_video.JournalError`.
    """

    #: Who this open journal is in leases: ``host:pid:token``.
    owner: str
    #: True when writes are refused.
    read_only: bool

    async def __aenter__(self) -> Journal:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- life ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Open (creating or migrating) the journal; mark the ``submitting`` jobs whose
        writer is gone ``submit_unknown``."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Commit the pending notes, release this journal's leases, and close it. Jobs this
        journal was still submitting become ``submit_unknown``."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Return once every write made so far, notes included, is committed."""

    # -- durable writes -------------------------------------------------------------------

    @abc.abstractmethod
    async def accept(
        self, request_ids: Iterable[str], *, dest: str | os.PathLike[str], model: str | None = None
    ) -> list[JobRecord]:
        """Record jobs known by requestId (before their first status call); ids already
        journaled keep their row. Returns each id's job, in the order given."""

    @abc.abstractmethod
    async def accept_known(
        self, request_ids: Iterable[str], *, dest: str | os.PathLike[str]
    ) -> dict[str, JobRecord]:
        """``accept``, returning only the jobs journaled before this call (by requestId):
        a new id's job is plain ``waiting`` under its own key, and 10,000 of them are not
        worth 10,000 records (what the pipeline calls)."""

    @abc.abstractmethod
    async def begin_submit(
        self,
        payload: Mapping[str, Any],
        *,
        dest: str | os.PathLike[str],
        submit_key: str | None = None,
    ) -> SubmitIntent:
        """Record a submit before its POST, holding the new job's lease; with a
        ``submit_key`` already journaled, return that job instead (``proceed`` False)."""

    @abc.abstractmethod
    async def submitted(self, job_key: str, request_id: str) -> JobRecord:
        """The POST answered with ``request_id``: the job is ``waiting``."""

    @abc.abstractmethod
    async def submit_unknown(self, job_key: str, error: BaseException | ErrorInfo) -> JobRecord:
        """The POST may or may not have created a job (the connection broke mid-request)."""

    @abc.abstractmethod
    async def resolve_unknown(self, job_key: str, request_id: str | None) -> JobRecord:
        """A person settled a ``submit_unknown`` job: its requestId was found (``waiting``),
        or it is given up (``failed``)."""

    @abc.abstractmethod
    async def succeeded(
        self, job_key: str, urls: Sequence[str], *, inference_s: float | None = None
    ) -> JobRecord:
        """SiliconFlow said ``Succeed`` with these video URLs: ``downloading``."""

    @abc.abstractmethod
    async def failed(
        self,
        job_key: str,
        error: BaseException | ErrorInfo,
        *,
        remote_status: str | None = None,
        remote_reason: str | None = None,
    ) -> JobRecord:
        """The job ended without its videos (``remote_status="Failed"`` when SiliconFlow
        said so, which makes it final)."""

    @abc.abstractmethod
    async def video_done(
        self, job_key: str, index: int, *, path: str, size: int, sha256: str | None = None
    ) -> JobRecord:
        """One video is complete at ``path``; the last one makes the job ``done``."""

    @abc.abstractmethod
    async def reopen(self, job_key: str, indexes: Iterable[int]) -> JobRecord:
        """Videos recorded complete whose files are gone or changed since: ``pending``
        again, and the job ``waiting``, so they are fetched again."""

    @abc.abstractmethod
    async def video_failed(
        self, job_key: str, index: int, error: BaseException | ErrorInfo
    ) -> JobRecord:
        """One video could not be fetched; once none is left in flight the job ``failed``."""

    # -- notes (fire-and-forget, merged) ---------------------------------------------------

    @abc.abstractmethod
    def note_poll(self, job_key: str, remote_status: str) -> None:
        """One status call answered ``remote_status`` (counted; the latest kept)."""

    @abc.abstractmethod
    def note_video(
        self,
        job_key: str,
        index: int,
        *,
        url: str | None = None,
        size: int | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        bytes_done: int | None = None,
    ) -> None:
        """What was learnt about a video in flight: a fresh URL, its size and validator,
        the bytes on disk so far (a hint: the ``.part`` file is the truth)."""

    # -- leases -------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, job_key: str, index: int | None = None, *, wait: float = 0.0) -> Lease:
        """Take the lease of a job (or one video of it), waiting up to ``wait`` seconds for
        another process to let go; raise ``LeaseHeldError`` if it does not. A lease whose
        holder expired or died is taken over."""

    @abc.abstractmethod
    async def try_claim(self, job_key: str, index: int | None = None) -> Lease | None:
        """``claim`` without waiting: ``None`` when another live process holds it."""

    @abc.abstractmethod
    async def renew(self, lease: Lease) -> Lease:
        """Extend a lease; raise ``LeaseLostError`` if another process took it over."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a lease up (a no-op when it is no longer ours)."""

    # -- reads ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def jobs(
        self, *, unfinished: bool = False, states: Iterable[JobState] | None = None
    ) -> list[JobRecord]:
        """Every job (or the unfinished ones, or those in ``states``), oldest first."""

    async def count_jobs(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state listed, 0 for none): what
        ``jobs()`` would list, counted. SQL journals count in the database."""
        counts = dict.fromkeys(JobState, 0)
        for job in await self.jobs():
            counts[job.state] += 1
        return counts

    @abc.abstractmethod
    async def job(self, job_key: str) -> JobRecord:
        """One job by its key; raise ``UnknownJobError`` if there is none."""

    @abc.abstractmethod
    async def load_value(self, name: str) -> str | None:
        """A value the client keeps across restarts (what its poller learned), or None."""

    @abc.abstractmethod
    async def save_value(self, name: str, value: str) -> None:
        """Keep ``value`` under ``name``, replacing what was there."""

    @abc.abstractmethod
    async def find(self, request_id: str) -> JobRecord | None:
        """The job with this requestId, if journaled."""

    # -- uploads in flight (s3:// destinations) -------------------------------------------

    async def upload_state(self, job_key: str, index: int) -> str | None:
        """What :meth:`save_upload_state` last kept for one video, or None.

        The text is the pipeline's (JSON: the multipart upload's id, part size, the video
        host's validator, the parts' numbers and ETags); a journal keeps it opaque. This
        default keeps it among the values (``load_value``); SQL journals override it.
        """
        kept = await self.load_value(_upload_name(job_key, index))
        return kept or None

    async def save_upload_state(self, job_key: str, index: int, state: str | None) -> None:
        """Keep one video's upload state, replacing the last (None: forget it, once the
        video is done or its upload aborted). A durable write, made after each part."""
        await self.save_value(_upload_name(job_key, index), state or "")


def _upload_name(job_key: str, index: int) -> str:
    return f"upload:{index}:{job_key}"  # the index first: a job key may hold any ':'
