"""OSS-like signed video URLs: ``/videos/{rid}/{index}/video.mp4?Expires=..&Signature=..``.

Revoking every URL issued so far (``expire_urls``) rotates the signing key: a signature made
with an older key is recognised as revoked, one made with no known key as forged.

Every URL carries a random salt at the front of its ``Signature``, so two URLs issued for one
video are always different, even within the same second (``Expires`` counts whole seconds).
Without it a "fresh" URL handed out right after an expiry could be the very URL that was just
refused, which a real storage host never does and which no client could tell from "no fresh
URL came".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal
from urllib.parse import quote, unquote

__all__ = ["UrlSigner", "parse_video_path", "video_path"]

Verdict = Literal["ok", "expired", "bad_signature"]

# Random bytes (sent as hex) that make each issued URL unique.
_SALT_BYTES = 8


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
    def _sign(key: bytes, path: str, expires: int, salt: str) -> str:
        message = f"{path}\n{expires}\n{salt}".encode()
        return salt + hmac.new(key, message, hashlib.sha256).hexdigest()

    def query(self, path: str, expires: int) -> str:
        """The query string (no ``?``) that makes ``path`` valid until ``expires``; a new
        one on every call (see the module docstring)."""
        signature = self._sign(self._key, path, expires, secrets.token_hex(_SALT_BYTES))
        return f"Expires={expires}&Signature={signature}"

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
        salt = signature[: 2 * _SALT_BYTES]
        if hmac.compare_digest(self._sign(self._key, path, when, salt), signature):
            return "ok" if now < when else "expired"
        for key in self._old_keys:
            if hmac.compare_digest(self._sign(key, path, when, salt), signature):
                return "expired"
        return "bad_signature"
