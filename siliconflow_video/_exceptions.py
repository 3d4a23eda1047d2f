"""Every error the package raises, in one place.

Three kinds of failure are kept apart: a *request* to the API that failed, a *job* that
failed on SiliconFlow's side, and a *download* that failed on the way to disk.

::

    SiliconFlowError
    ├── ConfigurationError                  (also ValueError) no key, bad base URL, ...
    │   └── InvalidDestinationError         neither a folder nor a good s3://BUCKET/PREFIX
    ├── UnsafeFileNameError                 (also ValueError) a name that would leave the folder
    ├── APIError                            a request to the API failed
    │   ├── APIConnectionError              could not connect, or the connection dropped
    │   │   └── APITimeoutError             (also TimeoutError) no answer in time
    │   ├── MalformedResponseError          a 200 whose body is not the documented shape
    │   └── APIStatusError                  the API answered with an error status
    │       ├── BadRequestError             400
    │       ├── AuthenticationError         401
    │       ├── PaymentRequiredError        402
    │       ├── PermissionDeniedError       403
    │       ├── NotFoundError               404
    │       ├── RateLimitError              429
    │       └── ServerError                 other 5xx
    │           ├── OverloadedError         503
    │           └── GatewayTimeoutError     504
    ├── JobFailedError                      the job ended "Failed": not an API failure
    ├── WaitTimeoutError                    (also TimeoutError) wait(timeout=...) ran out
    ├── DownloadError                       a video could not be brought to disk
    │   ├── ForeignFileError                (also FileExistsError) its name holds a file
    │   │                                   the library did not record as this video
    │   └── VideoURLExpiredError            the URL expired and no fresh one came back
    ├── JournalError                        the journal cannot record or read something
    │   ├── JournalUnavailableError         (also ValueError) unknown backend, or not built yet
    │   ├── JournalPathError                missing folder, a folder as path, no journal there
    │   ├── JournalCorruptError             not an SQLite database, or a damaged one
    │   ├── JournalForeignError             an SQLite database of some other application
    │   ├── JournalVersionError             written by a newer siliconflow-video
    │   ├── JournalReadOnlyError            opened read-only, or the file is: writes refused
    │   ├── JournalBusyError                (also TimeoutError) the write lock stayed taken
    │   ├── JournalConnectionError          (also ConnectionError) PostgreSQL out of reach
    │   ├── JournalStateError               (also ValueError) a change the states forbid
    │   ├── UnknownJobError                 (also LookupError) no such job or video
    │   ├── SubmitUnknownError              a journaled submit may have reached SiliconFlow
    │   └── LeaseError                      a job or video is not ours to work on
    │       ├── LeaseHeldError              another live process holds it
    │       └── LeaseLostError              ours expired and another process took it
    └── StorageError                        a request to the object store (S3) failed
        ├── StorageConnectionError          (also ConnectionError) endpoint unreachable
        ├── StorageAuthenticationError      no credentials, unknown key, wrong secret
        ├── StoragePermissionError          the credentials may not do this (AccessDenied)
        ├── NoSuchBucketError               the bucket does not exist
        ├── NoSuchUploadError               the multipart upload is gone (done or aborted)
        ├── StorageUnavailableError         5xx / SlowDown, still failing after retries
        └── IncompleteUploadError           fewer or more bytes than the video's size

Errors that concern one job carry its ``request_id`` (``None`` when there is no job, as for
``submit``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "ForeignFileError",
    "GatewayTimeoutError",
    "IncompleteUploadError",
    "InvalidDestinationError",
    "JobFailedError",
    "JournalBusyError",
    "JournalConnectionError",
    "JournalCorruptError",
    "JournalError",
    "JournalForeignError",
    "JournalPathError",
    "JournalReadOnlyError",
    "JournalStateError",
    "JournalUnavailableError",
    "JournalVersionError",
    "LeaseError",
    "LeaseHeldError",
    "LeaseLostError",
    "MalformedResponseError",
    "NoSuchBucketError",
    "NoSuchUploadError",
    "NotFoundError",
    "OverloadedError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SiliconFlowError",
    "StorageAuthenticationError",
    "StorageConnectionError",
    "StorageError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "SubmitUnknownError",
    "UnknownJobError",
    "UnsafeFileNameError",
    "VideoURLExpiredError",
    "WaitTimeoutError",
]


class SiliconFlowError(Exception):
    """Root of every error this package raises."""

    request_id: str | None = None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id is not None and self.request_id not in self.message:
            return f"{self.message} (requestId {self.request_id!r})"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword-only state across pickling (multiprocessing, logging handlers).
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[SiliconFlowError], state: dict[str, Any]) -> SiliconFlowError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class ConfigurationError(SiliconFlowError, ValueError):
    """The client is not set up right: no API key, a bad base URL or option."""


class UnsafeFileNameError(SiliconFlowError, ValueError):
    """A file name (from a requestId or a naming callback) would not stay a plain name
    inside the destination folder."""


class APIError(SiliconFlowError):
    """A request to the SiliconFlow API failed."""


class APIConnectionError(APIError):
    """The API could not be reached, or the connection broke before a whole answer came.

    ``maybe_processed`` is False only when no connection was made at all, so the request
    surely never reached SiliconFlow (``submit`` retries only then).
    """

    maybe_processed: bool = True


class APITimeoutError(APIConnectionError, TimeoutError):
    """The API did not answer in time."""


class MalformedResponseError(APIError):
    """The API answered 200, but the body is not the documented shape.

    ``field`` names the offending part (``$.status``, ``$.results.videos[0].url``) and
    ``excerpt`` holds the start of the body.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str,
        excerpt: str,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{message} at {field}; body starts {excerpt!r}", request_id=request_id)
        self.field = field
        self.excerpt = excerpt


class APIStatusError(APIError):
    """The API answered with an HTTP error status.

    ``code`` is SiliconFlow's numeric code from the body (e.g. 20012) when it sent one, and
    ``trace_id`` the ``x-siliconcloud-trace-id`` header, worth quoting to support.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: int | None = None,
        trace_id: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        detail = f"HTTP {status_code}"
        if code is not None:
            detail += f", code {code}"
        if trace_id:
            detail += f", trace id {trace_id}"
        super().__init__(f"{message} ({detail})", request_id=request_id)
        self.api_message = message
        self.status_code = status_code
        self.code = code
        self.trace_id = trace_id
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: the request was not accepted, for example an unknown requestId or model."""


class AuthenticationError(APIStatusError):
    """401: the API key was rejected. Check SILICONFLOW_API_KEY and the base URL's region."""


class PaymentRequiredError(APIStatusError):
    """402: the account has no balance left."""


class PermissionDeniedError(APIStatusError):
    """403: not allowed, for example real-name verification is required."""


class NotFoundError(APIStatusError):
    """404: no such endpoint; the base URL is probably wrong."""


class RateLimitError(APIStatusError):
    """429: too many requests for the account or the model."""


class ServerError(APIStatusError):
    """5xx: SiliconFlow or a gateway in front of it failed."""


class OverloadedError(ServerError):
    """503: the model service is overloaded."""


class GatewayTimeoutError(ServerError):
    """504: a gateway timed out waiting for SiliconFlow."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
    503: OverloadedError,
    504: GatewayTimeoutError,
}


def error_for_status(status_code: int) -> type[APIStatusError]:
    """The class that stands for an HTTP error status."""
    cls = _STATUS_CLASSES.get(status_code)
    if cls is not None:
        return cls
    return ServerError if status_code >= 500 else APIStatusError


class JobFailedError(SiliconFlowError):
    """The job ended with status ``Failed``; ``reason`` is SiliconFlow's explanation.

    This is not an API failure: the request worked, the generation did not.
    """

    def __init__(self, request_id: str, reason: str | None) -> None:
        super().__init__(
            f"job {request_id!r} failed: {reason or 'no reason given'}",
            request_id=request_id,
        )
        self.reason = reason


class WaitTimeoutError(SiliconFlowError, TimeoutError):
    """``wait(..., timeout=...)`` ran out before the job finished.

    The job itself goes on at SiliconFlow; wait for it again later.
    """

    def __init__(self, request_id: str, timeout: float, last_status: str | None) -> None:
        seen = f"; last status {last_status}" if last_status else ""
        super().__init__(
            f"job {request_id!r} did not finish within {timeout:g} s{seen}",
            request_id=request_id,
        )
        self.timeout = timeout
        self.last_status = last_status


class DownloadError(SiliconFlowError):
    """A video could not be brought to disk.

    ``status_code`` is the video host's HTTP status when one caused it; ``path`` the file
    that was being written. Bytes already on disk stay in the ``.part`` file for a rerun.
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        url: str | None = None,
        path: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.url = url
        self.path = path
        self.status_code = status_code


class ForeignFileError(DownloadError, FileExistsError):
    """The video's file name (``path``) already holds a file that this library did not
    record as the complete video of this request id and index: a file of your own, another
    job's, or one from before records were kept. It is left as it is and nothing is
    downloaded; move it away (or choose another ``naming``) to download the video."""


class VideoURLExpiredError(DownloadError):
    """The video URL expired (they live one hour) and ``/video/status`` gave no fresh one."""


# -- the journal -------------------------------------------------------------------------


class JournalError(SiliconFlowError):
    """The journal cannot record or read something; ``path`` names its file (or URL).

    Nothing is lost when one is raised: a write that raised was not made, and every write
    acknowledged before it stays.
    """

    def __init__(
        self, message: str, *, path: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.path = path


class JournalUnavailableError(JournalError, ValueError):
    """The journal URL names a backend that does not exist, or one not built yet
    (``postgresql://``)."""


class JournalPathError(JournalError):
    """The journal's folder does not exist, the path is a folder, or (when only reading)
    there is no journal at the path."""


class JournalCorruptError(JournalError):
    """The file is not an SQLite database, or SQLite reports it damaged."""


class JournalForeignError(JournalError):
    """The file is an SQLite database, but not a siliconflow-video journal: it is left
    untouched."""


class JournalVersionError(JournalError):
    """The journal was written by a newer siliconflow-video (schema ``found``; this one
    knows up to ``supported``). Upgrade the package; the file is left untouched."""

    def __init__(self, message: str, *, path: str | None, found: int, supported: int) -> None:
        super().__init__(message, path=path)
        self.found = found
        self.supported = supported


class JournalReadOnlyError(JournalError):
    """The journal was opened read-only, or its file cannot be written: reads work,
    writes are refused."""


class JournalBusyError(JournalError, TimeoutError):
    """Another process kept the journal's write lock longer than ``busy_timeout``."""


class JournalConnectionError(JournalError, ConnectionError):
    """The journal's PostgreSQL server could not be reached: when opening it, or for
    ``reconnect_timeout`` seconds after the connection was lost. The change was not made;
    the journal connects again on its next use."""


class JournalStateError(JournalError, ValueError):
    """A change the journal's state machine does not allow, such as a video ``done`` on a
    job that failed, or a requestId already recorded under another job."""


class UnknownJobError(JournalError, LookupError):
    """No such job (or video of a job) in the journal."""


class LeaseError(JournalError):
    """A job or video is not ours to work on. ``owner`` names the process that holds it
    (``host:pid:token``) and ``expires_at`` (seconds since the epoch) when its lease ends
    unless renewed."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        owner: str | None = None,
        expires_at: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, path=path, request_id=request_id)
        self.owner = owner
        self.expires_at = expires_at


class LeaseHeldError(LeaseError):
    """Another live process holds the lease: it is working on this job or video now."""


class LeaseLostError(LeaseError):
    """Our lease ran out (the process stalled past its expiry) and another process took
    it over: stop working on this job or video."""


class SubmitUnknownError(JournalError):
    """A journaled submit with this key may already have reached SiliconFlow, and its
    requestId was never recorded (``submit_unknown``), or another process is submitting it
    now. It is never resubmitted on its own: SiliconFlow has no idempotency key, and a
    second submit can charge twice. ``job_key`` names the journal's row."""

    def __init__(self, message: str, *, job_key: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.job_key = job_key


# --- object storage (s3://BUCKET/PREFIX destinations) -------------------------------------


class InvalidDestinationError(ConfigurationError):
    """A destination that is neither a folder nor a well-formed ``s3://BUCKET/PREFIX``."""


class StorageError(SiliconFlowError):
    """A request to the object store failed.

    ``code`` is the S3 error code when the store sent one (``NoSuchBucket``, ``SlowDown``),
    ``status_code`` its HTTP status. ``retryable`` is True when the same request may
    succeed later: the multipart upload stays open, and a later try resumes it.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.bucket = bucket
        self.key = key
        self.code = code
        self.status_code = status_code


class StorageConnectionError(StorageError, ConnectionError):
    """The object store's endpoint could not be reached, or the connection broke."""

    retryable = True


class StorageAuthenticationError(StorageError):
    """No credentials were found, or the store rejected them (unknown access key, wrong
    secret, expired token)."""


class StoragePermissionError(StorageError):
    """The credentials are valid but may not do this (``AccessDenied``)."""


class NoSuchBucketError(StorageError):
    """The bucket does not exist (or not at this endpoint and region)."""


class NoSuchUploadError(StorageError):
    """The multipart upload is gone: completed, aborted, or expired by a lifecycle rule."""


class StorageUnavailableError(StorageError):
    """The store answered 5xx or ``SlowDown`` on every try botocore made."""

    retryable = True


class IncompleteUploadError(StorageError):
    """The bytes written are not the video's size; nothing was made visible and the
    multipart upload stays open for a resume."""
