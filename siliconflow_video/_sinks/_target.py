"""``s3://BUCKET/PREFIX``: which bucket, and which key a video's file name becomes.

Parsing is strict on purpose: a typo in a destination should fail before any job is
waited for, not after an hour as an upload error.
"""

from __future__ import annotations

import re

import attrs

from .._exceptions import InvalidDestinationError

__all__ = ["S3Object", "S3Target", "is_s3_url"]

_SCHEME = "s3://"

# AWS's rules for new buckets: 3-63 characters, lowercase letters, digits, dots and hyphens,
# starting and ending with a letter or digit. S3-compatible stores (OSS, COS, R2) are as strict.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")

# S3 keys are at most 1024 bytes of UTF-8; leave room for the file name after the prefix.
_MAX_PREFIX_BYTES = 768


def is_s3_url(dest: object) -> bool:
    """Whether ``dest`` names an object-store destination rather than a folder."""
    return isinstance(dest, str) and dest[: len(_SCHEME)].lower() == _SCHEME


@attrs.frozen
class S3Target:
    """A bucket and a key prefix (``""`` or ending in ``/``) that videos go under."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Target:
        """``s3://BUCKET`` or ``s3://BUCKET/PREFIX`` (a trailing ``/`` is optional).

        Raises :class:`InvalidDestinationError` for anything else; the message never
        repeats the URL's user-info part, where someone may have put a secret.
        """
        if not is_s3_url(url):
            raise InvalidDestinationError(f"not an s3:// URL: {url[:40]!r}")
        rest = url[len(_SCHEME) :]
        bucket, _, prefix = rest.partition("/")
        if "@" in bucket:
            raise InvalidDestinationError(
                "credentials do not belong in an s3:// URL; use AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or S3Settings"
            )
        if any(c in rest for c in "?#"):
            raise InvalidDestinationError(f"an s3:// URL takes no query or fragment: {url!r}")
        problem = _bucket_problem(bucket)
        if problem:
            raise InvalidDestinationError(f"bad bucket name {bucket!r} in {url!r}: {problem}")
        problem = _prefix_problem(prefix)
        if problem:
            raise InvalidDestinationError(f"bad key prefix {prefix!r} in {url!r}: {problem}")
        return cls(bucket, prefix.rstrip("/") + "/" if prefix else "")

    def key_for(self, name: str) -> str:
        """The object key for a video's file name (``{requestId}_{index}.mp4`` or the
        naming function's result, already checked to be a plain name)."""
        return self.prefix + name

    def object_for(self, name: str) -> S3Object:
        """The object a video named ``name`` becomes under this target."""
        return S3Object(self.bucket, self.key_for(name))

    def __str__(self) -> str:
        return f"{_SCHEME}{self.bucket}/{self.prefix}"


@attrs.frozen
class S3Object:
    """One object's address: where one video of an ``s3://`` destination goes."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Object:
        """``s3://BUCKET/KEY`` (as a journal records a stored video)."""
        target = S3Target.parse(url.rpartition("/")[0] if url.count("/") > 2 else url)
        key = url[len(_SCHEME) + len(target.bucket) + 1 :]
        if not key or key.endswith("/"):
            raise InvalidDestinationError(f"no object key in {url[:80]!r}")
        return cls(target.bucket, key)

    def __str__(self) -> str:
        return f"{_SCHEME}{self.bucket}/{self.key}"


def _bucket_problem(bucket: str) -> str | None:
    if not bucket:
        return "no bucket"
    if not _BUCKET.fullmatch(bucket):
        return "3-63 lowercase letters, digits, '.' and '-', starting and ending alphanumeric"
    if ".." in bucket:
        return "two dots in a row"
    if _IPV4.fullmatch(bucket):
        return "looks like an IP address"
    return None


def _prefix_problem(prefix: str) -> str | None:
    if prefix.startswith("/"):
        return "an empty path segment (//)"
    segments = prefix.rstrip("/").split("/") if prefix else []
    if any(s == "" for s in segments):
        return "an empty path segment (//)"
    if any(s in (".", "..") for s in segments):
        return "'.' and '..' segments are not allowed"
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in prefix):
        return "control characters and backslashes are not allowed"
    if len(prefix.encode()) > _MAX_PREFIX_BYTES:
        return f"longer than {_MAX_PREFIX_BYTES} bytes"
    return None
