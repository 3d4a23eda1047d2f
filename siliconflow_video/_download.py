"""One video URL → one verified file on disk.

How the files next to the final ``path`` are used:

``<name>.part``
    The bytes received so far. It is locked (``fcntl.flock``) by the one process writing it,
    and renamed to ``<name>`` (under the lock) only once its length matches what the server
    announced. The final name therefore only ever holds a complete file.
``<name>.part.json``
    ``{"etag", "last_modified", "total"}`` of the response the partial bytes came from. It is
    written before the first body byte, so a ``.part`` with bytes always has one; without it
    the bytes cannot be tied to a response, and the download starts over.

A rerun (in this process or another) resumes with ``Range: bytes=N-`` and ``If-Range``, and
accepts only a ``206`` whose ``Content-Range`` continues exactly at ``N``. Anything else
starts over from byte 0: bytes of two different responses are never spliced.

Transient failures (dropped connections, short bodies, read timeouts, 429, 5xx) are retried
with exponential backoff and full jitter, each try resuming from the bytes on disk. An answer
that looks like an expired URL (403, 410, or a 400 that says "expired") is answered by asking
``refresh_url()`` for a fresh URL, at most ``policy.max_url_refreshes`` times.

Signed URLs carry a credential in their query string, so messages and logs only ever show
``scheme://host/path``.

On platforms without ``fcntl`` (Windows) the ``.part`` file is not locked: two processes
downloading the same file at once there may waste work and must not share a destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn, TypeVar

import aiofiles
import aiofiles.os
import aiohttp
import attrs
import backoff
import yarl

from ._config import DownloadPolicy
from ._exceptions import DownloadError, VideoURLExpiredError
from ._logging import logger, redact_url, scrub_urls
from ._models import VideoFile

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from hashlib import _Hash


__all__ = ["VideoFile", "download_video"]


_T = TypeVar("_T")

# Waiting for another process's lock: poll without blocking, backing off to this ceiling.
_LOCK_POLL_FIRST = 0.05
_LOCK_POLL_MAX = 0.5
# O_BINARY: without it Windows would translate line endings in the video bytes.
_PART_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
# How much of an error body is read to tell "expired" from other refusals.
_ERROR_BODY_LIMIT = 8192
# Header numbers are untrusted: only ASCII digits, and at most 20 of them. \d would take
# any Unicode digit, and int() of more than 4300 digits raises ValueError instead of the
# header being read as unreadable.
_NUMBER = r"([0-9]{1,20})"
_CONTENT_RANGE = re.compile(rf"bytes\s+{_NUMBER}-{_NUMBER}/{_NUMBER}")
_UNSATISFIED_RANGE = re.compile(rf"bytes\s+\*/{_NUMBER}")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{0,200})</\1>")


async def download_video(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    *,
    refresh_url: Callable[[], Awaitable[str | None]],
    policy: DownloadPolicy,
    request_id: str,
    index: int,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> VideoFile:
    """Bring the video at ``url`` to ``path`` (an already validated file path), resuming
    any ``.part`` left by an earlier run, and return it with its size (and its sha256, when
    the policy asks for it).

    ``session`` belongs to the caller and is used only for the video host: it is not closed,
    and no Authorization header is added. ``refresh_url`` asks ``/video/status`` again for a
    fresh URL when this one has expired; it returns None when there is none.

    Raises ``DownloadError`` (disk errors, non-retryable statuses, retries used up) or
    ``VideoURLExpiredError``. On any failure or cancellation the bytes received stay in
    ``<path>.part`` for a later call, and nothing is left under ``path``.
    """
    ctx = _Context(url=url, path=path, request_id=request_id, index=index)
    done = await _reuse_complete(ctx, policy, on_progress)
    if done is not None:
        return done
    await ctx.disk("create the folder", path.parent, _make_folder, path.parent)
    lock = await _lock_part(ctx)
    if lock is None:  # another process completed it while we waited for its lock
        return await _reuse_or_fail(ctx, policy, on_progress)
    try:
        if await asyncio.to_thread(os.path.lexists, path):
            # Completed by a holder we never waited for; what is in .part is a leftover.
            await ctx.disk("remove", ctx.part, _remove_leftovers, ctx.part, ctx.meta)
            return await _reuse_or_fail(ctx, policy, on_progress)
        transfer = _Transfer(session, ctx, lock, refresh_url, policy, on_progress)
        return await transfer.run()
    finally:
        lock.release()


# --- where and for whom ------------------------------------------------------------------


@attrs.define
class _Context:
    """Who is being downloaded where: what every message needs."""

    url: str
    path: Path
    request_id: str
    index: int

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    @property
    def meta(self) -> Path:
        return self.path.with_name(self.path.name + ".part.json")

    def error(
        self,
        message: str,
        *,
        status_code: int | None = None,
        cls: type[DownloadError] = DownloadError,
    ) -> DownloadError:
        return cls(
            scrub_urls(message),
            request_id=self.request_id,
            url=redact_url(self.url),
            path=str(self.path),
            status_code=status_code,
        )

    async def disk(self, action: str, target: Path, func: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking file operation in a thread; an OSError becomes a DownloadError."""
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            raise self.error(_disk_message(exc, action, target)) from exc


def _disk_message(exc: OSError, action: str, target: Path) -> str:
    folder = target.parent
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM) and action == "read":
        return f"no permission to read {target}"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder} (could not {action} {target.name})"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {target}"
    if code == errno.EROFS:
        return f"cannot write in {folder}: it is on a read-only file system"
    if code in (errno.ENOTDIR, errno.EEXIST) and action == "create the folder":
        return f"cannot use {target} as the destination folder: it or a parent is a file"
    if code == errno.ENOTDIR:
        return f"cannot write in {folder}: a part of that path is a file, not a folder"
    if code == errno.ENAMETOOLONG:
        return f"the file name {target.name!r} is too long for the file system of {folder}"
    reason = exc.strerror or type(exc).__name__
    return f"could not {action} {target}: {reason}"


# --- reusing a finished file ---------------------------------------------------------------


async def _reuse_complete(
    ctx: _Context,
    policy: DownloadPolicy,
    on_progress: Callable[[int, int | None], None] | None,
) -> VideoFile | None:
    """The file already at the final path (hashed if the policy asks); None when there is
    none."""
    found = await asyncio.to_thread(_size_of, ctx.path)
    if found is None:
        return None
    if found == "other":
        raise ctx.error(f"{ctx.path} exists and is not a regular file; move it away")
    size, digest = found, None
    if policy.sha256:
        size, hasher = await ctx.disk(
            "read", ctx.path, _hash_file, ctx.path, None, policy.write_buffer
        )
        digest = hasher.hexdigest()
    if on_progress is not None:
        on_progress(size, size)
    return VideoFile(path=ctx.path, size=size, sha256=digest, reused=True, index=ctx.index)


async def _reuse_or_fail(
    ctx: _Context,
    policy: DownloadPolicy,
    on_progress: Callable[[int, int | None], None] | None,
) -> VideoFile:
    found = await _reuse_complete(ctx, policy, on_progress)
    if found is None:  # pragma: no cover - only reached if the file vanished in between
        raise ctx.error(f"{ctx.path} disappeared right after another process wrote it")
    return found


def _new_hasher(policy: DownloadPolicy) -> _Hash | None:
    return hashlib.sha256() if policy.sha256 else None


def _hash_file(path: Path, length: int | None, block: int) -> tuple[int, _Hash]:
    """(bytes read, sha256 object) over the first ``length`` bytes of ``path`` (all when
    None), read in blocks so memory stays flat. Runs in a worker thread."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while length is None or size < length:
            data = f.read(block if length is None else min(block, length - size))
            if not data:
                break
            hasher.update(data)
            size += len(data)
    return size, hasher


def _size_of(path: Path) -> int | Literal["other"] | None:
    """The size of the regular file (or link to one) at ``path``; "other" when something
    else is there; None when nothing is."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        # Nothing there, or a dangling link: a link is something, and must not be replaced.
        return "other" if os.path.lexists(path) else None
    except OSError:
        return "other"
    return info.st_size if stat.S_ISREG(info.st_mode) else "other"


def _make_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)


def _remove_leftovers(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
        # A process killed while writing the sidecar leaves its temporary copy behind.
        p.with_name(p.name + ".tmp").unlink(missing_ok=True)


# --- the lock on the .part file ------------------------------------------------------------


class _PartLock:
    """The open descriptor of a ``.part`` file, exclusively locked; closing it unlocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._open = True

    def release(self) -> None:
        if self._open:
            self._open = False
            os.close(self.fd)


async def _lock_part(ctx: _Context) -> _PartLock | None:
    """The ``.part`` file, opened and exclusively locked, or None when the final file
    appeared while waiting (another process completed it)."""
    delay = _LOCK_POLL_FIRST
    while True:
        if await asyncio.to_thread(os.path.lexists, ctx.path):
            return None
        try:
            fd = os.open(ctx.part, _PART_FLAGS, 0o644)
        except OSError as exc:
            raise ctx.error(_disk_message(exc, "create", ctx.part)) from exc
        try:
            while not _try_lock(fd):
                logger.debug("%s is locked by another download; waiting", ctx.part)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LOCK_POLL_MAX)
            # The holder may have renamed the file we opened to the final name (or removed
            # it) before letting go: then our descriptor no longer is the .part file.
            if _still_at(fd, ctx.part):
                return _PartLock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # no flock: see the module docstring
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_at(fd: int, path: Path) -> bool:
    mine = os.fstat(fd)
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


# --- the sidecar ---------------------------------------------------------------------------


@attrs.frozen
class _Validator:
    """What identifies the response the partial bytes came from (the sidecar's content)."""

    etag: str | None
    last_modified: str | None
    total: int | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], total: int | None) -> _Validator:
        return cls(
            etag=headers.get("ETag"),
            last_modified=headers.get("Last-Modified"),
            total=total,
        )

    def if_range(self) -> str | None:
        # If-Range needs a strong validator: with a weak ETag every answer would be a 200.
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _read_sidecar(meta: Path) -> _Validator | None:
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
        total = raw["total"]
        etag = raw["etag"]
        last_modified = raw["last_modified"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or torn: the partial bytes cannot be trusted
    ok = (total is None or (isinstance(total, int) and total >= 0)) and all(
        v is None or isinstance(v, str) for v in (etag, last_modified)
    )
    return _Validator(etag, last_modified, total) if ok else None


def _write_sidecar(meta: Path, validator: _Validator) -> None:
    # Through a temporary name, so a crash never leaves a torn sidecar behind.
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(attrs.asdict(validator)), encoding="utf-8")
    os.replace(tmp, meta)


# --- one transfer --------------------------------------------------------------------------


class _Retry(Exception):
    """A failure worth another try; the bytes on disk are kept and the next try resumes."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Expired(Exception):
    """The host answered as it does for an expired URL."""

    def __init__(self, status: int, detail: str, says_expired: bool) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.says_expired = says_expired


class _Transfer:
    """Moves the bytes of one video into the locked ``.part`` file, then renames it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        ctx: _Context,
        lock: _PartLock,
        refresh_url: Callable[[], Awaitable[str | None]],
        policy: DownloadPolicy,
        on_progress: Callable[[int, int | None], None] | None,
    ) -> None:
        self.session = session
        self.ctx = ctx
        self.lock = lock
        self.fd = lock.fd
        self.refresh_url = refresh_url
        self.policy = policy
        self.on_progress = on_progress
        # No sock_read: aiohttp re-arms that timer on every socket read, about a tenth of a
        # fast download's CPU. read_timeout is kept by self.idle instead (see _heard).
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout)
        self.idle: asyncio.Timeout | None = None
        self.idle_pushed = 0.0
        self.clock: Callable[[], float] = time.monotonic  # the running loop's, once known
        self.validator: _Validator | None = None
        self.total: int | None = None
        self.done = 0  # bytes in .part, all of them hashed when hashing
        self.hasher = _new_hasher(policy)
        self.refreshes = 0
        self.same_url_retried = False
        # Chunks received but not yet handed to a write, and the write in flight (at most
        # one): a worker thread hashes and writes a batch while the loop receives the next.
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.writing: asyncio.Future[None] | None = None
        self.writing_size = 0

    async def run(self) -> VideoFile:
        # The descriptor carries the lock and is closed by our caller.
        await self._load_partial()
        tries = backoff.on_exception(
            backoff.expo,
            _Retry,
            max_tries=self.policy.max_attempts,
            factor=self.policy.base_delay,
            max_value=self.policy.max_delay,
            jitter=backoff.full_jitter,
            on_backoff=self._log_retry,
            logger=None,
        )(self._attempt)
        while True:
            try:
                await tries()
                break
            except _Expired as expired:
                await self._refresh(expired)
            except _Retry as exc:
                raise self.ctx.error(
                    f"gave up downloading {redact_url(self.ctx.url)} after "
                    f"{self.policy.max_attempts} tries: {exc}; {self._kept()}",
                    status_code=exc.status,
                ) from None  # the chain holds aiohttp errors that quote the signed URL
        return await self._finish()

    # -- state on disk

    async def _load_partial(self) -> None:
        """Take over what an earlier run left in .part, or start from nothing."""
        self.validator = await self.ctx.disk("read", self.ctx.meta, _read_sidecar, self.ctx.meta)
        size = os.fstat(self.fd).st_size
        known_total = self.validator.total if self.validator else None
        if size and (self.validator is None or (known_total is not None and size > known_total)):
            logger.debug("%s cannot be tied to a response; starting over", self.ctx.part)
            await self._start_over()
            return
        if size:
            if self.hasher is not None:
                # Hash the kept prefix now: the digest must cover the whole file at the end.
                size, self.hasher = await self.ctx.disk(
                    "read", self.ctx.part, _hash_file, self.ctx.part, size, self.policy.write_buffer
                )
            self.total = known_total
        self.done = size  # the next write goes to this offset

    async def _start_over(self) -> None:
        """Throw the partial bytes and their sidecar away: never splice two responses."""
        # Forget the prefix first: if the truncation fails or is cut short, the next write
        # still goes to byte 0, never after bytes that may be gone.
        self.done = 0
        self.total = None
        self.hasher = _new_hasher(self.policy)
        self.validator = None
        with self._on_our_disk():
            try:
                # The thread finishes even on a cancellation: it uses the descriptor our
                # caller closes. No seek: every write goes to an explicit offset.
                await _finish_before_cancel(asyncio.to_thread(_truncate, self.fd))
            except OSError as exc:
                raise self.ctx.error(_disk_message(exc, "truncate", self.ctx.part)) from exc
            await self.ctx.disk("remove", self.ctx.meta, _remove_leftovers, self.ctx.meta)

    async def _remember(self, validator: _Validator) -> None:
        self.validator = validator
        with self._on_our_disk():
            await self.ctx.disk("write", self.ctx.meta, _write_sidecar, self.ctx.meta, validator)

    async def _flush(self, *, wait: bool = True) -> None:
        """Hand the received chunks to a worker thread (one hop per batch), which hashes
        them and writes them at the end of .part while the loop receives the next batch.
        With ``wait``, return only once every byte is written."""
        await self._settle()
        if self.pending:
            chunks, self.pending = self.pending, []
            self.writing_size, self.pending_size = self.pending_size, 0
            part = _PartWrite(self.fd, self.done, self.hasher)
            self.writing = asyncio.ensure_future(_write_in_thread(part, chunks))
        if wait:
            await self._settle()

    async def _settle(self) -> None:
        """Wait for the write in flight, if any."""
        if self.writing is None:
            return
        writing, self.writing = self.writing, None
        # Counted before the await: if cancelled meanwhile, the thread still finishes this
        # write (_finish_before_cancel), and the next batch must go after it.
        self.done += self.writing_size
        self.writing_size = 0
        with self._on_our_disk():
            try:
                await _finish_before_cancel(writing)
            except OSError as exc:
                raise self.ctx.error(_disk_message(exc, "write", self.ctx.part)) from exc
        if self.on_progress is not None:
            # Bytes received, like the per-chunk reports: never less than the last report.
            self.on_progress(self.done + self.pending_size, self.total)

    async def _finish(self) -> VideoFile:
        """Rename the complete .part to the final name, still holding its lock."""
        part, path = self.ctx.part, self.ctx.path
        if self.policy.fsync:
            await self.ctx.disk("flush", part, os.fsync, self.fd)
        if sys.platform == "win32":
            # Windows cannot rename an open file; there is no lock to hold there anyway.
            self.lock.release()
        try:
            os.replace(part, path)
        except OSError as exc:
            raise self.ctx.error(_disk_message(exc, "rename", part)) from exc
        if self.policy.fsync:
            await self.ctx.disk("flush", path.parent, _fsync_folder, path.parent)
        await self.ctx.disk("remove", self.ctx.meta, _remove_leftovers, self.ctx.meta)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total if self.total is not None else self.done)
        return VideoFile(
            path=path,
            size=self.done,
            sha256=self.hasher.hexdigest() if self.hasher is not None else None,
            reused=False,
            index=self.ctx.index,
        )

    # -- one request

    async def _attempt(self) -> None:
        """One GET; returns once .part holds the whole video."""
        headers = {"Accept-Encoding": "identity"}
        if self.done:
            headers["Range"] = f"bytes={self.done}-"
            if_range = self.validator.if_range() if self.validator else None
            if if_range:
                headers["If-Range"] = if_range
        try:
            self.clock = asyncio.get_running_loop().time
            async with asyncio.timeout(None) as self.idle:
                self._heard(force=True)
                async with self.session.get(
                    # encoded=True: send the signed query byte for byte, as it was signed.
                    yarl.URL(self.ctx.url, encoded=True),
                    headers=headers,
                    timeout=self.timeout,
                    raise_for_status=False,
                ) as resp:
                    self._heard(force=True)
                    await self._handle(resp)
        except TimeoutError as exc:  # before ClientConnectionError: aiohttp's is both
            raise _Retry(
                f"timed out (connect timeout {self.policy.connect_timeout:g} s, "
                f"read timeout {self.policy.read_timeout:g} s: {_describe(exc)})"
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise _Retry(f"the connection broke ({_describe(exc)})") from exc
        except aiohttp.TooManyRedirects:
            raise self.ctx.error("could not request the video: too many redirects") from None
        except aiohttp.ClientResponseError as exc:
            # An answer aiohttp could not parse (a bad Content-Length, a garbled status
            # line) is a gateway's passing fault as often as not: try again.
            raise _Retry(f"the host sent a malformed answer ({_describe(exc)})") from None
        except aiohttp.ClientError as exc:
            # Not from the network itself (bad URL, too many redirects): retrying won't help.
            # "from None": such errors quote the whole signed URL.
            raise self.ctx.error(f"could not request the video: {_describe(exc)}") from None
        finally:
            self.idle = None

    def _heard(self, *, force: bool = False) -> None:
        """The host was just heard from: it has ``read_timeout`` again to send more.

        The deadline moves at most eight times per ``read_timeout``, each time to
        ``read_timeout`` plus an eighth from now: a silence is cut off after between one
        and one and an eighth ``read_timeout``, at the cost of one clock read per piece.
        """
        idle = self.idle
        if idle is None or idle.expired():
            return
        now = self.clock()
        slack = self.policy.read_timeout / 8
        if force or now - self.idle_pushed >= slack:
            idle.reschedule(now + self.policy.read_timeout + slack)
            self.idle_pushed = now

    @contextlib.contextmanager
    def _on_our_disk(self) -> Iterator[None]:
        """While we wait for our own disk, the host's idle clock stands still: a slow write
        is not a silent host. It starts again from now afterwards (not after an error,
        which ends the request anyway)."""
        if self.idle is not None and not self.idle.expired():
            self.idle.reschedule(None)
        yield
        self._heard(force=True)

    async def _handle(self, resp: aiohttp.ClientResponse) -> None:
        status = resp.status
        if status == 200:
            await self._on_whole_body(resp)
        elif status == 206:
            await self._on_partial_body(resp)
        elif status == 416 and self.done:
            await self._on_range_not_satisfiable(resp)
        elif status in (400, 403, 410):
            detail, says_expired = await _error_detail(resp)
            if status != 400 or says_expired:
                raise _Expired(status, detail, says_expired or status == 410)
            raise self.ctx.error(
                f"the video host answered HTTP 400 ({detail}) for {redact_url(self.ctx.url)}",
                status_code=status,
            )
        elif status == 429 or status >= 500:
            raise _Retry(f"the video host answered HTTP {status}", status=status)
        else:
            detail, _ = await _error_detail(resp)
            raise self.ctx.error(
                f"the video host answered HTTP {status} ({detail}) for {redact_url(self.ctx.url)}",
                status_code=status,
            )

    async def _on_whole_body(self, resp: aiohttp.ClientResponse) -> None:
        if self.done:
            # The host ignored Range, or If-Range no longer matched: this is the whole
            # file again, perhaps a different one.
            logger.debug(
                "%s answered 200 to a Range request; starting %s over",
                redact_url(self.ctx.url),
                self.ctx.part,
            )
            await self._start_over()
        total = _content_length(resp)
        await self._remember(_Validator.from_headers(resp.headers, total))
        await self._stream(resp, total)

    async def _on_partial_body(self, resp: aiohttp.ClientResponse) -> None:
        problem = self._range_problem(resp)
        if problem is not None:
            await self._start_over()
            raise _Retry(f"{problem}; starting over from byte 0")
        _, _, total = _parse_content_range(resp.headers.get("Content-Range"))
        if self.validator is None:  # a 206 to a request without Range, from byte 0
            await self._remember(_Validator.from_headers(resp.headers, total))
        await self._stream(resp, total)

    def _range_problem(self, resp: aiohttp.ClientResponse) -> str | None:
        """Why this 206 cannot continue the bytes on disk, or None when it can."""
        header = resp.headers.get("Content-Range")
        first, last, total = _parse_content_range(header)
        if total < 0:
            return f"a 206 answer with an unreadable Content-Range {header!r}"
        if first != self.done or last != total - 1:
            return f"asked for bytes from {self.done}, the host sent {first}-{last} of {total}"
        known = self.validator.total if self.validator else None
        if known is not None and total != known:
            return f"the video is now {total} bytes long, it was {known}"
        etag = resp.headers.get("ETag")
        mine = self.validator.etag if self.validator else None
        if etag and mine and etag != mine:
            return "the video changed (its ETag differs)"
        length = _content_length(resp)
        if length is not None and length != total - first:
            return f"Content-Length {length} does not match Content-Range {header!r}"
        return None

    async def _on_range_not_satisfiable(self, resp: aiohttp.ClientResponse) -> None:
        match = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        total = int(match.group(1)) if match else None
        known = self.validator.total if self.validator else None
        if total is not None and total == self.done and known in (None, total):
            self.total = total  # .part already holds every byte: nothing left to fetch
            return
        await self._start_over()
        raise _Retry(
            f"the host answered 416 to a Range request from byte {self.done}; "
            "starting over from byte 0"
        )

    async def _stream(self, resp: aiohttp.ClientResponse, total: int | None) -> None:
        """Copy the body to .part: each piece from the loop as it arrives while such writes
        are quick, else one worker-thread write per ``write_buffer`` bytes."""
        self.total = total
        self.pending, self.pending_size = [], 0
        try:
            # iter_any: the pieces as they came off the socket (joined only when several
            # wait, which is rare), not regrouped into fixed sizes: iter_chunked's join
            # copied every byte once more.
            async for chunk in resp.content.iter_any():
                self._heard()
                # Asked per piece: a slow write in any download moves them all to threads.
                if _LOOP_WRITES.allowed(self.policy):
                    if self.pending or self.writing is not None:
                        await self._flush()  # back from threads: their bytes go first
                    self._write_on_loop(chunk)
                    if self.on_progress is not None:
                        self.on_progress(self.done, self.total)
                    continue
                self.pending.append(chunk)
                self.pending_size += len(chunk)
                if self.pending_size >= self.policy.write_buffer:
                    await self._flush(wait=False)  # reports progress as writes complete
                elif self.on_progress is not None:
                    # Per chunk, not per write: a video smaller than the write buffer
                    # would otherwise show no progress until it is done.
                    received = self.done + self.writing_size + self.pending_size
                    self.on_progress(received, self.total)
        except (aiohttp.ClientError, TimeoutError, asyncio.CancelledError):
            # What did arrive is a correct prefix: keep it, so the next try (or, after a
            # cancellation, the next run) resumes after it. One write, then the error goes on;
            # a second cancellation during it still ends it (_finish_before_cancel).
            await self._flush()
            raise
        except BaseException:
            # Anything else: write nothing more, but let a thread still writing through the
            # descriptor finish before our caller closes it.
            if self.writing is not None:
                writing, self.writing = self.writing, None
                await asyncio.wait([writing])
                if not writing.cancelled():
                    writing.exception()  # retrieved, so asyncio does not log it
            raise
        await self._flush()
        if total is not None and self.done < total:
            raise _Retry(f"the body ended after {self.done} of {total} bytes")
        if total is not None and self.done > total:
            await self._start_over()
            raise _Retry(f"the host sent more than the {total} bytes it announced")

    def _write_on_loop(self, chunk: bytes) -> None:
        """Write (and hash) ``chunk`` now, from the event loop, while its bytes are still in
        this core's cache: half the cost of handing them to a thread. A write slower than
        ``max_loop_write`` sends every download's writes to worker threads for a while."""
        started = time.perf_counter()
        try:
            _write_at(_PartWrite(self.fd, self.done, self.hasher), [chunk])
        except OSError as exc:
            raise self.ctx.error(_disk_message(exc, "write", self.ctx.part)) from exc
        self.done += len(chunk)
        took = time.perf_counter() - started
        if took > self.policy.max_loop_write:
            _LOOP_WRITES.hold_back(took, self.ctx.part)
            self._heard(force=True)  # the time the disk took is not the host's silence

    # -- expiry and retries

    async def _refresh(self, expired: _Expired) -> None:
        """Swap the URL for a fresh one from ``refresh_url``, or raise."""
        if self.refreshes >= self.policy.max_url_refreshes:
            if not self.refreshes:
                self._fail_expired(expired, "asking for a fresh one is off (max_url_refreshes)")
            if expired.says_expired:
                self._fail_expired(
                    expired, f"the {self.refreshes} fresh URL(s) from /video/status failed too"
                )
            # Refused again and again with fresh URLs, never saying "expired": not expiry.
            raise self.ctx.error(
                f"the video host refused access ({expired}) to "
                f"{redact_url(self.ctx.url)}, also with {self.refreshes} fresh URLs "
                f"from /video/status; {self._kept()}",
                status_code=expired.status,
            )
        logger.debug(
            "%s answered %s; asking /video/status for a fresh URL",
            redact_url(self.ctx.url),
            expired,
        )
        fresh = await self.refresh_url()
        self.refreshes += 1
        if not fresh:
            self._fail_expired(expired, "/video/status gave no fresh URL")
        if fresh == self.ctx.url:
            if self.same_url_retried:
                self._fail_expired(expired, "/video/status gave the same URL again")
            # A 403 can be a passing fault at the host: the same URL gets one more try.
            self.same_url_retried = True
        self.ctx.url = fresh

    def _fail_expired(self, expired: _Expired, why: str) -> NoReturn:
        host = redact_url(self.ctx.url)
        # A bare 403 does not say why; expiry is by far the likeliest reason, but say so.
        what = (
            f"the video URL has expired ({host} answered {expired})"
            if expired.says_expired
            else f"the video URL was refused ({host} answered {expired}), most likely "
            "because it has expired"
        )
        raise self.ctx.error(
            f"{what}: SiliconFlow's video URLs are valid for one hour, and {why}. "
            f"{self._kept(sentence=True)}. Download videos soon after their job succeeds",
            status_code=expired.status,
            cls=VideoURLExpiredError,
        )

    def _kept(self, *, sentence: bool = False) -> str:
        if not self.done:
            text = "no bytes had arrived yet"
        else:
            text = (
                f"the {self.done} bytes received so far are kept in {self.ctx.part}, "
                "and a later call resumes from there"
            )
        return text[0].upper() + text[1:] if sentence else text

    def _log_retry(self, details: Any) -> None:
        logger.debug(
            "download of %s (requestId %s, video %d) failed: %s; "
            "try %d of %d in %.2f s, resuming at byte %d",
            redact_url(self.ctx.url),
            self.ctx.request_id,
            self.ctx.index,
            details.get("exception"),
            details["tries"] + 1,
            self.policy.max_attempts,
            details.get("wait", 0.0),
            self.done,
        )


# --- helpers -------------------------------------------------------------------------------


@attrs.frozen
class _PartWrite:
    """Where one batch goes: the .part descriptor, its offset there, the running hash
    (None when not hashing)."""

    fd: int
    offset: int
    hasher: _Hash | None


def _iov_max() -> int:
    try:
        return max(1, min(os.sysconf("SC_IOV_MAX"), 1024))
    except (AttributeError, ValueError, OSError):
        return 16


_IOV_MAX = _iov_max()


def _write_at(part: _PartWrite, chunks: list[bytes]) -> None:
    """Hash the chunks in order and write them at ``part.offset`` as received, no copy into
    one buffer, at most IOV_MAX of them per system call. The one place video bytes reach
    the disk, from the loop or a worker thread (hashlib and pwritev release the GIL): tests
    replace it to simulate a full disk or a refused write."""
    offset = part.offset
    for start in range(0, len(chunks), _IOV_MAX):
        group = chunks[start : start + _IOV_MAX]
        if part.hasher is not None:
            for chunk in group:
                part.hasher.update(chunk)
        size = sum(map(len, group))
        written = os.pwritev(part.fd, group, offset) if hasattr(os, "pwritev") else 0
        if written < size:  # a short write (rare), or Windows (no pwritev): finish it
            rest = memoryview(b"".join(group))[written:]
            os.lseek(part.fd, offset + written, os.SEEK_SET)
            while rest:
                more = os.write(part.fd, rest)
                if not more:
                    raise OSError(errno.EIO, "the file system accepted no more bytes")
                rest = rest[more:]
        offset += size


def _truncate(fd: int) -> None:
    """Empty the .part file (in a worker thread; tests slow it down)."""
    os.ftruncate(fd, 0)


def _write_at_now(part: _PartWrite, chunks: list[bytes]) -> None:
    _write_at(part, chunks)  # looked up at each call, so a test's replacement is used


#: ``_write_at`` on aiofiles' executor: one thread hop per batch.
_write_in_thread = aiofiles.os.wrap(_write_at_now)


@attrs.define
class _LoopWrites:
    """Whether video bytes may be written from the event loop, for the whole process: a
    write to the page cache takes microseconds, but a slow disk (or network file system)
    can hold one for much longer, and then every task on the loop waits. After one write
    slower than ``DownloadPolicy.max_loop_write``, writes go through worker threads for
    ``HOLD_BACK`` seconds."""

    HOLD_BACK: ClassVar[float] = 60.0
    until: float = 0.0

    def allowed(self, policy: DownloadPolicy) -> bool:
        return policy.max_loop_write > 0 and time.monotonic() >= self.until

    def hold_back(self, took: float, part: Path) -> None:
        self.until = time.monotonic() + self.HOLD_BACK
        logger.debug(
            "a write to %s held the event loop for %.1f ms; writing from worker threads "
            "for the next %g s",
            part,
            took * 1000,
            self.HOLD_BACK,
        )


_LOOP_WRITES = _LoopWrites()


async def _finish_before_cancel(op: Awaitable[_T]) -> _T:
    """Await a thread-backed operation on the .part descriptor. If cancelled meanwhile, let
    the thread end first (it still uses the descriptor and the buffer, which must not be
    closed or reused under it), then re-raise."""
    fut = asyncio.ensure_future(op)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it as forgotten
        raise


def _fsync_folder(folder: Path) -> None:
    # So the rename itself survives a power cut.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _content_length(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Length", "").strip()
    # isdigit() alone accepts "²", which int() refuses: see _NUMBER.
    if value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    return None


def _parse_content_range(header: str | None) -> tuple[int, int, int]:
    """(first, last, total) of ``bytes first-last/total``; (-1, -1, -1) when unreadable."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if not match:
        return -1, -1, -1
    first, last, total = (int(g) for g in match.groups())
    return first, last, total


async def _error_detail(resp: aiohttp.ClientResponse) -> tuple[str, bool]:
    """A short, credential-free description of an error body, and whether it says the
    URL expired."""
    body = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(_ERROR_BODY_LIMIT):
            body += chunk
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status says enough
    text = body[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
    says_expired = "expired" in text.lower()
    # Storage hosts answer XML; keep only Code and Message (OSS also echoes the string it
    # signed, which is not for logs).
    fields = dict(_XML_FIELD.findall(text))
    if fields:
        detail = ": ".join(fields[k].strip() for k in ("Code", "Message") if k in fields)
    else:
        detail = " ".join(text.split())[:200]
    return scrub_urls(detail) or "no body", says_expired


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return scrub_urls(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
