"""No multipart upload is left open that nobody can resume (real SeaweedFS, real HTTP).

- a batch cancelled without a journal aborts its upload (with one, it stays for the resume:
  tests/test_s3_batch.py);
- a recorded upload of another key (the destination changed) is aborted, not continued;
- a new upload of a key first aborts that key's uploads idle for ``abandoned_after`` (what
  a killed process left), and only those.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from siliconflow_video import ConfigurationError, ForeignFileError, S3Settings
from siliconflow_video.testing import FakeSiliconFlow, SlowBody

from . import _seaweed
from ._seaweed import BUCKET, Seaweed
from .conftest import make_client
from .test_s3_batch import PART, object_bytes, open_uploads, settings

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def seaweed(request: pytest.FixtureRequest) -> Seaweed:
    return _seaweed.shared(request)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return "cleanup/" + re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)


async def uploads_under(seaweed: Seaweed, prefix: str) -> list[str]:
    return await asyncio.to_thread(open_uploads, seaweed, prefix)


async def test_cancelled_batch_without_journal_aborts_its_upload(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str
) -> None:
    """Nobody records the upload, so nobody could resume it: the cancellation aborts it."""
    rid = fake.add_job(videos=[3 * PART + 999])
    fake.add_fault("video", SlowBody(4 * MiB), times=1, request_id=rid)
    async with make_client(fake, s3=settings(seaweed)) as client:
        task = asyncio.create_task(client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}"))
        while not await uploads_under(seaweed, prefix):
            assert not task.done(), task
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await uploads_under(seaweed, prefix) == []


async def test_recorded_upload_of_another_key_is_aborted_not_continued(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """A journaled upload cut short into PREFIX/a, then the id asked into PREFIX/b: the video
    is uploaded whole into b from byte 0, and a's upload does not stay open."""
    size = 3 * PART + 999
    rid = fake.add_job(videos=[size])
    fake.add_fault("video", SlowBody(4 * MiB), times=1, request_id=rid)
    journal_path = tmp_path / "j"
    async with make_client(fake, s3=settings(seaweed), journal=journal_path) as first:
        journal = await first.journal()
        assert journal is not None
        task = asyncio.create_task(first.wait_and_download([rid], f"s3://{BUCKET}/{prefix}/a"))
        while (kept := await journal.upload_state(rid, 0)) is None or not json.loads(kept)["parts"]:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await uploads_under(seaweed, f"{prefix}/a") != []
    async with make_client(fake, s3=settings(seaweed), journal=journal_path) as second:
        [outcome] = await second.wait_and_download([rid], f"s3://{BUCKET}/{prefix}/b")
    assert outcome.ok, outcome.error
    assert outcome.locations == [f"s3://{BUCKET}/{prefix}/b/{rid}_0.mp4"]
    body = await asyncio.to_thread(object_bytes, seaweed, f"{prefix}/b/{rid}_0.mp4")
    assert body == fake.video_bytes(rid)
    assert await uploads_under(seaweed, prefix) == []
    assert json.loads(kept)["key"] == f"{prefix}/a/{rid}_0.mp4"


def _leave_upload(seaweed: Seaweed, key: str) -> str:
    """An upload of ``key`` with one part, as a process killed mid-upload leaves it."""
    admin = seaweed.admin_client()
    upload_id: str = admin.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    admin.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * PART)
    return upload_id


def _upload_ids(seaweed: Seaweed, key: str) -> list[str]:
    listed: dict[str, Any] = seaweed.admin_client().list_multipart_uploads(
        Bucket=BUCKET, Prefix=key
    )
    return [u["UploadId"] for u in listed.get("Uploads", []) if u["Key"] == key]


@pytest.mark.parametrize(("abandoned_after", "aborted"), [(0.0, True), (3600.0, False)])
async def test_a_new_upload_aborts_the_idle_ones_of_its_key(
    fake: FakeSiliconFlow,
    seaweed: Seaweed,
    prefix: str,
    abandoned_after: float,
    aborted: bool,
) -> None:
    """An upload of the key left open (as by a SIGKILL, no journal) is aborted by the next
    upload of that key once it has been idle for ``abandoned_after``; a younger one (it
    may be another process's, live) is left alone, and so is another key's."""
    rid = fake.add_job(videos=[PART + 10])
    key = f"{prefix}/{rid}_0.mp4"
    left = await asyncio.to_thread(_leave_upload, seaweed, key)
    other = await asyncio.to_thread(_leave_upload, seaweed, f"{prefix}/other.mp4")
    await asyncio.sleep(1.1)  # the store's clock has a one-second grain
    s3 = attrs.evolve(settings(seaweed), abandoned_after=abandoned_after)
    async with make_client(fake, s3=s3) as client:
        [outcome] = await client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}")
    assert outcome.ok, outcome.error
    assert await asyncio.to_thread(object_bytes, seaweed, key) == fake.video_bytes(rid)
    assert await asyncio.to_thread(_upload_ids, seaweed, key) == ([] if aborted else [left])
    assert await asyncio.to_thread(_upload_ids, seaweed, f"{prefix}/other.mp4") == [other]
    admin = seaweed.admin_client()
    for upload_id, k in ((left, key), (other, f"{prefix}/other.mp4")):
        if not aborted or k != key:
            admin.abort_multipart_upload(Bucket=BUCKET, Key=k, UploadId=upload_id)


def test_abandoned_after_is_checked() -> None:
    assert S3Settings(abandoned_after=None).abandoned_after is None
    with pytest.raises(ConfigurationError, match="abandoned_after"):
        S3Settings(abandoned_after=-1)


async def test_recorded_upload_of_an_encoded_answer_starts_over(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """A recorded upload whose parts came from an encoded answer (no validator: its bytes
    cannot be continued by a Range request) is not continued from its parts: the video
    is fetched from byte 0 into a new upload, and the recorded one is gone."""
    rid = fake.add_job(videos=[PART + 4321])
    key = f"{prefix}/{rid}_0.mp4"
    admin = seaweed.admin_client()

    def leave() -> str:
        created = admin.create_multipart_upload(Bucket=BUCKET, Key=key)
        upload_id: str = created["UploadId"]
        etag = admin.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"z" * PART
        )["ETag"]
        state = {
            "upload_id": upload_id,
            "part_size": PART,
            "etag": None,
            "last_modified": None,
            "total": None,
            "parts": [[1, etag, PART]],
            "bucket": BUCKET,
            "key": key,
            "validated": False,
        }
        left.append(json.dumps(state))
        return upload_id

    left: list[str] = []
    upload_id = await asyncio.to_thread(leave)
    journal_path = tmp_path / "j"
    async with make_client(fake, s3=settings(seaweed), journal=journal_path) as client:
        journal = await client.journal()
        assert journal is not None
        await journal.accept([rid], dest=f"s3://{BUCKET}/{prefix}")
        await journal.save_upload_state(rid, 0, left[0])
        [outcome] = await client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}")
    assert outcome.ok, outcome.error
    assert [r.headers.get("Range") for r in fake.requests_for("video", rid)] == [None]
    assert await asyncio.to_thread(object_bytes, seaweed, key) == fake.video_bytes(rid)
    assert upload_id not in await asyncio.to_thread(_upload_ids, seaweed, key)


@pytest.mark.parametrize("ours", [True, False])
async def test_recorded_upload_is_aborted_when_an_object_is_already_there(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path, ours: bool
) -> None:
    """A recorded upload of a key that already holds an object: this video whole (another
    process finished it: reused) or a foreign one (the id fails). Either way the record is
    dropped, and so the recorded upload is aborted rather than left open for nobody."""
    rid = fake.add_job(videos=[PART + 77])
    key = f"{prefix}/{rid}_0.mp4"
    admin = seaweed.admin_client()
    meta = {"siliconflow-request-id": rid, "siliconflow-index": "0"} if ours else {}

    def prepare() -> str:
        admin.put_object(Bucket=BUCKET, Key=key, Body=fake.video_bytes(rid), Metadata=meta)
        return _leave_upload(seaweed, key)

    upload_id = await asyncio.to_thread(prepare)
    state = {"upload_id": upload_id, "part_size": PART, "etag": None, "last_modified": None}
    state |= {"total": None, "parts": [], "bucket": BUCKET, "key": key}
    async with make_client(fake, s3=settings(seaweed), journal=tmp_path / "j") as client:
        journal = await client.journal()
        assert journal is not None
        await journal.accept([rid], dest=f"s3://{BUCKET}/{prefix}")
        await journal.save_upload_state(rid, 0, json.dumps(state))
        [outcome] = await client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}")
        assert await journal.upload_state(rid, 0) is None
    if ours:
        assert outcome.ok, outcome.error
        assert [f.reused for f in outcome.files] == [True]
    else:
        assert isinstance(outcome.error, ForeignFileError), outcome.error
    assert await asyncio.to_thread(_upload_ids, seaweed, key) == []


@pytest.mark.parametrize("rid", ["vidé-1", " a b%c "])
async def test_any_request_id_is_uploaded_and_reused(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, rid: str
) -> None:
    """S3 metadata takes only ASCII and trims spaces: an id with other characters is still
    uploaded (not refused by the store), and a rerun still knows the object as its own."""
    fake.add_job(rid, videos=[1000])
    dest = f"s3://{BUCKET}/{prefix}"
    async with make_client(fake, s3=settings(seaweed)) as client:
        [first] = await client.wait_and_download([rid], dest)
        [again] = await client.wait_and_download([rid], dest)
    assert first.ok, first.error
    assert again.ok, again.error
    assert [f.reused for f in (*first.files, *again.files)] == [False, True]


async def test_a_folder_rerun_does_not_ask_the_bucket_an_id_went_to(
    fake: FakeSiliconFlow,
    seaweed: Seaweed,
    prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An id journaled as done in a bucket, then asked into a folder: it is fetched there
    without a word to the store (which may be out of reach now), as for another folder."""
    rid = fake.add_job(videos=[1000])
    journal_path = tmp_path / "j"
    async with make_client(fake, s3=settings(seaweed), journal=journal_path) as client:
        [first] = await client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}")
    assert first.ok, first.error
    unreachable = attrs.evolve(
        settings(seaweed), endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout=0.5
    )
    caplog.set_level(logging.WARNING)
    async with make_client(fake, s3=unreachable, journal=journal_path) as client:
        [again] = await client.wait_and_download([rid], tmp_path / "v")
    assert again.ok, again.error
    assert (tmp_path / "v" / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
    assert [r.getMessage() for r in caplog.records if "could not check" in r.getMessage()] == []
