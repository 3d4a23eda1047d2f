"""OSS-like signed video URLs: ``/videos/{rid}/{index}/video.mp4?Expires=..&Signature=..``.

Revoking every URL issued so far (``expire_urls``) rotates the signing key: a signature made
with an older key is recognised as revoked, one made with no known key as forged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal
from urllib.parse import quote, unquote

__all__ = ["UrlSigner", "parse_video_path", "video_path"]

Verdict = Literal["ok", "expired", "bad_signature"]


def video_path(request_id: str, index: int) -> str:
    """The canonical path of one video; the request id is percent-encoded as one segment."""
    return f"/videos/{quote(request_id, safe='')}/{index}/video.mp4"


def parse_video_path(raw_path: str) -> tuple[str, int] | None:
    """``(request_id, index)`` from a raw (still percent-encoded) path, or ``None``."""
    parts = raw_path.split("/")
    if len(parts) != 5 or parts[0] or parts[1] != "videos" or parts[4] != "video.mp4":
        return None
    index = parts[3]
    if not (index.isascii() and index.isdigit()):
        return None
    return unquote(parts[2]), int(index)


class UrlSigner:
    """Signs and checks video URLs. Not thread-safe: the fake calls it under its lock."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._old_keys: list[bytes] = []

    @staticmethod
    def _sign(key: bytes, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def query(self, path: str, expires: int) -> str:
        """The query string (no ``?``) that makes ``path`` valid until ``expires``."""
        return f"Expires={expires}&Signature={self._sign(self._key, path, expires)}"

    def revoke_all(self) -> None:
        """Invalidate every URL signed so far; URLs signed later are valid again."""
        self._old_keys.append(self._key)
        self._key = secrets.token_bytes(32)

    def check(self, path: str, expires: str | None, signature: str | None, now: float) -> Verdict:
        """Whether a request for ``path`` with these query values may be served at ``now``."""
        if expires is None or signature is None or not signature.isascii():
            return "bad_signature"
        try:
            when = int(expires)
        except ValueError:
            return "bad_signature"
        if hmac.compare_digest(self._sign(self._key, path, when), signature):
            return "ok" if now < when else "expired"
        for key in self._old_keys:
            if hmac.compare_digest(self._sign(key, path, when), signature):
                return "expired"
        return "bad_signature"
