"""botocore's exceptions → this package's :class:`StorageError` tree, in one place.

As httpx's ``map_httpcore_exceptions``: one context manager around every S3 call, the most
specific case first. botocore is imported when an error is mapped, never at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .._exceptions import (
    ConfigurationError,
    NoSuchBucketError,
    NoSuchUploadError,
    StorageAuthenticationError,
    StorageConnectionError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)
from .._logging import REDACTED, scrub_urls

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

__all__ = ["map_storage_errors"]

_BY_CODE: dict[str, type[StorageError]] = {
    "NoSuchBucket": NoSuchBucketError,
    "NoSuchUpload": NoSuchUploadError,
    "AccessDenied": StoragePermissionError,
    "AllAccessDisabled": StoragePermissionError,
    "AccountProblem": StoragePermissionError,
    "InvalidAccessKeyId": StorageAuthenticationError,
    "SignatureDoesNotMatch": StorageAuthenticationError,
    "InvalidToken": StorageAuthenticationError,
    "ExpiredToken": StorageAuthenticationError,
    "TokenRefreshRequired": StorageAuthenticationError,
    "InvalidSecurity": StorageAuthenticationError,
    "SlowDown": StorageUnavailableError,
    "ServiceUnavailable": StorageUnavailableError,
    "InternalError": StorageUnavailableError,
    "RequestTimeout": StorageUnavailableError,
    "Throttling": StorageUnavailableError,
    "ThrottlingException": StorageUnavailableError,
    "RequestLimitExceeded": StorageUnavailableError,
}

# HEAD answers have no body, so botocore's "code" is just the status.
_BY_STATUS: dict[int, type[StorageError]] = {
    401: StorageAuthenticationError,
    403: StoragePermissionError,
    429: StorageUnavailableError,
}


@contextlib.contextmanager
def map_storage_errors(
    *, bucket: str, key: str | None, secrets: Sequence[str] = ()
) -> Iterator[None]:
    """Turn botocore's exceptions raised inside into :class:`StorageError` subclasses."""
    from botocore import exceptions as bx

    where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"

    def fail(cls: type[StorageError], text: str, **fields: Any) -> StorageError:
        return cls(_redact(f"{text} ({where})", secrets), bucket=bucket, key=key, **fields)

    try:
        yield
    except bx.ClientError as exc:
        raise _from_client_error(exc, fail) from exc
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise fail(
            StorageAuthenticationError,
            f"no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or S3Settings",
        ) from exc
    except bx.CredentialRetrievalError as exc:
        raise fail(
            StorageAuthenticationError, f"S3 credentials could not be loaded: {exc}"
        ) from exc
    except bx.ProfileNotFound as exc:
        raise ConfigurationError(_redact(str(exc), secrets)) from exc
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ProxyConnectionError) as exc:
        raise fail(StorageConnectionError, f"could not connect to the object store: {exc}") from exc
    except (bx.ReadTimeoutError, bx.ConnectionClosedError, bx.HTTPClientError) as exc:
        raise fail(StorageConnectionError, f"the object store connection broke: {exc}") from exc
    except bx.ConnectionError as exc:
        raise fail(StorageConnectionError, f"object store connection failed: {exc}") from exc
    except bx.BotoCoreError as exc:
        raise fail(StorageError, f"S3 request failed: {exc}") from exc


def _from_client_error(exc: ClientError, fail: Any) -> StorageError:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(error.get("Code") or status or "")
    message = str(error.get("Message") or "")
    cls = _BY_CODE.get(code)
    if cls is None and isinstance(status, int):
        cls = _BY_STATUS.get(status) or (StorageUnavailableError if status >= 500 else None)
    cls = cls or StorageError
    if code.isdigit() and cls is StoragePermissionError:
        # A HEAD's bare 403 cannot tell a denied action from a wrong secret.
        message = "Forbidden: access denied, or the credentials are wrong"
    text = f"{exc.operation_name} failed: {code}" + (f": {message}" if message else "")
    stored: StorageError = fail(cls, text, code=code or None, status_code=status)
    return stored


def _redact(text: str, secrets: Sequence[str]) -> str:
    text = scrub_urls(text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
