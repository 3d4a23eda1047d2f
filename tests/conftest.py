"""Shared fixtures: a fake SiliconFlow on loopback, a client with fast policies, the
video-host session as the client builds it, and the real disk faults this machine allows."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from siliconflow_video import AsyncClient, DownloadPolicy, RetryPolicy
from siliconflow_video.testing import FakeSiliconFlow

#: Retries that keep their shape (backoff, jitter, Retry-After) but take milliseconds.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
FAST_DOWNLOAD = DownloadPolicy(base_delay=0.001, max_delay=0.01, write_buffer=256 * 1024)


def make_client(fake: FakeSiliconFlow, **options: object) -> AsyncClient:
    """A client pointed at the fake, polling every 50-200 ms unless told otherwise."""
    settings: dict[str, object] = {
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "retry": FAST_RETRY,
        "download": FAST_DOWNLOAD,
    }
    settings.update(options)
    return AsyncClient(fake.api_key, fake.base_url, **settings)  # type: ignore[arg-type]


def video_session() -> aiohttp.ClientSession:
    """A session for the video host set up as ``AsyncClient`` sets up its own: no
    Authorization, and no decompression (the bytes on disk are the bytes served)."""
    return aiohttp.ClientSession(auto_decompress=False, raise_for_status=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSiliconFlow]:
    async with FakeSiliconFlow(api_key="sk-test-secret-0123456789", seed=1234) as server:
        yield server


@pytest.fixture
async def client(fake: FakeSiliconFlow) -> AsyncIterator[AsyncClient]:
    async with make_client(fake) as c:
        yield c


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The video-host session, as the client builds it (see ``video_session``)."""
    async with video_session() as s:
        yield s


@contextlib.contextmanager
def small_tmpfs(path: Path, *options: str) -> Iterator[Path | None]:
    """A 1 MiB tmpfs at ``path`` (with extra mount ``options``), or None where this machine
    cannot mount one."""
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
        )
    except OSError:
        yield None
        return
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[bool]:
    """``chattr +i`` on ``folder`` (which stops root too) for the block; False where this
    machine or file system cannot do it."""
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], timeout=10).returncode:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True, timeout=10)


def child_env() -> dict[str, str]:
    """The environment for a child process of the tests: no SiliconFlow settings of ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}


@contextlib.contextmanager
def reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Never leave a child behind, whatever the test does."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (polling every 10 ms) until ``condition()``; fail naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
