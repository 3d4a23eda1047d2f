"""upload_video: one video URL → one S3 object, streamed, resumable, never half-visible.

The video host is FakeSiliconFlow over real HTTP on loopback and the store a real SeaweedFS
(tests/_seaweed.py); nothing in aiohttp or botocore is mocked. The retry loop is the one
download_video uses, so these tests are about what differs: parts, upload ids, aborts.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest

from siliconflow_video import DownloadError, DownloadPolicy, VideoURLExpiredError
from siliconflow_video._exceptions import (
    ForeignFileError,
    NoSuchBucketError,
    StorageUnavailableError,
)
from siliconflow_video._sinks import (
    MIN_PART_SIZE,
    S3Settings,
    S3Store,
    StoredVideo,
    UploadState,
    _upload,
    upload_video,
)
from siliconflow_video.testing import (
    DropMidBody,
    EncodedBody,
    ExpiredURL,
    FakeSiliconFlow,
    IgnoreRange,
    LoggedRequest,
    TruncatedBody,
    not_found,
    slow_down,
)

from . import _seaweed
from ._seaweed import BUCKET, WRITER_KEY, WRITER_SECRET, Seaweed

MiB = 1024 * 1024
PART = MIN_PART_SIZE  # the smallest legal part keeps the uploads small

POLICY = DownloadPolicy(
    max_attempts=5,
    base_delay=0.001,
    max_delay=0.01,
    max_retry_after=0.05,
    connect_timeout=5.0,
    read_timeout=10.0,
)


@pytest.fixture(scope="session")
def seaweed(request: pytest.FixtureRequest) -> Seaweed:
    return _seaweed.shared(request)


@pytest.fixture
async def store(seaweed: Seaweed, request: pytest.FixtureRequest) -> AsyncIterator[S3Store]:
    # One prefix per test: no test sees another's objects or uploads.
    settings = S3Settings(
        endpoint_url=seaweed.endpoint_url,
        region="us-east-1",
        addressing_style="path",
        access_key_id=WRITER_KEY,
        secret_access_key=WRITER_SECRET,
        max_attempts=2,
        part_size=PART,
    )
    async with S3Store(f"s3://{BUCKET}/{request.node.name}/", settings) as s:
        yield s


class Refresher:
    """A refresh_url that asks the fake for a fresh URL, as the client's /video/status
    call would, counting its calls; ``answer=None`` has no fresh URL to give."""

    def __init__(self, fake: FakeSiliconFlow, rid: str, *, fresh: bool = True) -> None:
        self.fake, self.rid, self.fresh = fake, rid, fresh
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        return self.fake.video_url(self.rid) if self.fresh else None


class States:
    """An on_state that keeps every state, as a journal would persist them."""

    def __init__(self) -> None:
        self.seen: list[UploadState] = []

    async def __call__(self, state: UploadState) -> None:
        self.seen.append(state)

    @property
    def last(self) -> UploadState:
        return self.seen[-1]


async def upload(
    session: aiohttp.ClientSession,
    fake: FakeSiliconFlow,
    store: S3Store,
    rid: str,
    *,
    refresh: Refresher | None = None,
    policy: DownloadPolicy = POLICY,
    **options: Any,
) -> StoredVideo:
    """upload_video as the client would call it for video 0 of ``rid``."""
    return await upload_video(
        session,
        fake.video_url(rid),
        store,
        store.key_for(f"{rid}_0.mp4"),
        refresh_url=refresh or Refresher(fake, rid),
        policy=policy,
        request_id=rid,
        index=0,
        **options,
    )


def read_back(server: Seaweed, key: str) -> bytes:
    body: bytes = server.admin_client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def open_uploads(server: Seaweed, prefix: str) -> list[str]:
    page = server.admin_client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [u["UploadId"] for u in page.get("Uploads", [])]


def ranges(fake: FakeSiliconFlow, rid: str) -> list[str | None]:
    return [r.headers.get("Range") for r in fake.requests_for("video", rid)]


def requests_since(fake: FakeSiliconFlow, rid: str, since: float) -> list[LoggedRequest]:
    """The video requests that arrived after ``since``, in arrival order (a request cut off
    earlier is logged only when it ends, perhaps after later ones)."""
    found = [r for r in fake.requests_for("video", rid) if r.time >= since]
    return sorted(found, key=lambda r: r.time)


def range_start(header: str | None) -> int:
    assert header is not None
    assert header.startswith("bytes=")
    assert header.endswith("-")
    return int(header[len("bytes=") : -1])


def assert_stored(result: StoredVideo, store: S3Store, seaweed: Seaweed, expected: bytes) -> None:
    """The object is there, byte for byte, and no upload is left open under the prefix."""
    assert (result.bucket, result.size, result.reused) == (BUCKET, len(expected), False)
    assert result.url == f"s3://{BUCKET}/{result.key}"
    assert read_back(seaweed, result.key) == expected
    assert open_uploads(seaweed, store.target.prefix) == []


@pytest.mark.slow
async def test_a_multipart_video_is_byte_exact(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A video of two parts and a tail arrives whole; on_state hears of the upload and its
    validator before the first part, then of each part; progress ends at the size."""
    size = 2 * PART + 12345
    rid = fake.add_job(videos=[size])
    states = States()
    progress: list[tuple[int, int | None]] = []
    result = await upload(
        session,
        fake,
        store,
        rid,
        on_state=states,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert_stored(result, store, seaweed, fake.video_bytes(rid))
    assert result.key == store.key_for(f"{rid}_0.mp4")
    first = states.seen[0]
    assert first.parts == ()
    assert first.etag is not None
    assert first.total == size
    assert len({s.upload_id for s in states.seen}) == 1
    assert [len(s.parts) for s in states.seen] == [0, 1, 2, 3]
    assert [p.size for p in states.last.parts] == [PART, PART, 12345]
    assert progress[-1] == (size, size)
    assert ranges(fake, rid) == [None]


@pytest.mark.slow
async def test_a_drop_mid_body_resumes_with_range(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A connection reset after the first part resumes with Range (and If-Range) after the
    bytes the upload already holds, not from 0, and in the same upload."""
    rid = fake.add_job(videos=[2 * PART + 777])
    fake.add_fault("video", DropMidBody(PART + 4096), times=1)
    states = States()
    result = await upload(session, fake, store, rid, on_state=states)
    assert_stored(result, store, seaweed, fake.video_bytes(rid))
    first, second = fake.requests_for("video", rid)
    assert first.headers.get("Range") is None
    assert PART <= range_start(second.headers.get("Range")) <= PART + 4096
    assert second.headers.get("If-Range") == states.seen[0].etag
    assert second.status == 206
    assert len({s.upload_id for s in states.seen}) == 1


@pytest.mark.slow
async def test_a_crash_resumes_from_the_recorded_state_without_resending_parts(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A transfer cancelled after two parts leaves its upload open; a new call given the
    last recorded UploadState asks list_parts, fetches from that part boundary and sends
    only the parts that were missing."""
    size = 4 * PART + 999
    rid = fake.add_job(videos=[size])
    states = States()
    task: asyncio.Task[StoredVideo] | None = None

    async def crash_after_two_parts(state: UploadState) -> None:
        await states(state)
        if len(state.parts) == 2 and task is not None:
            task.cancel()  # the "crash": no abort, no cleanup of the upload

    task = asyncio.create_task(upload(session, fake, store, rid, on_state=crash_after_two_parts))
    with pytest.raises(asyncio.CancelledError):
        await task
    recorded = states.last
    assert len(recorded.parts) == 2
    assert open_uploads(seaweed, store.target.prefix) == [recorded.upload_id]
    assert await store.object_size(store.key_for(f"{rid}_0.mp4")) is None

    resumed_at = time.monotonic()
    again = States()
    result = await upload(session, fake, store, rid, resume=recorded, on_state=again)
    assert_stored(result, store, seaweed, fake.video_bytes(rid))
    (request,) = requests_since(fake, rid, resumed_at)
    start = range_start(request.headers.get("Range"))
    # From a part boundary: the two recorded parts, or a third the store took meanwhile.
    assert start % PART == 0
    assert start >= 2 * PART
    assert request.headers.get("If-Range") == recorded.etag
    assert {s.upload_id for s in again.seen} == {recorded.upload_id}
    kept = again.seen[0].parts
    assert kept[:2] == recorded.parts  # the same parts, same ETags: not sent again
    assert [p.number for p in again.last.parts] == [1, 2, 3, 4, 5]


@pytest.mark.slow
async def test_a_resume_whose_source_changed_starts_over(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A host that ignores If-Range and answers 206 with another ETag is caught by our own
    comparison: the upload restarts from byte 0 (a new upload id, the old one aborted)."""
    rid = fake.add_job(videos=[2 * PART + 5])
    states = States()
    task: asyncio.Task[StoredVideo] | None = None

    async def crash_after_one_part(state: UploadState) -> None:
        await states(state)
        if len(state.parts) == 1 and task is not None:
            task.cancel()

    task = asyncio.create_task(upload(session, fake, store, rid, on_state=crash_after_one_part))
    with pytest.raises(asyncio.CancelledError):
        await task
    # A weak ETag is never sent as If-Range: Last-Modified (which matches) is, so the fake
    # answers 206 with its real ETag, which is not the recorded one.
    stale = attrs.evolve(states.last, etag='W/"an-older-video"')
    resumed_at = time.monotonic()
    again = States()
    result = await upload(session, fake, store, rid, resume=stale, on_state=again)
    assert_stored(result, store, seaweed, fake.video_bytes(rid))
    resumed, fresh = requests_since(fake, rid, resumed_at)
    assert (resumed.status, resumed.headers.get("If-Range")) == (206, stale.last_modified)
    assert fresh.headers.get("Range") is None
    assert again.last.upload_id != stale.upload_id


@pytest.mark.slow
async def test_a_host_ignoring_range_restarts_the_upload(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A 200 with the whole body to a Range request restarts the upload cleanly: a new
    upload id, the old one aborted, the object exact."""
    rid = fake.add_job(videos=[2 * PART + 3])
    fake.add_fault("video", DropMidBody(PART + 100), times=1)
    fake.add_fault("video", IgnoreRange(), times=1)
    states = States()
    result = await upload(session, fake, store, rid, on_state=states)
    assert_stored(result, store, seaweed, fake.video_bytes(rid))
    _, second = fake.requests_for("video", rid)
    assert second.headers.get("Range") is not None
    assert second.status == 200
    assert len({s.upload_id for s in states.seen}) == 2


async def test_an_expired_url_is_refreshed(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """An expired URL mid-transfer is swapped for a fresh one, and the transfer goes on
    from where it was; a 503 SlowDown with Retry-After is waited out on the way."""
    rid = fake.add_job(videos=[PART + 2000])
    fake.add_fault("video", TruncatedBody(PART + 10), times=1)
    fake.add_fault("video", ExpiredURL(), times=1)
    fake.add_fault("video", slow_down(retry_after=0.01), times=1)
    refresh = Refresher(fake, rid)
    result = await upload(session, fake, store, rid, refresh=refresh)
    assert_stored(result, store, seaweed, fake.video_bytes(rid))
    assert refresh.calls == 1
    statuses = [r.status for r in fake.requests_for("video", rid)]
    assert statuses == [200, 403, 503, 206]


async def test_a_gzip_body_is_decoded_into_the_object(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A body the host gzipped anyway is stored decoded: the object is the video."""
    rid = fake.add_job(videos=[PART + 321])
    fake.add_fault("video", EncodedBody("gzip"), times=1)
    result = await upload(session, fake, store, rid)
    assert_stored(result, store, seaweed, fake.video_bytes(rid))


async def test_an_empty_video_is_an_empty_object(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A 0-byte video becomes a 0-byte object, and no upload stays open."""
    rid = fake.add_job(videos=[b""])
    result = await upload(session, fake, store, rid)
    assert_stored(result, store, seaweed, b"")


@pytest.mark.parametrize("failure", ["fatal", "tries", "expired"])
async def test_an_abandoned_transfer_aborts_its_upload(
    fake: FakeSiliconFlow,
    session: aiohttp.ClientSession,
    store: S3Store,
    seaweed: Seaweed,
    failure: str,
) -> None:
    """A 404, tries used up, or an expired URL with no fresh one, after a part filled: the
    error is the download's, the upload is aborted and nothing is visible."""
    rid = fake.add_job(videos=[PART + 50_000])
    fake.add_fault("video", DropMidBody(PART + 1000), times=1)
    if failure == "fatal":
        fake.add_fault("video", not_found(), times=1)
    elif failure == "tries":
        fake.add_fault("video", DropMidBody(10), times=None)
    else:
        fake.add_fault("video", ExpiredURL(), times=None)
    states = States()
    expected = VideoURLExpiredError if failure == "expired" else DownloadError
    with pytest.raises(expected) as caught:
        await upload(
            session,
            fake,
            store,
            rid,
            refresh=Refresher(fake, rid, fresh=False),
            policy=attrs.evolve(POLICY, max_attempts=3),
            on_state=states,
        )
    assert caught.value.path == f"s3://{BUCKET}/{store.key_for(f'{rid}_0.mp4')}"
    assert caught.value.request_id == rid
    if failure != "fatal":  # a refusal says only what the host said
        assert "multipart upload of the" in str(caught.value)
        assert "is aborted" in str(caught.value)
    assert states.seen  # an upload had been opened (its first part sent, or on the way)
    assert open_uploads(seaweed, store.target.prefix) == []
    assert await store.object_size(store.key_for(f"{rid}_0.mp4")) is None


async def test_a_finished_object_is_reused(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """A rerun finds the object whole (its metadata says whose video it is) and uploads
    nothing: not one request to the video host, no upload opened."""
    rid = fake.add_job(videos=[1000])
    first = await upload(session, fake, store, rid)
    fake.clear_log()
    progress: list[tuple[int, int | None]] = []
    again = await upload(
        session, fake, store, rid, on_progress=lambda d, t: progress.append((d, t))
    )
    assert (again.key, again.size, again.reused) == (first.key, 1000, True)
    assert fake.requests_for("video", rid) == []
    assert progress == [(1000, 1000)]
    assert open_uploads(seaweed, store.target.prefix) == []


async def test_a_foreign_object_is_left_alone(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """An object this library did not upload as this video is neither replaced nor taken
    for it: ForeignFileError, and the object stays as it was."""
    rid = fake.add_job(videos=[1000])
    key = store.key_for(f"{rid}_0.mp4")
    seaweed.admin_client().put_object(Bucket=BUCKET, Key=key, Body=b"mine")
    with pytest.raises(ForeignFileError):
        await upload(session, fake, store, rid)
    assert read_back(seaweed, key) == b"mine"
    assert fake.requests_for("video", rid) == []


@pytest.mark.slow
async def test_memory_stays_about_a_part(
    fake: FakeSiliconFlow, session: aiohttp.ClientSession, store: S3Store, seaweed: Seaweed
) -> None:
    """Streaming a video of four parts holds at most two parts (one filling, one being
    sent), never the video (a sanity bound, with room for aiohttp and botocore)."""
    size = 4 * PART + 1
    rid = fake.add_job(videos=[size, 1000])
    expected = fake.video_sha256(rid)  # builds the fake's content up front
    # Warm up pools and imports outside the measurement.
    await upload_video(
        session,
        fake.video_url(rid, 1),
        store,
        store.key_for("warm-up.mp4"),
        refresh_url=Refresher(fake, rid),
        policy=POLICY,
        request_id=rid,
        index=1,
    )
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = await upload(session, fake, store, rid)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == size
    print(f"peak {peak / MiB:.1f} MiB")
    assert peak < 2 * PART + 4 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert hashlib.sha256(read_back(seaweed, result.key)).hexdigest() == expected


@pytest.mark.parametrize(
    ("error", "recorded", "left_open"),
    [
        (asyncio.CancelledError(), False, True),
        (KeyboardInterrupt(), False, True),
        (StorageUnavailableError("SlowDown"), True, True),
        (StorageUnavailableError("SlowDown"), False, False),
        (NoSuchBucketError("gone"), True, False),
        (DownloadError("gave up"), True, False),
        (RuntimeError("a bug"), True, False),
    ],
)
def test_which_endings_leave_the_upload_open(
    error: BaseException, recorded: bool, left_open: bool
) -> None:
    """A cancellation (a crash) leaves the upload open; so does a store outage when
    on_state recorded its id; anything else aborts it."""
    assert _upload._resumable(error, recorded=recorded) is left_open
