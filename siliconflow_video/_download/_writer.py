"""Putting one response's body into the ``.part`` file: the offset, the running hash, the
batches, and whether a write runs on the event loop or in a worker thread.

Where the bytes go is a ``Disk``: ``OS_DISK`` by default, another one in tests that need a
full disk, a refused write or a slow one. Whether writes may run on the loop is a
``DiskWrites``, one per ``AsyncClient``, shared by its downloads: one slow write moves them
all to worker threads for a while.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiofiles.os
import aiohttp
import attrs

from .._config import DownloadPolicy
from .._logging import logger
from ._fetch import HostClock, Throttle
from ._partfile import Context, new_hasher

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "OS_DISK",
    "Disk",
    "DiskWrites",
    "HostClock",
    "OSDisk",
    "PartWrite",
    "PartWriter",
    "finish_before_cancel",
]

_T = TypeVar("_T")


@attrs.frozen
class PartWrite:
    """Where one batch goes: the .part descriptor, its offset there, the running hash
    (None when not hashing)."""

    fd: int
    offset: int
    hasher: _Hash | None


class Disk(Protocol):
    """The calls through which video bytes reach the disk. ``write_at`` runs on the event
    loop or in a worker thread; the others always in a worker thread."""

    def write_at(self, part: PartWrite, chunks: list[bytes]) -> None: ...
    def truncate(self, fd: int) -> None: ...
    def fsync(self, fd: int) -> None: ...
    def fsync_folder(self, folder: Path) -> None: ...


def _iov_max() -> int:
    try:
        return max(1, min(os.sysconf("SC_IOV_MAX"), 1024))
    except (AttributeError, ValueError, OSError):
        return 16


_IOV_MAX = _iov_max()


class OSDisk:
    """The operating system's file calls (no state: one ``OS_DISK`` serves everyone)."""

    def write_at(self, part: PartWrite, chunks: list[bytes]) -> None:
        """Hash the chunks in order and write them at ``part.offset`` as received, no copy
        into one buffer, at most IOV_MAX of them per system call (hashlib and pwritev
        release the GIL)."""
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

    def truncate(self, fd: int) -> None:
        os.ftruncate(fd, 0)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_folder(self, folder: Path) -> None:
        # So a rename in it survives a power cut.
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OS_DISK: Disk = OSDisk()


@attrs.define
class DiskWrites:
    """How one client's downloads write video bytes: through ``disk``, and from the event
    loop while such writes are quick.

    A write to the page cache takes microseconds, but a slow disk (or network file system)
    can hold one for much longer, and then every task on the loop waits. After one write
    slower than ``DownloadPolicy.max_loop_write``, writes go through worker threads for
    ``hold`` seconds.
    """

    disk: Disk = OS_DISK
    hold: float = 60.0
    until: float = 0.0
    #: The cap all of this client's transfers share (``DownloadPolicy.max_bytes_per_second``).
    throttle: Throttle = attrs.field(factory=Throttle)
    #: The ``.part`` descriptors this client is filling now, each with its video's size:
    #: what they will still take from the disk counts against the free space a new
    #: transfer needs (see ``PartFile.copy``).
    filling: dict[int, int] = attrs.field(factory=dict)
    checking_space: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def on_loop(self, policy: DownloadPolicy) -> bool:
        return policy.max_loop_write > 0 and time.monotonic() >= self.until

    def held_the_loop(self, took: float, part: Path) -> None:
        self.until = time.monotonic() + self.hold
        logger.debug(
            "a write to %s held the event loop for %.1f ms; writing from worker threads "
            "for the next %g s",
            part,
            took * 1000,
            self.hold,
        )


async def finish_before_cancel(op: Awaitable[_T]) -> _T:
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


class PartWriter:
    """Writes the bytes of one video into its locked ``.part`` descriptor: each piece from
    the loop as it arrives while such writes are quick, else one worker-thread write per
    ``write_buffer`` bytes. ``done`` bytes are in the file (all of them hashed when
    hashing); the next write goes to that offset."""

    def __init__(
        self,
        ctx: Context,
        fd: int,
        writes: DiskWrites,
        policy: DownloadPolicy,
        clock: HostClock,
        report: Callable[[int], None] | None,
    ) -> None:
        self.ctx = ctx
        self.fd = fd
        self.writes = writes
        self.disk = writes.disk
        self.policy = policy
        self.clock = clock
        self.report = report  # bytes received so far, whenever more arrive
        self.done = 0
        self.hasher = new_hasher(policy.sha256)
        # Chunks received but not yet handed to a write, and the write in flight (at most
        # one): a worker thread hashes and writes a batch while the loop receives the next.
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.writing: asyncio.Future[None] | None = None
        self.writing_size = 0
        #: ``disk.write_at`` on aiofiles' executor: one thread hop per batch.
        self._write_in_thread = aiofiles.os.wrap(self.disk.write_at)

    def resume(self, size: int, hasher: _Hash | None) -> None:
        """Go on after the ``size`` bytes already in the file (hashed by ``hasher``)."""
        self.done, self.hasher = size, hasher

    async def start_over(self) -> None:
        """Empty the file. The prefix is forgotten first: if the truncation fails or is cut
        short, the next write still goes to byte 0, never after bytes that may be gone."""
        self.done = 0
        self.hasher = new_hasher(self.policy.sha256)
        with self.clock.paused():
            try:
                # The thread finishes even on a cancellation: it uses the descriptor our
                # caller closes. No seek: every write goes to an explicit offset.
                await finish_before_cancel(asyncio.to_thread(self.disk.truncate, self.fd))
            except OSError as exc:
                raise self.ctx.disk_error(exc, "truncate", self.ctx.part) from exc

    def digest(self) -> str | None:
        return self.hasher.hexdigest() if self.hasher is not None else None

    async def copy(self, body: AsyncIterator[bytes]) -> None:
        """Copy ``body`` to the file after the ``done`` bytes already there."""
        self.pending, self.pending_size = [], 0
        clock, report = self.clock, self.report
        try:
            async for chunk in body:
                clock.heard()
                # Asked per piece: a slow write in any download moves them all to threads.
                if self.writes.on_loop(self.policy):
                    if self.pending or self.writing is not None:
                        await self.flush()  # back from threads: their bytes go first
                    self._write_on_loop(chunk)
                    if report is not None:
                        report(self.done)
                    continue
                self.pending.append(chunk)
                self.pending_size += len(chunk)
                if self.pending_size >= self.policy.write_buffer:
                    await self.flush(wait=False)  # reports progress as writes complete
                elif report is not None:
                    # Per chunk, not per write: a video smaller than the write buffer
                    # would otherwise show no progress until it is done.
                    report(self.done + self.writing_size + self.pending_size)
        except (aiohttp.ClientError, TimeoutError, asyncio.CancelledError):
            # What did arrive is a correct prefix: keep it, so the next try (or, after a
            # cancellation, the next run) resumes after it. One write, then the error goes on;
            # a second cancellation during it still ends it (finish_before_cancel).
            await self.flush()
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
        await self.flush()

    def _write_on_loop(self, chunk: bytes) -> None:
        """Write (and hash) ``chunk`` now, from the event loop, while its bytes are still in
        this core's cache: half the cost of handing them to a thread. A write slower than
        ``max_loop_write`` sends every download's writes to worker threads for a while."""
        started = time.perf_counter()
        try:
            self.disk.write_at(PartWrite(self.fd, self.done, self.hasher), [chunk])
        except OSError as exc:
            raise self.ctx.disk_error(exc, "write", self.ctx.part) from exc
        self.done += len(chunk)
        took = time.perf_counter() - started
        if took > self.policy.max_loop_write:
            self.writes.held_the_loop(took, self.ctx.part)
            self.clock.heard(force=True)  # the time the disk took is not the host's silence

    async def flush(self, *, wait: bool = True) -> None:
        """Hand the received chunks to a worker thread (one hop per batch), which hashes
        them and writes them at the end of .part while the loop receives the next batch.
        With ``wait``, return only once every byte is written."""
        await self._settle()
        if self.pending:
            chunks, self.pending = self.pending, []
            self.writing_size, self.pending_size = self.pending_size, 0
            part = PartWrite(self.fd, self.done, self.hasher)
            self.writing = asyncio.ensure_future(self._write_in_thread(part, chunks))
        if wait:
            await self._settle()

    async def _settle(self) -> None:
        """Wait for the write in flight, if any."""
        if self.writing is None:
            return
        writing, self.writing = self.writing, None
        # Counted before the await: if cancelled meanwhile, the thread still finishes this
        # write (finish_before_cancel), and the next batch must go after it.
        self.done += self.writing_size
        self.writing_size = 0
        with self.clock.paused():
            try:
                await finish_before_cancel(writing)
            except OSError as exc:
                raise self.ctx.disk_error(exc, "write", self.ctx.part) from exc
        if self.report is not None:
            # Bytes received, like the per-chunk reports: never less than the last report.
            self.report(self.done + self.pending_size)
