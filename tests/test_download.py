"""download_video: one URL → one verified file, whatever the network and the disk do.

Runs against FakeSiliconFlow over real HTTP on loopback; nothing in aiohttp is mocked.
Disk faults are real where the machine allows it (chattr +i, a 1 MiB tmpfs) and are also
injected through the download's ``Disk`` (``HookedDisk``), never by patching a module.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

import siliconflow_video as sv
from siliconflow_video import DownloadError, DownloadPolicy, VideoURLExpiredError
from siliconflow_video._download import (
    DiskWrites,
    OSDisk,
    PartWrite,
    VideoFile,
    download_video,
)
from siliconflow_video._logging import redact_url
from siliconflow_video.testing import (
    ConnectionReset,
    DropMidBody,
    ErrorResponse,
    ExpiredURL,
    FakeSiliconFlow,
    IgnoreRange,
    Slow,
    SlowBody,
    StallMidBody,
    TruncatedBody,
    forbidden,
    not_found,
    rate_limited,
    server_error,
)

from .conftest import immutable, small_tmpfs, video_session

KIB = 1024
MIB = 1024 * KIB
SIZE = 600 * KIB

POLICY = DownloadPolicy(
    write_buffer=64 * KIB,
    max_attempts=6,
    base_delay=0.001,
    max_delay=0.01,
    connect_timeout=2.0,
    read_timeout=2.0,
    sha256=True,  # so every test also checks the digest computed while streaming
)

Refresh = Callable[[], Awaitable[str | None]]


async def status_url(
    session: aiohttp.ClientSession, fake: FakeSiliconFlow, rid: str, index: int = 0
) -> str:
    """The URL /v1/video/status hands out now (what refresh_url does in the client)."""
    async with session.post(
        f"{fake.base_url}/video/status",
        json={"requestId": rid},
        headers={"Authorization": f"Bearer {fake.api_key}"},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    url = body["results"]["videos"][index]["url"]
    assert isinstance(url, str)
    return url


class Refresher:
    """A refresh_url that asks the fake's /video/status, counting its calls."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        fake: FakeSiliconFlow,
        rid: str,
        *,
        answer: str | None = "status",
        before: Callable[[], None] | None = None,
    ) -> None:
        self.session, self.fake, self.rid = session, fake, rid
        self.answer = answer
        self.before = before
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        if self.before is not None:
            self.before()
        if self.answer != "status":
            return self.answer
        return await status_url(self.session, self.fake, self.rid)


async def no_refresh() -> str | None:
    return None


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def meta_of(path: Path) -> Path:
    return path.with_name(path.name + ".part.json")


def assert_clean_success(
    result: VideoFile, path: Path, expected: bytes, *, hashed: bool = True
) -> None:
    assert result.path == path
    assert path.read_bytes() == expected
    assert result.size == len(expected)
    assert result.sha256 == (hashlib.sha256(expected).hexdigest() if hashed else None)
    assert not part_of(path).exists()
    assert not meta_of(path).exists()


def assert_first_request_was_whole(fake: FakeSiliconFlow, rid: str) -> None:
    """The one request for ``rid``'s video that ended was the first, whole one (a cut-off
    request may still be running on the server, and is logged only when it ends)."""
    (request,) = fake.requests_for("video", rid)
    assert (request.status, request.headers.get("Range")) == (200, None)


def assert_no_credentials(text: str) -> None:
    assert "Signature=" not in text
    assert "Expires=" not in text


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    *,
    refresh: Refresh = no_refresh,
    policy: DownloadPolicy = POLICY,
    rid: str = "rid",
    on_progress: Callable[[int, int | None], None] | None = None,
    writes: DiskWrites | None = None,
) -> VideoFile:
    """download_video as a client calls it; ``writes`` is a fresh client's unless given."""
    return await download_video(
        session,
        url,
        path,
        refresh_url=refresh,
        policy=policy,
        writes=writes or DiskWrites(),
        request_id=rid,
        index=0,
        on_progress=on_progress,
    )


class HookedDisk(OSDisk):
    """The real disk, with ``before_write`` run before each write (it may sleep or raise)
    and ``after_truncate`` after each truncation."""

    def __init__(
        self,
        before_write: Callable[[PartWrite, list[bytes]], None] = lambda part, chunks: None,
        after_truncate: Callable[[], None] = lambda: None,
    ) -> None:
        self.before_write = before_write
        self.after_truncate = after_truncate
        self.synced: list[int | Path] = []  # each fsync: a descriptor, or a folder

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self.synced.append(fd)

    def fsync_folder(self, folder: Path) -> None:
        super().fsync_folder(folder)
        self.synced.append(folder)

    def write_at(self, part: PartWrite, chunks: list[bytes]) -> None:
        self.before_write(part, chunks)
        super().write_at(part, chunks)

    def truncate(self, fd: int) -> None:
        super().truncate(fd)
        self.after_truncate()


# --- the plain path ------------------------------------------------------------------------


async def test_downloads_the_exact_bytes(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A clean download leaves exactly the served bytes under the final name, its sha256,
    and no .part or sidecar."""
    rid = fake.add_job(videos=[SIZE])
    path = tmp_path / "v.mp4"
    seen: list[tuple[int, int | None]] = []
    result = await fetch(
        session,
        await status_url(session, fake, rid),
        path,
        rid=rid,
        on_progress=lambda d, t: seen.append((d, t)),
    )
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert result.reused is False
    assert seen[-1] == (SIZE, SIZE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    (request,) = fake.requests_for("video", rid)
    assert request.headers.get("Accept-Encoding") == "identity"
    assert "Range" not in request.headers


async def test_fsync_policy_completes(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With fsync on, the file and then its folder are flushed (without it, neither), and
    the result is the same."""
    rid = fake.add_job(videos=[SIZE])
    url = await status_url(session, fake, rid)
    for fsync in (True, False):
        disk = HookedDisk()
        path = tmp_path / f"{fsync}.mp4"
        policy = attrs.evolve(POLICY, fsync=fsync)
        result = await fetch(session, url, path, rid=rid, policy=policy, writes=DiskWrites(disk))
        assert_clean_success(result, path, fake.video_bytes(rid))
        if fsync:
            assert len(disk.synced) == 2
            assert isinstance(disk.synced[0], int)
            assert disk.synced[1] == tmp_path
        else:
            assert disk.synced == []


async def test_default_policy_reports_no_sha256(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """By default nothing is hashed: sha256 is None, for a download and for a reused file."""
    assert DownloadPolicy().sha256 is False
    rid = fake.add_job(videos=[SIZE])
    url = await status_url(session, fake, rid)
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, sha256=False)
    first = await fetch(session, url, path, rid=rid, policy=policy)
    assert_clean_success(first, path, fake.video_bytes(rid), hashed=False)
    again = await fetch(session, url, path, rid=rid, policy=policy)
    assert (again.reused, again.size, again.sha256) == (True, SIZE, None)


async def test_final_file_present_means_no_request(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A second call with the final file already there makes no request and reuses it."""
    rid = fake.add_job(videos=[SIZE])
    url = await status_url(session, fake, rid)
    path = tmp_path / "v.mp4"
    first = await fetch(session, url, path, rid=rid)
    fake.clear_log()
    again = await fetch(session, url, path, rid=rid)
    assert again.reused is True
    assert (again.size, again.sha256) == (first.size, first.sha256)
    assert fake.requests_for("video") == []


# --- network faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        DropMidBody(200 * KIB),
        TruncatedBody(300 * KIB),
        TruncatedBody(0),
        server_error(500),
        server_error(503),
        rate_limited(),
        ConnectionReset(),
        SlowBody(4 * MIB),
    ],
    ids=lambda f: type(f).__name__ + str(getattr(f, "status", "")),
)
# 60 s: no write on a busy test machine takes that long, so the loop path is the one taken.
@pytest.mark.parametrize("max_loop_write", [60, 0], ids=["loop-writes", "thread-writes"])
async def test_bytes_match_after_a_fault(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    fault: Any,
    max_loop_write: float,
) -> None:
    """After a dropped, truncated, refused or slow answer, the file equals the served bytes,
    whether writes run on the loop or in worker threads."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", fault, times=2)
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, max_loop_write=max_loop_write)
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, rid=rid, policy=policy)
    assert_clean_success(result, path, fake.video_bytes(rid))


async def test_resume_sends_range_and_if_range(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """After a drop the next request asks only for the missing bytes (Range + If-Range) and
    the host answers 206."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", DropMidBody(256 * KIB))
    path = tmp_path / "v.mp4"
    result = await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert_clean_success(result, path, fake.video_bytes(rid))
    first, second = fake.requests_for("video", rid)
    assert "Range" not in first.headers
    match = re.fullmatch(r"bytes=(\d+)-", second.headers["Range"])
    assert match
    assert 0 < int(match.group(1)) <= 256 * KIB
    assert second.headers["If-Range"] == fake.jobs[rid].videos[0].etag
    assert second.status == 206


async def test_truncated_body_under_full_content_length_is_not_success(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A body cut short under a full Content-Length, every time, ends in DownloadError with
    the bytes kept in .part and nothing under the final name."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", TruncatedBody(0), times=None)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    with pytest.raises(DownloadError, match="gave up") as info:
        await fetch(session, url, path, rid=rid)
    assert not path.exists()
    assert len(fake.requests_for("video", rid)) == POLICY.max_attempts
    assert_no_credentials(str(info.value))
    assert info.value.request_id == rid


async def test_range_ignored_starts_over_cleanly(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """When the host answers a Range request with the whole body (200), the partial bytes
    are dropped and the file is the served bytes, not a splice."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", DropMidBody(200 * KIB))
    fake.add_fault("video", IgnoreRange())
    path = tmp_path / "v.mp4"
    result = await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert_clean_success(result, path, fake.video_bytes(rid))
    statuses = [(r.status, "Range" in r.headers) for r in fake.requests_for("video", rid)]
    assert statuses == [(200, False), (200, True)]


async def test_read_timeout_is_retried(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A host that does not answer within read_timeout is retried, not waited on forever."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", Slow(1.0))
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, base_delay=0.001, read_timeout=0.2)
    url = await status_url(session, fake, rid)
    started = time.monotonic()
    result = await fetch(session, url, path, rid=rid, policy=policy)
    assert time.monotonic() - started < 0.9  # before the slow answer could have come
    assert_clean_success(result, path, fake.video_bytes(rid))


@pytest.mark.parametrize("max_loop_write", [60, 0], ids=["loop-writes", "thread-writes"])
async def test_silence_mid_body_is_cut_off_and_resumed(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path, max_loop_write: float
) -> None:
    """A host that goes silent mid-body for longer than read_timeout is cut off after about
    read_timeout, and the next request resumes from the bytes kept."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", StallMidBody(after_bytes=200 * KIB, seconds=5.0))
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, base_delay=0.001, read_timeout=0.3, max_loop_write=max_loop_write)
    url = await status_url(session, fake, rid)
    started = time.monotonic()
    result = await fetch(session, url, path, rid=rid, policy=policy)
    assert time.monotonic() - started < 3.0  # cut off, not waited out for 5 s
    assert_clean_success(result, path, fake.video_bytes(rid))
    # The stalled request is still asleep on the server (requests are logged when they end):
    # the one logged is the resumption.
    (resumed,) = fake.requests_for("video", rid)
    assert resumed.headers["Range"] == f"bytes={200 * KIB}-"


async def test_a_slow_steady_body_is_not_timed_out(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """read_timeout bounds each silence, not the transfer: a body that takes three times
    read_timeout but keeps coming arrives in one request."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", SlowBody(bytes_per_second=SIZE / 0.9))
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, read_timeout=0.3)
    result = await fetch(session, await status_url(session, fake, rid), path, policy=policy)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert_first_request_was_whole(fake, rid)


async def test_a_slow_disk_is_not_a_silent_host(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Waiting on a worker-thread write longer than read_timeout does not time the host out:
    one request brings the whole video."""
    rid = fake.add_job(videos=[SIZE])
    _, writes = spy_on_writes(first_takes=0.6)
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, read_timeout=0.2, max_loop_write=0)
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, policy=policy, writes=writes)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert_first_request_was_whole(fake, rid)


async def test_retries_log_at_debug_without_the_signed_query(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each retry is logged at DEBUG on the package logger, showing only scheme://host/path."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", server_error(502), times=2)
    with caplog.at_level(logging.DEBUG, logger="siliconflow_video"):
        await fetch(session, await status_url(session, fake, rid), tmp_path / "v.mp4", rid=rid)
    retries = [r for r in caplog.records if "try 2 of" in r.getMessage()]
    assert retries
    assert retries[0].levelno == logging.DEBUG
    assert retries[0].name == "siliconflow_video"
    for record in caplog.records:
        assert_no_credentials(record.getMessage())


async def test_not_found_is_a_download_error_with_status(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 404 from the host is not retried: DownloadError with status_code, requestId, path."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", not_found(), times=None)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    with pytest.raises(DownloadError) as info:
        await fetch(session, url, path, rid=rid)
    err = info.value
    assert not isinstance(err, VideoURLExpiredError)
    assert (err.status_code, err.request_id, err.path) == (404, rid, str(path))
    assert err.url == redact_url(url)
    assert "?" not in err.url
    assert "HTTP 404" in str(err)
    assert_no_credentials(str(err))
    assert len(fake.requests_for("video", rid)) == 1
    assert not path.exists()


# --- expiry --------------------------------------------------------------------------------


async def test_expiry_mid_download_refreshes_and_resumes(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """When the URL expires after some bytes arrived, refresh_url gives a new one and the
    download continues from the kept bytes with Range."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", DropMidBody(256 * KIB))
    path = tmp_path / "v.mp4"
    refresh = Refresher(session, fake, rid)
    expired_once: list[bool] = []

    def expire_after_first_bytes(done: int, total: int | None) -> None:
        if not expired_once:
            expired_once.append(True)
            fake.expire_urls()

    url = await status_url(session, fake, rid)
    result = await fetch(
        session, url, path, rid=rid, refresh=refresh, on_progress=expire_after_first_bytes
    )
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert refresh.calls == 1
    first, expired, resumed = fake.requests_for("video", rid)
    assert (first.status, expired.status, resumed.status) == (200, 403, 206)
    assert expired.query == first.query
    assert resumed.query != first.query
    assert int(re.fullmatch(r"bytes=(\d+)-", resumed.headers["Range"]).group(1)) > 0  # type: ignore[union-attr]


async def test_already_expired_url_is_refreshed(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A URL that has expired before the first byte is exchanged for a fresh one."""
    rid = fake.add_job(videos=[SIZE])
    url = await status_url(session, fake, rid)
    fake.expire_urls()
    refresh = Refresher(session, fake, rid)
    path = tmp_path / "v.mp4"
    result = await fetch(session, url, path, rid=rid, refresh=refresh)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert refresh.calls == 1
    assert [r.status for r in fake.requests_for("video", rid)] == [403, 200]


async def test_expired_url_fault_is_refreshed(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The OSS "Request has expired." 403 leads to refresh_url and a complete file."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", ExpiredURL())
    # The fake signs with second resolution: rotate keys so the fresh URL differs.
    refresh = Refresher(session, fake, rid, before=fake.expire_urls)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, rid=rid, refresh=refresh)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert refresh.calls == 1


async def test_400_saying_expired_is_treated_as_expiry(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 400 whose body mentions "expired" also asks refresh_url for a fresh URL."""
    rid = fake.add_job(videos=[SIZE])
    body = "<Error><Code>InvalidArgument</Code><Message>Token expired</Message></Error>"
    fake.add_fault("video", ErrorResponse(400, body, content_type="application/xml"))
    refresh = Refresher(session, fake, rid, before=fake.expire_urls)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, rid=rid, refresh=refresh)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert refresh.calls == 1


@pytest.mark.parametrize("answer", [None, "same"])
async def test_no_fresh_url_raises_expired_and_keeps_part(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path, answer: str | None
) -> None:
    """With no fresh URL (None, or the same one again, tried once more in case the 403 was a
    passing fault) the error says the URL expired, that URLs last one hour and no fresh one
    came, and the partial bytes stay in .part."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", DropMidBody(256 * KIB))
    url = await status_url(session, fake, rid)
    refresh = Refresher(session, fake, rid, answer=url if answer == "same" else None)
    path = tmp_path / "v.mp4"

    with pytest.raises(VideoURLExpiredError) as info:
        await fetch(
            session,
            url,
            path,
            rid=rid,
            refresh=refresh,
            on_progress=lambda d, t: fake.expire_urls(),
        )
    message = str(info.value)
    assert "expired" in message
    assert "one hour" in message
    assert "no fresh URL" in message or "same URL" in message
    assert str(part_of(path)) in message
    assert rid in message
    assert_no_credentials(message)
    assert info.value.status_code == 403
    assert refresh.calls == (2 if answer == "same" else 1)
    assert not path.exists()
    kept = part_of(path).read_bytes()
    assert 0 < len(kept) < SIZE
    assert kept == fake.video_bytes(rid)[: len(kept)]
    sidecar = json.loads(meta_of(path).read_text())
    assert sidecar == {
        "etag": fake.jobs[rid].videos[0].etag,
        "last_modified": fake.jobs[rid].videos[0].last_modified,
        "total": SIZE,
    }


async def test_repeated_refusal_with_fresh_urls_ends(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 403 that is not about expiry, again with every fresh URL, ends in DownloadError
    after max_url_refreshes refreshes instead of looping."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", forbidden(), times=None)
    refresh = Refresher(session, fake, rid, before=fake.expire_urls)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    with pytest.raises(DownloadError) as info:
        await fetch(session, url, path, rid=rid, refresh=refresh)
    assert info.value.status_code == 403
    assert refresh.calls == POLICY.max_url_refreshes
    assert len(fake.requests_for("video", rid)) == POLICY.max_url_refreshes + 1
    assert_no_credentials(str(info.value))


async def test_urls_that_keep_expiring_end_as_expired(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """If every fresh URL has expired too, VideoURLExpiredError comes after
    max_url_refreshes refreshes."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", ExpiredURL(), times=None)
    refresh = Refresher(session, fake, rid, before=fake.expire_urls)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    with pytest.raises(VideoURLExpiredError, match="failed too"):
        await fetch(session, url, path, rid=rid, refresh=refresh)
    assert refresh.calls == POLICY.max_url_refreshes


async def test_video_host_never_sees_authorization(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Even when refresh_url calls the API (with the key) on the same session, no request
    to the video host carries Authorization."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", DropMidBody(100 * KIB))
    url = await status_url(session, fake, rid)
    expired: list[bool] = []

    def expire_once(done: int, total: int | None) -> None:
        if not expired:
            expired.append(True)
            fake.expire_urls()

    refresh = Refresher(session, fake, rid)
    await fetch(session, url, tmp_path / "v.mp4", rid=rid, refresh=refresh, on_progress=expire_once)
    videos = fake.requests_for("video", rid)
    assert [r.status for r in videos] == [200, 403, 206]
    assert all("Authorization" not in r.headers for r in videos)
    assert all("Authorization" in r.headers for r in fake.requests_for("status", rid))


# --- resuming from disk --------------------------------------------------------------------


async def test_complete_part_is_finished_on_416(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A .part that already holds every byte (a crash before the rename) is finished when
    the host answers 416 bytes */total, without downloading again."""
    rid = fake.add_job(videos=[SIZE])
    video = fake.jobs[rid].videos[0]
    path = tmp_path / "v.mp4"
    part_of(path).write_bytes(fake.video_bytes(rid))
    meta_of(path).write_text(
        json.dumps({"etag": video.etag, "last_modified": video.last_modified, "total": SIZE})
    )
    result = await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert_clean_success(result, path, fake.video_bytes(rid))
    (request,) = fake.requests_for("video", rid)
    assert (request.headers["Range"], request.status) == (f"bytes={SIZE}-", 416)


async def test_part_without_sidecar_starts_over(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Bytes in .part that no sidecar ties to a response are not trusted: no Range is sent
    and the file is the served bytes."""
    rid = fake.add_job(videos=[SIZE])
    path = tmp_path / "v.mp4"
    part_of(path).write_bytes(b"garbage" * 1000)
    result = await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert_clean_success(result, path, fake.video_bytes(rid))
    (request,) = fake.requests_for("video", rid)
    assert "Range" not in request.headers


@pytest.mark.parametrize("hashed", [True, False], ids=["sha256", "no-sha256"])
async def test_resume_from_an_earlier_process(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path, hashed: bool
) -> None:
    """A .part and sidecar left by another process are resumed with Range, and the sha256
    (when asked for) covers the kept prefix too."""
    rid = fake.add_job(videos=[SIZE])
    video = fake.jobs[rid].videos[0]
    path = tmp_path / "v.mp4"
    kept = 123_457
    part_of(path).write_bytes(fake.video_bytes(rid)[:kept])
    meta_of(path).write_text(json.dumps({"etag": video.etag, "last_modified": None, "total": SIZE}))
    policy = attrs.evolve(POLICY, sha256=hashed)
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, rid=rid, policy=policy)
    assert_clean_success(result, path, fake.video_bytes(rid), hashed=hashed)
    (request,) = fake.requests_for("video", rid)
    assert request.headers["Range"] == f"bytes={kept}-"
    assert request.status == 206


async def test_a_slow_start_over_neither_times_out_nor_leaves_a_hole(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A host that ignores Range makes the download start over; emptying .part takes longer
    than read_timeout. That is not the host's silence, and the next bytes go to byte 0:
    the file is exact, not the served bytes behind a run of zeros."""
    rid = fake.add_job(videos=[SIZE])
    video = fake.jobs[rid].videos[0]
    path = tmp_path / "v.mp4"
    part_of(path).write_bytes(fake.video_bytes(rid)[:100_000])
    meta_of(path).write_text(json.dumps({"etag": video.etag, "last_modified": None, "total": SIZE}))
    fake.add_fault("video", IgnoreRange())
    # Done, but the call has not returned yet:
    writes = DiskWrites(disk=HookedDisk(after_truncate=lambda: time.sleep(0.5)))
    policy = attrs.evolve(POLICY, read_timeout=0.2)
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, rid=rid, policy=policy, writes=writes)
    assert_clean_success(result, path, fake.video_bytes(rid))


async def test_changed_video_on_the_host_is_not_spliced(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """If the sidecar's validator no longer matches (If-Range fails), the host sends the
    whole new body and the partial bytes are thrown away."""
    rid = fake.add_job(videos=[SIZE])
    path = tmp_path / "v.mp4"
    part_of(path).write_bytes(b"\xff" * 1000)
    meta_of(path).write_text(json.dumps({"etag": '"old"', "last_modified": None, "total": SIZE}))
    result = await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert_clean_success(result, path, fake.video_bytes(rid))
    (request,) = fake.requests_for("video", rid)
    assert (request.headers["If-Range"], request.status) == ('"old"', 200)


async def test_wrong_content_range_starts_over(tmp_path: Path) -> None:
    """A 206 that does not continue at the kept offset is never spliced in: the partial is
    dropped and the whole file is fetched again."""
    body = os.urandom(50_000)
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Range"))
        headers = {"ETag": '"e"'}
        if "Range" in request.headers:
            # Exactly as many bytes as are missing, but from byte 0: the length adds up,
            # the content would be a splice.
            missing = len(body) - 1000
            headers["Content-Range"] = f"bytes 0-{missing - 1}/{len(body)}"
            return web.Response(status=206, body=body[:missing], headers=headers)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v.mp4", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    path = tmp_path / "v.mp4"
    part_of(path).write_bytes(body[:1000])
    meta_of(path).write_text(json.dumps({"etag": '"e"', "last_modified": None, "total": 50_000}))
    try:
        async with video_session() as session:
            result = await fetch(session, f"http://127.0.0.1:{port}/v.mp4?sig=1", path)
    finally:
        await runner.cleanup()
    assert_clean_success(result, path, body)
    assert seen == ["bytes=1000-", None]


# --- cancellation and concurrency ----------------------------------------------------------


async def test_cancel_keeps_part_and_a_rerun_resumes(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Cancelling mid-transfer keeps .part and sidecar, leaves no final file, releases the
    lock; a second call resumes with Range and completes byte for byte."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", SlowBody(1 * MIB))
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    halfway = asyncio.Event()

    def progress(done: int, total: int | None) -> None:
        if done >= 128 * KIB:
            halfway.set()

    task = asyncio.create_task(fetch(session, url, path, rid=rid, on_progress=progress))
    await asyncio.wait_for(halfway.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not path.exists()
    kept = part_of(path).stat().st_size
    assert 128 * KIB <= kept < SIZE
    assert meta_of(path).exists()

    result = await asyncio.wait_for(fetch(session, url, path, rid=rid), 5)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert fake.requests_for("video", rid)[-1].headers["Range"] == f"bytes={kept}-"


async def test_two_workers_on_one_path_give_one_correct_file(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Two concurrent downloads to the same path (two workers) end with one complete,
    correct file: one downloads under the lock, the other waits and reuses it."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", SlowBody(4 * MIB))
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    async with video_session() as other:
        a, b = await asyncio.gather(
            fetch(session, url, path, rid=rid), fetch(other, url, path, rid=rid)
        )
    expected = fake.video_bytes(rid)
    assert path.read_bytes() == expected
    assert sorted([a.reused, b.reused]) == [False, True]
    assert a.sha256 == b.sha256 == hashlib.sha256(expected).hexdigest()
    assert len(fake.requests_for("video", rid)) == 1
    assert not part_of(path).exists()
    assert not meta_of(path).exists()


# --- memory --------------------------------------------------------------------------------


# The fake video host in a process of its own, so that the test traces the client's
# memory alone (the fake's send buffers grow when a loaded machine slows the client).
_FAKE_SERVER = """
import asyncio, json, sys
from siliconflow_video.testing import FakeSiliconFlow

async def main():
    async with FakeSiliconFlow(api_key="sk-test", seed=1) as fake:
        rid = fake.add_job(videos=[int(sys.argv[1]), 256 * 1024])
        sha = fake.video_sha256(rid)  # builds the content block before the client starts
        print(json.dumps({"base_url": fake.base_url, "rid": rid, "sha256": sha}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@pytest.mark.parametrize("max_loop_write", [60, 0], ids=["loop-writes", "thread-writes"])
async def test_memory_stays_flat_for_64_mib(tmp_path: Path, max_loop_write: float) -> None:
    """Downloading 64 MiB holds about two write buffers in memory, whatever the size: the
    peak of the client's traced allocations stays under 4 x write_buffer (32 x would be
    the whole video). Two batches (one being written, one filling) make 2 x; the rest is
    what aiohttp buffers (and joins) off the socket while a write is in flight, which on
    a loaded machine was measured at up to 1.5 MiB, so a 3 x bound failed about one run
    in five there."""
    size = 64 * MIB
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FAKE_SERVER,
        str(size),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        info = json.loads(await asyncio.wait_for(server.stdout.readline(), 60))
        policy = DownloadPolicy(
            write_buffer=2 * MIB, base_delay=0.001, sha256=True, max_loop_write=max_loop_write
        )
        # The client's own setting: bodies as sent, never decompressed.
        async with aiohttp.ClientSession(auto_decompress=False) as session:

            async def url_of(index: int) -> str:
                async with session.post(
                    f"{info['base_url']}/video/status",
                    json={"requestId": info["rid"]},
                    headers={"Authorization": "Bearer sk-test"},
                ) as resp:
                    body = await resp.json()
                url = body["results"]["videos"][index]["url"]
                assert isinstance(url, str)
                return url

            url = await url_of(0)
            # Warm up connection pools, thread pool and imports outside the measurement.
            await fetch(session, await url_of(1), tmp_path / "w.mp4")
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                result = await fetch(
                    session, url, tmp_path / "big.mp4", rid=info["rid"], policy=policy
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        if server.stdin is not None:
            server.stdin.close()
        await asyncio.wait_for(server.wait(), 30)
    assert result.size == size
    assert result.sha256 == info["sha256"]
    assert peak < 4 * policy.write_buffer, f"peak {peak / MIB:.1f} MiB"


# --- disk errors ---------------------------------------------------------------------------


async def test_disk_full_from_the_write_seam(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """ENOSPC while writing becomes a DownloadError saying the disk is full, chained from
    the OSError, not retried, and nothing under the final name."""
    rid = fake.add_job(videos=[SIZE])

    def full(part: PartWrite, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    writes = DiskWrites(disk=HookedDisk(full))
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    with pytest.raises(DownloadError, match="disk full while writing") as info:
        await fetch(session, url, path, rid=rid, writes=writes)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert len(fake.requests_for("video", rid)) == 1
    assert not path.exists()


def spy_on_writes(*, first_takes: float = 0.0, hold: float = 60.0) -> tuple[list[bool], DiskWrites]:
    """A client's writes that record, for each write to a .part, whether it ran on the
    event loop's thread; the first write takes at least ``first_takes`` seconds."""
    on_loop: list[bool] = []

    def spy(part: PartWrite, chunks: list[bytes]) -> None:
        if not on_loop:
            time.sleep(first_takes)
        on_loop.append(threading.current_thread() is threading.main_thread())

    return on_loop, DiskWrites(disk=HookedDisk(spy), hold=hold)


@pytest.mark.parametrize("hashed", [True, False], ids=["sha256", "no-sha256"])
@pytest.mark.parametrize(
    ("max_loop_write", "on_the_loop"), [(60, True), (0, False)], ids=["default", "budget-0"]
)
async def test_where_writes_happen(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    hashed: bool,
    max_loop_write: float,
    on_the_loop: bool,
) -> None:
    """Every piece is written (and hashed) from the event loop as it arrives; with
    max_loop_write=0, none is. (60 s: a budget no write on a busy test machine exceeds.)"""
    rid = fake.add_job(videos=[SIZE])
    on_loop, writes = spy_on_writes()
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, sha256=hashed, max_loop_write=max_loop_write)
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, rid=rid, policy=policy, writes=writes)
    assert_clean_success(result, path, fake.video_bytes(rid), hashed=hashed)
    assert on_loop
    assert all(where is on_the_loop for where in on_loop)


@pytest.mark.parametrize("hashed", [True, False], ids=["sha256", "no-sha256"])
async def test_a_slow_write_moves_writing_to_worker_threads(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    hashed: bool,
) -> None:
    """One write slower than max_loop_write sends the rest of that download, and the next
    downloads of the same client, through worker threads; the bytes (and the digest) stay
    exact."""
    first, second = fake.add_job(videos=[4 * MIB]), fake.add_job(videos=[SIZE])
    on_loop, writes = spy_on_writes(first_takes=0.05)
    policy = attrs.evolve(POLICY, sha256=hashed, max_loop_write=0.01)
    path = tmp_path / "first.mp4"
    url = await status_url(session, fake, first)
    result = await fetch(session, url, path, policy=policy, writes=writes)
    assert_clean_success(result, path, fake.video_bytes(first), hashed=hashed)
    assert on_loop[0] is True
    assert len(on_loop) > 1
    assert not any(on_loop[1:])

    on_loop.clear()
    path = tmp_path / "second.mp4"
    url = await status_url(session, fake, second)
    result = await fetch(session, url, path, policy=policy, writes=writes)
    assert_clean_success(result, path, fake.video_bytes(second), hashed=hashed)
    assert on_loop
    assert not any(on_loop)


async def test_a_slow_write_moves_other_running_downloads_too(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A slow write in one download sends the writes of the client's downloads already
    running through worker threads from then on, not only its own."""
    ids = [fake.add_job(videos=[2 * MIB]) for _ in range(2)]
    fake.add_fault("video", SlowBody(bytes_per_second=8 * MIB), times=None)  # they overlap
    policy = attrs.evolve(POLICY, max_loop_write=0.01)
    urls = [await status_url(session, fake, rid) for rid in ids]
    writes: list[tuple[int, bool]] = []  # (descriptor, on the loop)
    slow_done = threading.Event()

    def spy(part: PartWrite, chunks: list[bytes]) -> None:
        on_loop = threading.current_thread() is threading.main_thread()
        if writes and not slow_done.is_set():
            slow_done.set()  # the second write of all: slow, while both are running
            time.sleep(0.05)
        writes.append((part.fd, on_loop))

    client_writes = DiskWrites(disk=HookedDisk(spy))
    results = await asyncio.gather(
        *(
            fetch(session, url, tmp_path / f"{i}.mp4", rid=rid, policy=policy, writes=client_writes)
            for i, (rid, url) in enumerate(zip(ids, urls, strict=True))
        )
    )
    for result, rid in zip(results, ids, strict=True):
        assert_clean_success(result, result.path, fake.video_bytes(rid))
    fds = {fd for fd, _ in writes}
    assert len(fds) == 2
    after_slow = writes[2:]
    for fd in fds:
        mine = [on_loop for other, on_loop in after_slow if other == fd]
        assert mine  # each download still had writes to make after the slow one
        assert not any(mine)


async def test_loop_writes_come_back_after_the_hold(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Once the hold after a slow write is over, a running download writes from the loop
    again, its thread writes finished first: the bytes and the digest stay exact."""
    rid = fake.add_job(videos=[4 * MIB])
    fake.add_fault("video", SlowBody(bytes_per_second=16 * MIB))  # about 0.25 s
    on_loop, writes = spy_on_writes(first_takes=0.02, hold=0.05)
    policy = attrs.evolve(POLICY, max_loop_write=0.01)
    path = tmp_path / "v.mp4"
    url = await status_url(session, fake, rid)
    result = await fetch(session, url, path, policy=policy, writes=writes)
    assert_clean_success(result, path, fake.video_bytes(rid))
    assert on_loop[0] is True
    assert on_loop.count(False) > 0
    assert on_loop[-1] is True


async def test_no_permission_from_the_write_seam(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """EACCES injected at the write seam becomes "no permission to write in <folder>"."""
    rid = fake.add_job(videos=[SIZE])

    def refused(part: PartWrite, chunks: list[bytes]) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    writes = DiskWrites(disk=HookedDisk(refused))
    url = await status_url(session, fake, rid)
    with pytest.raises(DownloadError, match=f"no permission to write in {tmp_path}"):
        await fetch(session, url, tmp_path / "v.mp4", rid=rid, writes=writes)


async def test_immutable_folder_is_a_clear_error(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A folder nobody may write in (chattr +i, which stops root too) gives "no permission
    to write in <folder>" from the real os.open, and no request is made."""
    rid = fake.add_job(videos=[SIZE])
    folder = tmp_path / "locked"
    folder.mkdir()
    url = await status_url(session, fake, rid)
    with immutable(folder) as locked:
        if not locked:
            pytest.skip("chattr +i is not available on this file system")
        with pytest.raises(DownloadError, match=f"no permission to write in {folder}") as info:
            await fetch(session, url, folder / "v.mp4", rid=rid)
    assert isinstance(info.value.__cause__, PermissionError)
    assert fake.requests_for("video", rid) == []


async def test_folder_under_a_file_is_a_clear_error(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A destination below a regular file (real ENOTDIR/EEXIST from mkdir) is a
    DownloadError naming the folder."""
    rid = fake.add_job(videos=[SIZE])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "sub" / "v.mp4"
    with pytest.raises(DownloadError, match="destination folder") as info:
        await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert isinstance(info.value.__cause__, OSError)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny") as mounted:
        if mounted is None:
            pytest.skip("cannot mount a 1 MiB tmpfs here")
        yield mounted


async def test_real_full_disk_is_a_clear_error(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tiny_tmpfs: Path
) -> None:
    """2 MiB announced for a real 1 MiB tmpfs: refused before a byte is written ("not
    enough free space", an ENOSPC chained), nothing under the final name, no .part left.
    (ENOSPC in the middle of a write is the test with a full Disk above.)"""
    rid = fake.add_job(videos=[2 * MIB])
    path = tiny_tmpfs / "v.mp4"
    with pytest.raises(DownloadError, match=r"not enough free space in .*: 2\.0 MiB") as info:
        await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert not path.exists()
    assert not path.with_name("v.mp4.part").exists()
    assert len(fake.requests_for("video", rid)) == 1


def test_redact_url_drops_the_query() -> None:
    """Only scheme://host/path of a signed URL is ever shown."""
    url = "https://user:pw@bucket.example.com:8443/v/a.mp4?Expires=1&Signature=abc#x"
    assert redact_url(url) == "https://bucket.example.com:8443/v/a.mp4"
    assert redact_url("http://[::1]:80/x?Signature=s") == "http://[::1]:80/x"


async def test_cancel_during_a_disk_write_never_writes_twice(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A cancellation that lands while a buffer is being written leaves .part an exact
    prefix (the buffer is written once, not again on the way out), and the rerun is whole."""
    size = 4 * MIB  # far more than arrives while the first write is held up
    rid = fake.add_job(videos=[size])
    url = await status_url(session, fake, rid)
    path = tmp_path / "v.mp4"
    writing = threading.Event()

    def slow_write(part: PartWrite, chunks: list[bytes]) -> None:
        writing.set()
        time.sleep(0.2)  # in the worker thread: the cancellation arrives now, mid-write

    writes = DiskWrites(disk=HookedDisk(slow_write))
    # Worker-thread writes of 64 KiB batches: many writes per video.
    policy = attrs.evolve(POLICY, max_loop_write=0)
    task = asyncio.create_task(fetch(session, url, path, rid=rid, policy=policy, writes=writes))
    assert await asyncio.to_thread(writing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kept = part_of(path).read_bytes()
    assert 0 < len(kept) < size
    assert kept == fake.video_bytes(rid)[: len(kept)]

    result = await fetch(session, url, path, rid=rid, policy=policy)
    assert path.read_bytes() == fake.video_bytes(rid)
    assert result.sha256 == fake.video_sha256(rid)


# --- what is on disk under the final name (issue 11) ----------------------------------------


async def test_a_foreign_file_at_the_target_is_never_the_video(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A file the library did not record as this video's, at its final name, is neither
    reported as the video nor replaced: ForeignFileError names it, and nothing is fetched."""
    rid = fake.add_job(videos=[SIZE])
    path = tmp_path / "v.mp4"
    path.write_bytes(b"my holiday video")
    url = await status_url(session, fake, rid)
    with pytest.raises(sv.ForeignFileError) as info:
        await fetch(session, url, path, rid=rid)
    assert isinstance(info.value, FileExistsError)
    assert isinstance(info.value, sv.SiliconFlowError)
    assert str(path) in str(info.value)
    assert info.value.request_id == rid
    assert path.read_bytes() == b"my holiday video"
    assert fake.requests_for("video", rid) == []


async def test_another_videos_file_at_the_target_is_foreign(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The library's complete file for one request id is not reused as another's."""
    first, second = fake.add_job(videos=[SIZE]), fake.add_job(videos=[SIZE])
    path = tmp_path / "v.mp4"
    await fetch(session, await status_url(session, fake, first), path, rid=first)
    with pytest.raises(sv.ForeignFileError):
        await fetch(session, await status_url(session, fake, second), path, rid=second)
    assert path.read_bytes() == fake.video_bytes(first)


async def test_a_truncated_final_file_is_fetched_again(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A complete file of ours whose size no longer matches its record (a power cut, a
    truncation by hand) is downloaded again, not reported whole."""
    rid = fake.add_job(videos=[SIZE])
    url = await status_url(session, fake, rid)
    path = tmp_path / "v.mp4"
    await fetch(session, url, path, rid=rid)
    with path.open("r+b") as f:
        f.truncate(SIZE // 3)
    fake.clear_log()
    again = await fetch(session, url, path, rid=rid)
    assert again.reused is False
    assert_clean_success(again, path, fake.video_bytes(rid))
    assert len(fake.requests_for("video", rid)) == 1


@contextlib.asynccontextmanager
async def loopback(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """A one-route video host on 127.0.0.1 answering /v.mp4 with ``handler``; its URL."""
    app = web.Application()
    app.router.add_get("/v.mp4", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v.mp4?Signature=s3cret"
    finally:
        await runner.cleanup()


async def test_a_gzip_encoded_body_is_saved_decoded(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A host that gzips the body despite Accept-Encoding: identity: the file on disk is
    the video, not its compressed form, and its sha256 is the video's."""
    video = os.urandom(300 * KIB) + bytes(300 * KIB)  # compressible, so the sizes differ

    async def handler(request: web.Request) -> web.Response:
        body = gzip.compress(video)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "ETag": '"g"'})

    path = tmp_path / "v.mp4"
    async with loopback(handler) as url:
        result = await fetch(session, url, path)
    assert_clean_success(result, path, video)


async def test_a_broken_gzip_body_starts_over_instead_of_resuming(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A gzip-encoded body cut off part-way is not resumed with Range (its encoded bytes
    cannot be continued): the next request fetches it whole, and the file is the video."""
    video = os.urandom(200 * KIB) + bytes(400 * KIB)
    encoded = gzip.compress(video)
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        headers = {"Content-Encoding": "gzip", "ETag": '"g"', "Accept-Ranges": "bytes"}
        if len(seen) > 1:
            return web.Response(body=encoded, headers=headers)
        resp = web.StreamResponse(headers={**headers, "Content-Length": str(len(encoded))})
        await resp.prepare(request)
        await resp.write(encoded[: len(encoded) // 2])
        assert request.transport is not None
        request.transport.close()  # the connection drops mid-body
        return resp

    path = tmp_path / "v.mp4"
    async with loopback(handler) as url:
        result = await fetch(session, url, path)
    assert_clean_success(result, path, video)
    assert seen == [None, None]


async def test_an_encoding_that_cannot_be_decoded_is_a_clear_error(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A body in an encoding the library cannot decode is a DownloadError that names it,
    never a file of encoded bytes under the final name."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"\x1b\x00compressed", headers={"Content-Encoding": "br"})

    path = tmp_path / "v.mp4"
    async with loopback(handler) as url:
        with pytest.raises(DownloadError, match="'br'") as info:
            await fetch(session, url, path)
    assert not path.exists()
    assert_no_credentials(str(info.value))


@pytest.mark.parametrize("status", [429, 503])
async def test_the_video_hosts_retry_after_is_honoured(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    """A 429 or 503 from the video host with Retry-After: the next try waits that long
    (not the policy's millisecond backoff), and the download completes."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", ErrorResponse(status, "busy", headers={"Retry-After": "0.3"}))
    path = tmp_path / "v.mp4"
    with caplog.at_level(logging.DEBUG, logger="siliconflow_video"):
        result = await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    assert_clean_success(result, path, fake.video_bytes(rid))
    (retry,) = [r.getMessage() for r in caplog.records if "try 2 of" in r.getMessage()]
    assert "in 0.30 s" in retry


async def test_a_huge_retry_after_from_the_video_host_is_capped(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retry-After: 3600 from the video host waits no longer than max_retry_after."""
    rid = fake.add_job(videos=[SIZE])
    fake.add_fault("video", rate_limited(retry_after=3600))
    path = tmp_path / "v.mp4"
    policy = attrs.evolve(POLICY, max_retry_after=0.2)
    with caplog.at_level(logging.DEBUG, logger="siliconflow_video"):
        url = await status_url(session, fake, rid)
        result = await fetch(session, url, path, rid=rid, policy=policy)
    assert_clean_success(result, path, fake.video_bytes(rid))
    (retry,) = [r.getMessage() for r in caplog.records if "try 2 of" in r.getMessage()]
    assert "in 0.20 s" in retry


@pytest.mark.parametrize("refused", ["404", "expired"])
async def test_nothing_is_left_behind_when_nothing_arrived(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path, refused: str
) -> None:
    """A download that fails before its first byte (a 404, an expired URL with no fresh
    one) leaves no empty .part and no sidecar behind."""
    rid = fake.add_job(videos=[SIZE])
    url = await status_url(session, fake, rid)
    if refused == "404":
        fake.add_fault("video", not_found(), times=None)
    else:
        fake.expire_urls()
    path = tmp_path / "v.mp4"
    with pytest.raises(DownloadError):
        await fetch(session, url, path, rid=rid)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


async def test_an_html_error_page_becomes_one_short_line(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 404 whose body is a whole HTML page gives an error of one short line that says
    404 and what the page is titled, without the page's markup."""
    rid = fake.add_job(videos=[SIZE])
    page = (
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title><style>body{}</style>"
        "</head>\n<body>" + "<p>Sorry, nothing here.</p>\n" * 200 + "</body></html>"
    )
    fake.add_fault("video", ErrorResponse(404, page, content_type="text/html"), times=None)
    path = tmp_path / "v.mp4"
    with pytest.raises(DownloadError) as info:
        await fetch(session, await status_url(session, fake, rid), path, rid=rid)
    message = str(info.value)
    assert "\n" not in message
    assert "<" not in message
    assert "404 Not Found" in message
    assert len(message) < 300
