"""siliconflow-video: wait for SiliconFlow video jobs and get every video onto disk.

::

    from siliconflow_video import wait_and_download

    outcomes = await wait_and_download(request_ids, "videos/")
"""

from ._batch import (
    EventKind,
    Naming,
    Outcome,
    ProgressCallback,
    ProgressEvent,
    wait_and_download,
)
from ._client import AsyncClient, WaitResult
from ._config import DownloadPolicy, PollPolicy, RetryPolicy
from ._download import VideoFile
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    ForeignFileError,
    GatewayTimeoutError,
    JobFailedError,
    MalformedResponseError,
    NotFoundError,
    OverloadedError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SiliconFlowError,
    UnsafeFileNameError,
    VideoURLExpiredError,
    WaitTimeoutError,
)
from ._logging import RedactingFilter
from ._models import Status, Timings, Video, VideoResults, VideoStatus
from ._pacing import GovernorStats

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "DownloadPolicy",
    "EventKind",
    "ForeignFileError",
    "GatewayTimeoutError",
    "GovernorStats",
    "JobFailedError",
    "MalformedResponseError",
    "Naming",
    "NotFoundError",
    "Outcome",
    "OverloadedError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "PollPolicy",
    "ProgressCallback",
    "ProgressEvent",
    "RateLimitError",
    "RedactingFilter",
    "RetryPolicy",
    "ServerError",
    "SiliconFlowError",
    "Status",
    "Timings",
    "UnsafeFileNameError",
    "Video",
    "VideoFile",
    "VideoResults",
    "VideoStatus",
    "VideoURLExpiredError",
    "WaitResult",
    "WaitTimeoutError",
    "__version__",
    "wait_and_download",
]
