"""Deterministic video content that costs almost nothing to hold, even at 512 MiB.

A generated video of ``size`` bytes is a repetition of one pseudo-random block whose length
is the prime :data:`PERIOD`: byte ``i`` is ``block[i % PERIOD]``. Because the period is prime
(and not a power of two), a chunk written at a wrong offset almost surely differs from the
expected bytes, so a resumed download that got its offsets wrong is caught by a comparison.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import random
import time
from collections.abc import Iterator

import attrs

__all__ = ["CHUNK_SIZE", "PERIOD", "VideoContent"]

#: Length of the repeated pseudo-random block: the largest prime below 1 MiB.
PERIOD = 1_048_573

#: Largest piece handed to the transport in one write when a video is served.
CHUNK_SIZE = 256 * 1024


@functools.lru_cache(maxsize=16)
def _block(key: str) -> bytes:
    """The pseudo-random block of one generated video (about 1 MiB, cached)."""
    return random.Random(key).randbytes(PERIOD)


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


@attrs.frozen
class VideoContent:
    """The bytes of one video, either given literally or generated on demand.

    Build one with :meth:`literal` or :meth:`generated`. Generated content is never
    materialised except by :meth:`to_bytes`; serving and hashing read it chunk by chunk.
    """

    size: int
    """Length in bytes."""
    etag: str
    """The ``ETag`` header value, quotes included. Stable for the life of the video."""
    last_modified: str
    """The ``Last-Modified`` header value (an HTTP date). Stable for the life of the video."""
    _data: bytes | None = attrs.field(default=None, repr=False)
    _key: str | None = None

    @classmethod
    def literal(cls, data: bytes, *, modified: float | None = None) -> VideoContent:
        """Content that is exactly ``data``."""
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        when = time.time() if modified is None else modified
        return cls(len(data), f'"{digest}"', _http_date(when), data=bytes(data))

    @classmethod
    def generated(cls, key: str, size: int, *, modified: float | None = None) -> VideoContent:
        """``size`` bytes generated from the seed string ``key`` (e.g. ``"rid/0"``)."""
        if size < 0:
            raise ValueError(f"video size must be >= 0, got {size}")
        digest = hashlib.blake2b(f"{key}\0{size}".encode(), digest_size=16).hexdigest()
        when = time.time() if modified is None else modified
        return cls(size, f'"{digest}"', _http_date(when), key=key)

    def chunks(
        self, start: int = 0, end: int | None = None, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[memoryview]:
        """Yield the bytes ``[start, end)`` as read-only views of at most ``chunk_size`` bytes."""
        stop = self.size if end is None else min(end, self.size)
        pos = max(start, 0)
        if self._data is not None:
            view = memoryview(self._data)
            while pos < stop:
                n = min(chunk_size, stop - pos)
                yield view[pos : pos + n]
                pos += n
            return
        assert self._key is not None
        block = memoryview(_block(self._key))
        while pos < stop:
            offset = pos % PERIOD
            n = min(chunk_size, stop - pos, PERIOD - offset)
            yield block[offset : offset + n]
            pos += n

    def to_bytes(self) -> bytes:
        """The whole content in memory (fine for tests; prefer :meth:`sha256` for huge videos)."""
        if self._data is not None:
            return self._data
        return b"".join(self.chunks(chunk_size=PERIOD))

    def sha256(self) -> str:
        """Hex SHA-256 of the content, computed without materialising it."""
        digest = hashlib.sha256()
        for chunk in self.chunks(chunk_size=PERIOD):
            digest.update(chunk)
        return digest.hexdigest()
