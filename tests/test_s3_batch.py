"""``s3://BUCKET/PREFIX`` destinations end to end: the pipeline, the journal and the CLI.

The API and the video host are FakeSiliconFlow over real HTTP on loopback; the store is a
real SeaweedFS (tests/_seaweed.py). Nothing in aiohttp or botocore is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from siliconflow_video import (
    AsyncClient,
    DownloadError,
    InvalidDestinationError,
    JournalError,
    Outcome,
    S3Settings,
    StoredVideo,
    UnsafeFileNameError,
    open_journal,
    read_jobs,
    wait_and_download,
)
from siliconflow_video._sinks import MIN_PART_SIZE
from siliconflow_video.testing import DropMidBody, FakeSiliconFlow, SlowBody, not_found

from . import _postgres, _seaweed
from ._seaweed import BUCKET, WRITER_KEY, WRITER_SECRET, Seaweed
from .conftest import child_env, make_client, reaped, wait_until
from .test_cli import json_lines

MiB = 1024 * 1024
PART = MIN_PART_SIZE
KEY = "sk-s3-batch-test-0123456789"

# The fixtures of a real PostgreSQL (tests/_postgres.py), used by name.
postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url


@pytest.fixture(scope="session")
def seaweed(request: pytest.FixtureRequest) -> Seaweed:
    return _seaweed.shared(request)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """One key prefix per test: no test sees another's objects or uploads."""
    return f"batch/{request.node.name.replace('[', '-').rstrip(']')}"


def settings(seaweed: Seaweed) -> S3Settings:
    return S3Settings(
        endpoint_url=seaweed.endpoint_url,
        region="us-east-1",
        addressing_style="path",
        access_key_id=WRITER_KEY,
        secret_access_key=WRITER_SECRET,
        max_attempts=2,
        part_size=PART,
    )


def aws_env(seaweed: Seaweed, **extra: str) -> dict[str, str]:
    """A child's environment with the store given the standard AWS way, as boto reads it."""
    env = child_env()
    env.update(
        AWS_ENDPOINT_URL=seaweed.endpoint_url,
        AWS_ACCESS_KEY_ID=WRITER_KEY,
        AWS_SECRET_ACCESS_KEY=WRITER_SECRET,
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    env.pop("AWS_PROFILE", None)
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def object_bytes(seaweed: Seaweed, key: str) -> bytes:
    body: bytes = seaweed.admin_client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def object_keys(seaweed: Seaweed, prefix: str) -> list[str]:
    listed = seaweed.admin_client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def open_uploads(seaweed: Seaweed, prefix: str) -> list[str]:
    listed = seaweed.admin_client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/")
    return [u["Key"] for u in listed.get("Uploads", [])]


def stored(outcome: Outcome) -> list[StoredVideo]:
    files = [f for f in outcome.files if isinstance(f, StoredVideo)]
    assert len(files) == len(outcome.files), outcome.files
    return files


async def test_batch_into_s3_byte_for_byte(
    fake: FakeSiliconFlow,
    seaweed: Seaweed,
    prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every video of every job becomes PREFIX/{requestId}_{index}.mp4 in the bucket, byte
    for byte (multi-part and single-part), reported as objects; no upload is left open,
    and the secret is in no repr and no log line."""
    caplog.set_level(logging.DEBUG)
    a = fake.add_job(videos=[2 * PART + 12_345, 1000])
    b = fake.add_job(queue_seconds=0.2, videos=[70_000])
    async with make_client(fake, s3=settings(seaweed), journal=tmp_path / "j") as client:
        outcomes = await client.wait_and_download([a, b], f"s3://{BUCKET}/{prefix}")
        assert WRITER_SECRET not in repr(client) + repr(client.s3_settings) + repr(outcomes)
    assert [o.ok for o in outcomes] == [True, True], [o.error for o in outcomes]
    for outcome, sizes in zip(outcomes, ([2 * PART + 12_345, 1000], [70_000]), strict=True):
        rid = outcome.request_id
        files = stored(outcome)
        assert [f.size for f in files] == sizes
        assert outcome.paths == []
        for f in files:
            assert f.key == f"{prefix}/{rid}_{f.index}.mp4"
            assert f.location == f"s3://{BUCKET}/{f.key}"
            assert not f.reused
            assert object_bytes(seaweed, f.key) == fake.video_bytes(rid, f.index)
    assert outcomes[0].locations == [f.location for f in outcomes[0].files]
    assert open_uploads(seaweed, prefix) == []
    assert "uploaded part" in caplog.text  # the log was on
    assert WRITER_SECRET not in caplog.text
    jobs = {j.request_id: j for j in read_jobs(tmp_path / "j")}
    assert jobs[a].state == "done"
    assert jobs[a].dest == f"s3://{BUCKET}/{prefix}/"
    assert jobs[a].paths == [
        f"s3://{BUCKET}/{prefix}/{a}_0.mp4",
        f"s3://{BUCKET}/{prefix}/{a}_1.mp4",
    ]


async def test_rerun_reuses_the_objects(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """A rerun sends nothing: with the journal, no status call and no video request (the
    store is asked whether the objects are still there); without one, the status call
    only, and the objects found whole in the bucket are reused."""
    rid = fake.add_job(videos=[PART + 1, 500])
    dest = f"s3://{BUCKET}/{prefix}"
    s3 = settings(seaweed)
    async with make_client(fake, s3=s3, journal=tmp_path / "j") as client:
        [first] = await client.wait_and_download([rid], dest)
    assert first.ok, first.error
    fake.clear_log()
    async with make_client(fake, s3=s3, journal=tmp_path / "j") as client:
        [again] = await client.wait_and_download([rid], dest)
    assert again.ok, again.error
    assert [f.reused for f in stored(again)] == [True, True]
    assert [f.location for f in again.files] == [f.location for f in first.files]
    assert fake.requests_for("video") == []
    assert fake.requests_for("status") == []
    async with make_client(fake, s3=s3) as client:  # no journal: the bucket says
        [bare] = await client.wait_and_download([rid], dest)
    assert bare.ok, bare.error
    assert [(f.reused, f.size) for f in stored(bare)] == [(True, PART + 1), (True, 500)]
    assert fake.requests_for("video") == []


async def test_a_deleted_object_is_uploaded_again(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """An object the journal recorded but that is gone since is fetched and stored again."""
    rid = fake.add_job(videos=[1234])
    dest = f"s3://{BUCKET}/{prefix}"
    async with make_client(fake, s3=settings(seaweed), journal=tmp_path / "j") as client:
        [first] = await client.wait_and_download([rid], dest)
        seaweed.admin_client().delete_object(Bucket=BUCKET, Key=stored(first)[0].key)
        [again] = await client.wait_and_download([rid], dest)
    assert again.ok, again.error
    assert not stored(again)[0].reused
    assert object_bytes(seaweed, stored(again)[0].key) == fake.video_bytes(rid)


async def test_naming_clash_and_unsafe_names(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str
) -> None:
    """The naming function's names go under PREFIX/ as they are; two videos given one name
    fail the second id (nothing overwritten), and a name that is not one plain component
    is refused before any byte."""
    a = fake.add_job(videos=[100])
    b = fake.add_job(queue_seconds=0.3, videos=[200])
    dest = f"s3://{BUCKET}/{prefix}"
    async with make_client(fake, s3=settings(seaweed)) as client:
        first, second = await client.wait_and_download(
            [a, b], dest, naming=lambda rid, i, url: "same.mp4"
        )
        assert first.ok, first.error
        assert [f.location for f in first.files] == [f"{dest}/same.mp4"]
        assert isinstance(second.error, UnsafeFileNameError)
        assert object_bytes(seaweed, f"{prefix}/same.mp4") == fake.video_bytes(a)
        c = fake.add_job(videos=[10])
        [bad] = await client.wait_and_download([c], dest, naming=lambda rid, i, url: "../up.mp4")
    assert isinstance(bad.error, UnsafeFileNameError)
    assert object_keys(seaweed, prefix) == [f"{prefix}/same.mp4"]


async def test_bad_destinations_fail_before_any_wait(fake: FakeSiliconFlow) -> None:
    """A malformed s3:// URL (or another scheme) is an InvalidDestinationError at the
    call, before any status request."""
    async with make_client(fake) as client:
        for dest in ("s3://Bad_Bucket/x", "s3://videos//x", "s3://key:secret@videos/x", "gs://b/x"):
            with pytest.raises(InvalidDestinationError) as caught:
                await client.wait_and_download(["any"], dest)
            assert "secret" not in str(caught.value)
    assert fake.requests_for("status") == []


async def test_give_up_aborts_the_upload(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """A video the host stops serving for good (404 after a part was uploaded) fails its
    id: the multipart upload is aborted, no object appears, the journal keeps no upload."""
    rid = fake.add_job(videos=[PART + 50_000])
    fake.add_fault("video", DropMidBody(PART + 1000), times=1)
    fake.add_fault("video", not_found(), times=None)
    async with make_client(fake, s3=settings(seaweed), journal=tmp_path / "j") as client:
        [outcome] = await client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}")
        journal = await client.journal()
        assert journal is not None
        assert await journal.upload_state(rid, 0) is None
    assert isinstance(outcome.error, DownloadError), outcome.error
    assert outcome.files == ()
    assert open_uploads(seaweed, prefix) == []
    assert object_keys(seaweed, prefix) == []
    assert read_jobs(tmp_path / "j")[0].state == "failed"


async def test_download_as_completed_and_submit_take_s3(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """``submit(dest="s3://...")`` records the bucket for ``resume``, which uploads there;
    ``download_as_completed`` yields objects too."""
    dest = f"s3://{BUCKET}/{prefix}"
    async with make_client(fake, s3=settings(seaweed), journal=tmp_path / "j") as client:
        rid = await client.submit(model="Wan-AI/Wan2.2-T2V-A14B", prompt="a cat", dest=dest)
        [resumed] = await client.resume()
        assert resumed.ok, resumed.error
        assert [f.location for f in resumed.files] == [f"{dest}/{rid}_0.mp4"]
        other = fake.add_job(videos=[3000])
        seen = [o async for o in client.download_as_completed([other], dest)]
    assert [stored(o)[0].size for o in seen] == [3000]
    assert object_bytes(seaweed, f"{prefix}/{other}_0.mp4") == fake.video_bytes(other)


async def test_top_level_function_takes_s3_settings(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str
) -> None:
    """``wait_and_download(ids, "s3://...", s3=S3Settings(...))`` uploads the videos."""
    rid = fake.add_job(videos=[4096])
    [outcome] = await wait_and_download(
        [rid],
        f"s3://{BUCKET}/{prefix}",
        api_key=fake.api_key,
        base_url=fake.base_url,
        poll_interval=0.05,
        s3=settings(seaweed),
    )
    assert outcome.ok, outcome.error
    assert object_bytes(seaweed, f"{prefix}/{rid}_0.mp4") == fake.video_bytes(rid)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_journal_keeps_upload_states_per_video(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Both journals keep one upload state per job and video, replaced on each save and
    gone once cleared; another job's or video's is untouched."""
    where = request.getfixturevalue("pg_url") if backend == "postgres" else tmp_path / "j"
    async with open_journal(where) as journal:
        await journal.accept(["job-a", "job:b"], dest=tmp_path)
        assert await journal.upload_state("job-a", 0) is None
        await journal.save_upload_state("job-a", 0, '{"n": 1}')
        await journal.save_upload_state("job-a", 0, '{"n": 2}')
        await journal.save_upload_state("job-a", 1, '{"n": 3}')
        await journal.save_upload_state("job:b", 0, '{"n": 4}')
    async with open_journal(where) as journal:
        assert await journal.upload_state("job-a", 0) == '{"n": 2}'
        await journal.save_upload_state("job-a", 0, None)
        assert await journal.upload_state("job-a", 0) is None
        assert await journal.upload_state("job-a", 1) == '{"n": 3}'
        assert await journal.upload_state("job:b", 0) == '{"n": 4}'
        await journal.save_upload_state("job-a", 0, None)  # forgetting twice is no error


async def test_cancelled_upload_is_continued_by_another_client_through_postgres(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str, pg_url: str
) -> None:
    """A batch cancelled mid-upload (as a worker stopped) leaves its upload open and
    recorded in a PostgreSQL journal; another client then asks the video host from the
    next part boundary and completes that same upload."""
    size = 3 * PART + 999
    rid = fake.add_job(videos=[size])
    fake.add_fault("video", SlowBody(4 * MiB), times=1, request_id=rid)
    dest = f"s3://{BUCKET}/{prefix}"
    async with make_client(fake, s3=settings(seaweed), journal=pg_url) as first:
        journal = await first.journal()
        assert journal is not None
        task = asyncio.create_task(first.wait_and_download([rid], dest))
        while (kept := await journal.upload_state(rid, 0)) is None or not json.loads(kept)["parts"]:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert open_uploads(seaweed, prefix) != []
    fake.clear_log()
    async with make_client(fake, s3=settings(seaweed), journal=pg_url) as second:
        [outcome] = await second.wait_and_download([rid], dest)
        journal = await second.journal()
        assert journal is not None
        assert await journal.upload_state(rid, 0) is None
    assert outcome.ok, outcome.error
    # The cancelled request may be logged after clear_log (when its response ends): the
    # second client's requests are those after its status call.
    began = fake.requests_for("status", rid)[0].time
    [first_range, *_] = [
        r.headers.get("Range") or "" for r in fake.requests_for("video", rid) if r.time > began
    ]
    start = int(first_range.removeprefix("bytes=").split("-")[0] or 0)
    assert start > 0, first_range
    assert start % PART == 0, first_range
    assert object_bytes(seaweed, f"{prefix}/{rid}_0.mp4") == fake.video_bytes(rid)
    assert open_uploads(seaweed, prefix) == []


# --- a process killed mid-upload, then resume -----------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=7)
    with fake.run_in_thread():
        yield fake


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from siliconflow_video import wait_and_download
    rid, dest, journal, api, base = sys.argv[1:]
    asyncio.run(wait_and_download([rid], dest, api_key=api, base_url=base,
                                  journal=journal, poll_interval=0.05))
    """
)


def recorded_parts(journal: Path, rid: str) -> int:
    """How many parts the journal records for the video's upload (0: none yet)."""

    async def read() -> int:
        try:
            async with open_journal(journal, read_only=True) as j:
                kept = await j.upload_state(rid, 0)
        except JournalError:  # the child is still creating it
            return 0
        return 0 if kept is None else len(json.loads(kept)["parts"])

    return asyncio.run(read())


def test_killed_mid_upload_resume_continues_from_the_recorded_parts(
    server: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL while a video is being uploaded (parts recorded in the journal), then
    ``resume``: the video host is asked from a part boundary past 0, the same multipart
    upload is completed, the object is whole and no upload is left open."""
    part = 8 * MiB  # the default part size: the child takes its settings from AWS_* only
    size = 3 * part + 777
    rid = server.add_job(videos=[size])
    server.add_fault("video", SlowBody(6 * MiB), times=1, request_id=rid)
    journal = tmp_path / "j"
    dest = f"s3://{BUCKET}/{prefix}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, rid, dest, str(journal), KEY, server.base_url],
        env=aws_env(seaweed),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(proc):
        wait_until(
            lambda: (
                (journal.exists() and recorded_parts(journal, rid) >= 1) or proc.poll() is not None
            ),
            60,
            "a part recorded in the journal",
        )
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert open_uploads(seaweed, prefix) != [], "the kill should leave the upload open"
    assert object_keys(seaweed, prefix) == [], "nothing may be visible before it is whole"
    server.clear_log()

    async def resume() -> list[Outcome]:
        async with AsyncClient(
            KEY, server.base_url, journal=journal, poll_interval=0.05, s3=settings(seaweed)
        ) as client:
            return await client.resume()

    [outcome] = asyncio.run(resume())
    assert outcome.ok, outcome.error
    [video] = stored(outcome)
    assert (video.size, video.reused) == (size, False)
    # The killed child's request may be logged after clear_log (when the server notices
    # the reset): resume's requests are those after its status call.
    began = server.requests_for("status", rid)[0].time
    ranges = [
        r.headers.get("Range") or "" for r in server.requests_for("video", rid) if r.time > began
    ]
    assert ranges, "resume fetched nothing"
    start = int(ranges[0].removeprefix("bytes=").split("-")[0] or 0)
    assert start > 0, ranges
    assert start % part == 0, ranges
    assert object_bytes(seaweed, video.key) == server.video_bytes(rid)
    assert open_uploads(seaweed, prefix) == []
    assert recorded_parts(journal, rid) == 0  # cleared once the video is done


# --- the command line ----------------------------------------------------------------------


def run_cli(
    args: list[str], env: dict[str, str], *prelude: str
) -> subprocess.CompletedProcess[str]:
    code = "; ".join(
        [*prelude, "import sys", "from siliconflow_video._cli import main", "sys.exit(main())"]
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_download_and_enqueue_into_s3(
    server: FakeSiliconFlow, seaweed: Seaweed, prefix: str, tmp_path: Path
) -> None:
    """``download ID -o s3://...`` uploads and prints the object's location (text and
    JSON); ``enqueue -o s3://... --journal F`` then ``resume --journal F`` uploads there."""
    env = aws_env(seaweed, SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=server.base_url)
    dest = f"s3://{BUCKET}/{prefix}"
    a = server.add_job(videos=[5000])
    done = run_cli(["download", a, "-o", dest, "-q"], env)
    assert done.returncode == 0, done.stderr
    assert f"{dest}/{a}_0.mp4" in done.stdout
    again = run_cli(["download", a, "-o", dest, "--json", "-q"], env)
    assert again.returncode == 0, again.stderr
    [row] = json_lines(again.stdout)
    assert row["paths"] == [f"{dest}/{a}_0.mp4"]
    assert row["files"][0]["reused"] is True
    assert WRITER_SECRET not in done.stdout + done.stderr + again.stdout + again.stderr

    b = server.add_job(videos=[6000])
    journal = tmp_path / "jobs.journal"
    queued = run_cli(["enqueue", b, "-o", dest, "--journal", str(journal), "--json"], env)
    assert queued.returncode == 0, queued.stderr
    assert json_lines(queued.stdout)[0]["dest"] == f"{dest}/"
    resumed = run_cli(["resume", "--journal", str(journal), "--json", "-q"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert json_lines(resumed.stdout)[0]["paths"] == [f"{dest}/{b}_0.mp4"]
    assert object_bytes(seaweed, f"{prefix}/{b}_0.mp4") == server.video_bytes(b)


def test_cli_without_the_s3_extra_says_so(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """Without aiobotocore, ``download -o s3://...`` is one line naming the extra, exit 2,
    before any request."""
    env = child_env()
    env.update(SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=server.base_url)
    done = run_cli(
        ["download", "some-id", "-o", "s3://videos/x"],
        env,
        "import sys",
        "sys.modules['aiobotocore'] = None",  # as if it were not installed
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "siliconflow-video[s3]" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
    assert server.requests_for("status") == []
