"""Every error the package raises, in one place.

Three kinds of failure are kept apart: a *request* to the API that failed, a *job* that
failed on SiliconFlow's side, and a *download* that failed on the way to disk.

::

    SiliconFlowError
    ├── ConfigurationError                  (also ValueError) no key, bad base URL, ...
    │   └── InvalidDestinationError         not a folder nor a well-formed s3://BUCKET/PREFIX
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
    │   └── VideoURLExpiredError            the URL expired and no fresh one came back
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

Object-store errors carry ``bucket`` and ``key`` and never the secret access key.
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
    "GatewayTimeoutError",
    "IncompleteUploadError",
    "InvalidDestinationError",
    "JobFailedError",
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
    "UnsafeFileNameError",
    "VideoURLExpiredError",
    "WaitTimeoutError",
    "error_for_status",
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


class VideoURLExpiredError(DownloadError):
    """The video URL expired (they live one hour) and ``/video/status`` gave no fresh one."""


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
