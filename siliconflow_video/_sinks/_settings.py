"""How to reach an S3-compatible store, and the part size rules every one of them accepts.

Anything left ``None`` is resolved by botocore exactly as the AWS CLI does: ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the profiles in
``~/.aws/config`` and ``~/.aws/credentials``, then instance and container roles.

Settings for stores other than AWS::

    # Cloudflare R2
    S3Settings(endpoint_url="https://<account-id>.r2.cloudflarestorage.com", region="auto")
    # Aliyun OSS (virtual-hosted style only)
    S3Settings(endpoint_url="https://oss-cn-hangzhou.aliyuncs.com", region="cn-hangzhou",
               addressing_style="virtual")
    # Tencent COS
    S3Settings(endpoint_url="https://cos.ap-guangzhou.myqcloud.com", region="ap-guangzhou",
               addressing_style="virtual")
    # MinIO, SeaweedFS and other self-hosted stores
    S3Settings(endpoint_url="http://127.0.0.1:8333", addressing_style="path")
"""

from __future__ import annotations

from typing import Literal

import attrs

from .._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "AddressingStyle",
    "S3Settings",
    "check_part_size",
    "part_size_for",
]

MiB = 1024 * 1024

#: S3's smallest part (every part but the last); R2 also wants all but the last equal.
MIN_PART_SIZE = 5 * MiB
#: S3's largest part.
MAX_PART_SIZE = 5 * 1024 * MiB
#: S3's most parts in one upload.
MAX_PARTS = 10_000
#: Fits AWS, R2 (≥ 5 MiB, equal parts), OSS (≥ 100 KB) and COS alike, and bounds memory at a
#: few parts per transfer. 8 MiB x 10,000 parts = 78 GiB, far above any generated video.
DEFAULT_PART_SIZE = 8 * MiB

AddressingStyle = Literal["auto", "path", "virtual"]


def check_part_size(part_size: int) -> int:
    """``part_size`` if every S3-compatible store accepts it, else ConfigurationError."""
    if isinstance(part_size, bool) or not isinstance(part_size, int):
        raise ConfigurationError(f"part_size must be an int, not {type(part_size).__name__}")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ConfigurationError(
            f"part_size must be between 5 MiB and 5 GiB (S3's limits), not {part_size}"
        )
    return part_size


def part_size_for(total_size: int | None, minimum: int = DEFAULT_PART_SIZE) -> int:
    """The part size to use for an object of ``total_size`` bytes (None: unknown):
    ``minimum``, or the next whole MiB that fits the object in 10,000 parts."""
    check_part_size(minimum)
    if total_size is None or total_size <= minimum * MAX_PARTS:
        return minimum
    needed = -(-total_size // MAX_PARTS)
    return check_part_size(-(-needed // MiB) * MiB)


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _at_least_one(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be an int >= 1, not {value!r}")


def _endpoint(
    _instance: object, _attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ConfigurationError(f"endpoint_url must start with http:// or https://: {value!r}")


def _style(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("auto", "path", "virtual"):
        raise ConfigurationError(f"addressing_style must be auto, path or virtual: {value!r}")


def _idle(_instance: object, _attribute: object, value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ConfigurationError(f"abandoned_after must be None or >= 0 seconds, not {value!r}")


def _part_size(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    check_part_size(value)


@attrs.frozen(kw_only=True)
class S3Settings:
    """Endpoint, region, credentials and retry policy for an object-store destination.

    The secret and the session token are left out of ``repr`` (and so of logs and errors).
    Explicit credentials need both ``access_key_id`` and ``secret_access_key``.

    ``max_attempts`` is botocore's ``standard`` retry mode: every S3 call is retried on
    connection errors, 5xx, ``SlowDown`` and throttling, with exponential backoff and
    jitter. Callers do not retry S3 calls themselves; a :class:`StorageError` with
    ``retryable`` set means botocore gave up, and the transfer as a whole may be tried again
    later (the multipart upload and its parts stay).

    ``abandoned_after``: before a video's new multipart upload is created, the open uploads
    of that same key whose last part (or start) is older than this many seconds, by the
    store's clock, are aborted: what a killed process left and nobody can resume. None
    never does. A live upload sends a part every ``part_size`` bytes, so the default hour
    is far longer than any live one stays silent.
    """

    endpoint_url: str | None = attrs.field(default=None, validator=_endpoint)
    region: str | None = None
    profile: str | None = None
    addressing_style: AddressingStyle = attrs.field(default="auto", validator=_style)
    access_key_id: str | None = None
    secret_access_key: str | None = attrs.field(default=None, repr=False)
    session_token: str | None = attrs.field(default=None, repr=False)
    part_size: int = attrs.field(default=DEFAULT_PART_SIZE, validator=_part_size)
    max_attempts: int = attrs.field(default=5, validator=_at_least_one)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    read_timeout: float = attrs.field(default=60.0, validator=_positive)
    max_pool_connections: int = attrs.field(default=10, validator=_at_least_one)
    abandoned_after: float | None = attrs.field(default=3600.0, validator=_idle)

    def __attrs_post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigurationError(
                "give both access_key_id and secret_access_key, or neither (then the "
                "standard AWS configuration is used)"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ConfigurationError("session_token needs access_key_id and secret_access_key")

    def secrets(self) -> tuple[str, ...]:
        """The values that must never be shown."""
        return tuple(s for s in (self.secret_access_key, self.session_token) if s)
