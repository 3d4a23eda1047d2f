"""One video URL → one file: the lock on ``.part``, reusing a finished file, the rename.

The tries, URL refreshes, idle deadline and decoding are ``_fetch``'s, shared with the
object-store destination; here is the ``.part`` file as the sink they fill (``PartFile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp

from .._config import DownloadPolicy
from .._exceptions import ForeignFileError
from .._http import Proxies, no_proxies
from .._logging import logger
from .._models import VideoFile
from ._fetch import Fetch
from ._partfile import (
    RECORDS,
    Completion,
    Context,
    Final,
    PartLock,
    Validator,
    final_state,
    hash_file,
    lock_part,
    make_folder,
    read_sidecar,
    remove_leftovers,
    write_sidecar,
)
from ._writer import DiskWrites, PartWriter

__all__ = ["PartFile", "VideoFile", "download_video"]


async def download_video(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    *,
    refresh_url: Callable[[], Awaitable[str | None]],
    policy: DownloadPolicy,
    writes: DiskWrites,
    request_id: str,
    index: int,
    on_progress: Callable[[int, int | None], None] | None = None,
    proxies: Proxies = no_proxies,
) -> VideoFile:
    """Bring the video at ``url`` to ``path`` (an already validated file path), resuming
    any ``.part`` left by an earlier run, and return it with its size (and its sha256, when
    the policy asks for it).

    ``session`` belongs to the caller and is used only for the video host: it is not closed,
    and no Authorization header is added. ``refresh_url`` asks ``/video/status`` again for a
    fresh URL when this one has expired; it returns None when there is none. ``writes`` is
    the calling client's: its disk, and whether its downloads write from the event loop.
    ``proxies`` gives each request its proxy (the client's ``EnvProxies``).

    Raises ``DownloadError`` (disk errors, non-retryable statuses, retries used up) or
    ``VideoURLExpiredError``. On any failure or cancellation the bytes received stay in
    ``<path>.part`` for a later call, and nothing is left under ``path``.
    """
    ctx = Context(url=url, path=path, request_id=request_id, index=index)
    done = await _reuse_complete(ctx, policy, on_progress)
    if done is not None:
        return done
    await ctx.disk("create the folder", path.parent, make_folder, path.parent)
    lock = await lock_part(ctx, lambda: _final(ctx)[0] is Final.COMPLETE)
    if lock is None:  # another process completed it while we waited for its lock
        return await _reuse_or_fail(ctx, policy, on_progress)
    try:
        done = await _reuse_complete(ctx, policy, on_progress)
        if done is not None:
            # Completed by a holder we never waited for; what is in .part is a leftover.
            await ctx.disk("remove", ctx.part, remove_leftovers, ctx.part, ctx.meta)
            return done
        fetch = Fetch(session, ctx, refresh_url, policy, on_progress, proxies, writes.throttle)
        return await fetch.run(PartFile(ctx, lock, policy, writes, fetch))
    finally:
        lock.release()


def _final(ctx: Context) -> tuple[Final, int]:
    return final_state(ctx.path, ctx.request_id, ctx.index)


# --- reusing a finished file ---------------------------------------------------------------


async def _reuse_complete(
    ctx: Context,
    policy: DownloadPolicy,
    on_progress: Callable[[int, int | None], None] | None,
) -> VideoFile | None:
    """Our complete file already at the final path (hashed if the policy asks); None when
    there is none, or ours no longer has its recorded size (it is fetched again). Anything
    else under that name is an error, and is left as it is."""
    state, size = await asyncio.to_thread(_final, ctx)
    if state is Final.FOREIGN and policy.foreign_files == "replace":
        return None  # fetched, and put in its place by PartFile.finish
    if state in (Final.NOTHING, Final.STALE):
        if state is Final.STALE:
            logger.debug("%s is no longer its recorded size; fetching it again", ctx.path)
        return None
    _refuse(ctx, state)
    digest = None
    if policy.sha256:
        size, hasher = await ctx.disk(
            "read", ctx.path, hash_file, ctx.path, None, policy.write_buffer
        )
        digest = hasher.hexdigest()
    if on_progress is not None:
        on_progress(size, size)
    return VideoFile(path=ctx.path, size=size, sha256=digest, reused=True, index=ctx.index)


def _refuse(ctx: Context, state: Final) -> None:
    """Raise unless ``state`` is our complete file (or nothing)."""
    if state is Final.NOT_A_FILE:
        raise ctx.error(f"{ctx.path} exists and is not a regular file; move it away")
    if state is Final.FOREIGN:
        raise ctx.error(
            f"{ctx.path} already exists and was not downloaded by siliconflow-video as "
            f"video {ctx.index} of this job; it is left as it is. Move it away (or choose "
            "another naming, or replace such files: DownloadPolicy(foreign_files='replace'), "
            "--force on the command line) to download the video",
            cls=ForeignFileError,
        )


async def _reuse_or_fail(
    ctx: Context,
    policy: DownloadPolicy,
    on_progress: Callable[[int, int | None], None] | None,
) -> VideoFile:
    found = await _reuse_complete(ctx, policy, on_progress)
    if found is None:  # pragma: no cover - only reached if the file vanished in between
        raise ctx.error(f"{ctx.path} disappeared right after another process wrote it")
    return found


# --- the .part file as a sink ------------------------------------------------------------


class PartFile:
    """The locked ``.part`` file as a :class:`~._fetch.Sink`: its sidecar ties the bytes to
    their response, and ``finish`` renames it to the final name."""

    def __init__(
        self,
        ctx: Context,
        lock: PartLock,
        policy: DownloadPolicy,
        writes: DiskWrites,
        fetch: Fetch,
    ) -> None:
        self.ctx = ctx
        self.lock = lock
        self.fd = lock.fd
        self.policy = policy
        self.disk = writes.disk
        self.clock = fetch.clock
        self._validator: Validator | None = None
        self.writes = writes
        self.fetch = fetch
        self.writer = PartWriter(ctx, lock.fd, writes, policy, fetch.clock, fetch.report)

    @property
    def done(self) -> int:
        return self.writer.done

    @property
    def validator(self) -> Validator | None:
        return self._validator

    async def resume(self) -> None:
        """Take over what an earlier run left in .part, or start from nothing."""
        # The descriptor carries the lock and is closed by download_video.
        self._validator = await self.ctx.disk("read", self.ctx.meta, read_sidecar, self.ctx.meta)
        size = os.fstat(self.fd).st_size
        known_total = self._validator.total if self._validator else None
        if size and (self._validator is None or (known_total is not None and size > known_total)):
            logger.debug("%s cannot be tied to a response; starting over", self.ctx.part)
            await self.start_over()
            return
        if not size:
            return
        hasher = self.writer.hasher
        if hasher is not None:
            # Hash the kept prefix now: the digest must cover the whole file at the end.
            size, hasher = await self.ctx.disk(
                "read", self.ctx.part, hash_file, self.ctx.part, size, self.policy.write_buffer
            )
        self.writer.resume(size, hasher)

    async def remember(self, validator: Validator) -> None:
        self._validator = validator
        await self.ctx.disk("write", self.ctx.meta, write_sidecar, self.ctx.meta, validator)

    async def copy(self, body: AsyncIterator[bytes]) -> None:
        total = self.fetch.total
        if total is None:  # no size announced: nothing to check ahead
            await self.writer.copy(body)
            return
        filling = self.writes.filling
        # One check at a time, each counting the transfers that passed before it: two
        # checked at once would each miss the other.
        async with self.writes.checking_space:
            with self.clock.paused():
                short = await asyncio.to_thread(self._shortfall, total)
            if short is None:
                filling[self.fd] = total
        if short is not None:
            # Our own disk, as for a full one: the .part is kept and a rerun resumes.
            raise self.ctx.error(short) from OSError(errno.ENOSPC, short)
        try:
            await self.writer.copy(body)
        finally:
            filling.pop(self.fd, None)

    def _shortfall(self, total: int) -> str | None:
        """Why the disk has no room for this video (None: it has, or cannot tell): its
        bytes still to come, plus those still to come of this client's other videos
        filling the same file system, against the free space. Runs in a worker thread."""
        try:
            mine = os.fstat(self.fd)
            free = shutil.disk_usage(self.ctx.path.parent).free
        except OSError:
            return None  # the writes themselves will say what is wrong
        needed = own = max(0, total - mine.st_size)
        for fd, size in list(self.writes.filling.items()):
            try:
                other = os.fstat(fd)
            except OSError:
                continue  # finished meanwhile
            if fd != self.fd and other.st_dev == mine.st_dev:
                needed += max(0, size - other.st_size)
        if needed <= free:
            return None
        others = (
            f" (and {_mib(needed - own)} for the other videos under way)" if needed > own else ""
        )
        return (
            f"not enough free space in {self.ctx.path.parent} for {self.ctx.path.name}: "
            f"{_mib(own)} still to download{others}, {_mib(free)} free"
        )

    async def start_over(self) -> None:
        """Throw the partial bytes and their sidecar away: never splice two responses."""
        self._validator = None
        await self.writer.start_over()
        with self.clock.paused():
            await self.ctx.disk("remove", self.ctx.meta, remove_leftovers, self.ctx.meta)

    async def finish(self, total: int | None) -> VideoFile:
        """Rename the complete .part to the final name, still holding its lock."""
        part, path = self.ctx.part, self.ctx.path
        if self.policy.fsync:
            await self.ctx.disk("flush", part, self.disk.fsync, self.fd)
        # A file that appeared under the final name meanwhile is not ours to replace
        # (unless the policy says to replace foreign files: then it is, as asked).
        state, _ = await asyncio.to_thread(_final, self.ctx)
        if state is Final.FOREIGN and self.policy.foreign_files == "replace":
            logger.info("replacing %s: it was not recorded as this video", path)
        else:
            _refuse(self.ctx, state)
        # Recorded before the rename: a crash in between leaves a complete .part (finished
        # on the next run), never a complete file without its record.
        validator = self._validator or Validator(None, None, None)
        completion = Completion(
            self.ctx.request_id,
            self.ctx.index,
            self.done,
            validator.etag,
            validator.last_modified,
        )
        await self.ctx.disk("write", path, RECORDS.save, path, completion)
        if sys.platform == "win32":
            # Windows cannot rename an open file; there is no lock to hold there anyway.
            self.lock.release()
        try:
            os.replace(part, path)
        except OSError as exc:
            raise self.ctx.disk_error(exc, "rename", part) from exc
        if self.policy.fsync:
            await self.ctx.disk("flush", path.parent, self.disk.fsync_folder, path.parent)
        await self.ctx.disk("remove", self.ctx.meta, remove_leftovers, self.ctx.meta)
        return VideoFile(
            path=path,
            size=self.done,
            sha256=self.writer.digest(),
            reused=False,
            index=self.ctx.index,
        )

    async def abandon(self, error: BaseException) -> None:
        """Keep the bytes in .part for a later call; a .part that nothing ever arrived in
        is removed (there is nothing to resume). Done in place, not in a thread: this also
        runs on a cancellation."""
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_size == 0:
                remove_leftovers(self.ctx.part, self.ctx.meta)

    def kept(self) -> str:
        if not self.done:
            return "no bytes had arrived yet"
        return (
            f"the {self.done} bytes received so far are kept in {self.ctx.part}, "
            "and a later call resumes from there"
        )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"
