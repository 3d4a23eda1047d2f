"""download_as_completed: each id's outcome the moment it is finished, one pipeline for all
ids, and a clean stop when the caller leaves the loop early."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import siliconflow_video as sv
from siliconflow_video.testing import FakeSiliconFlow, SlowBody

from .conftest import make_client


async def test_outcomes_come_in_the_order_the_ids_finish(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A job that finishes is yielded, its video on disk, while a slower one still runs."""
    slow = fake.add_job(queue_seconds=3600)
    quick = fake.add_job(run_seconds=0.1, videos=[20_000])
    async with make_client(fake) as client:
        stream = client.download_as_completed([slow, quick], tmp_path)
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            assert fake.jobs[slow].status() == "InQueue"
    assert first.request_id == quick
    assert first.ok
    assert first.paths[0].read_bytes() == fake.video_bytes(quick)


async def test_every_id_comes_once_with_the_same_outcomes_as_wait_and_download(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Each distinct id is yielded once; wait_and_download gives the same, in the order given."""
    good = fake.add_job(run_seconds=0.2, videos=[1000, 2000])
    failed = fake.add_job(run_seconds=0.1, outcome="Failed", reason="nsfw")
    async with make_client(fake) as client:
        streamed = [o async for o in client.download_as_completed([good, failed, good], tmp_path)]
        listed = await client.wait_and_download([good, failed, good], tmp_path)
    assert sorted(o.request_id for o in streamed) == sorted([good, failed])
    by_id = {o.request_id: o for o in streamed}
    assert [o.request_id for o in listed] == [good, failed, good]
    assert listed[0].paths == by_id[good].paths
    assert [f.reused for f in listed[0].files] == [True, True]
    assert isinstance(by_id[failed].error, sv.JobFailedError)
    assert isinstance(listed[1].error, sv.JobFailedError)


async def test_one_status_stream_serves_every_id(fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """A job that succeeds at once costs one status call, not one more per id to download."""
    ids = [fake.add_job(videos=[100]) for _ in range(5)]
    async with make_client(fake) as client:
        outcomes = [o async for o in client.download_as_completed(ids, tmp_path)]
    assert all(o.ok for o in outcomes)
    for rid in ids:
        assert len(fake.requests_for("status", rid)) == 1


async def test_two_ids_cannot_share_a_file_name(fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """A naming function giving two ids one name fails the second id, not the first's file."""
    first = fake.add_job(videos=[b"first"])
    second = fake.add_job(run_seconds=0.3, videos=[b"second"])
    async with make_client(fake) as client:
        outcomes = {
            o.request_id: o
            async for o in client.download_as_completed(
                [first, second], tmp_path, naming=lambda rid, i, url: "same.mp4"
            )
        }
    assert outcomes[first].ok
    assert isinstance(outcomes[second].error, sv.UnsafeFileNameError)
    assert (tmp_path / "same.mp4").read_bytes() == b"first"


async def test_a_yielded_outcome_is_already_in_the_journal(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """When an id is yielded, the journal already says it is done, with its path."""
    rid = fake.add_job(videos=[5000])
    journal = tmp_path / "j.db"
    async with make_client(fake, journal=journal) as client:
        async for outcome in client.download_as_completed([rid], tmp_path / "v"):
            [job] = sv.read_jobs(journal)
            assert job.state == "done"
            assert job.paths == [str(outcome.paths[0])]


async def test_leaving_the_loop_stops_transfers_and_keeps_the_partial_file(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """aclose() after the first outcome cancels the slow transfer: its .part stays, nothing
    more is fetched, and a rerun resumes it with Range."""
    quick = fake.add_job(run_seconds=0.2, videos=[1000])
    slow = fake.add_job(videos=[400_000])
    fake.add_fault("video", SlowBody(100_000), request_id=slow)
    async with make_client(fake) as client:
        stream = client.download_as_completed([quick, slow], tmp_path)
        async for outcome in stream:
            assert outcome.request_id == quick
            break
        await stream.aclose()
        part = tmp_path / f"{slow}_0.mp4.part"
        assert part.exists()
        kept = part.stat().st_size
        await asyncio.sleep(0.3)
        assert part.stat().st_size == kept
        assert not (tmp_path / f"{slow}_0.mp4").exists()
        [again] = await client.wait_and_download([slow], tmp_path)
    assert again.paths[0].read_bytes() == fake.video_bytes(slow)
    first_try, resumed = fake.requests_for("video", slow)
    assert "Range" not in first_try.headers
    assert resumed.headers["Range"] == f"bytes={kept}-"


async def test_a_broken_destination_raises_from_the_stream(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A destination that cannot be created is one DownloadError from the loop."""
    rid = fake.add_job()
    (tmp_path / "file").write_text("not a folder")
    async with make_client(fake) as client:
        with pytest.raises(sv.DownloadError, match="cannot create the destination"):
            async for _ in client.download_as_completed([rid], tmp_path / "file" / "sub"):
                pass


async def test_bad_arguments_fail_at_the_call(fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """One string instead of a list, or a cap below 1, fail before any iteration."""
    async with make_client(fake) as client:
        with pytest.raises(TypeError):
            client.download_as_completed("abc", tmp_path)
        with pytest.raises(sv.ConfigurationError):
            client.download_as_completed(["abc"], tmp_path, max_concurrent_downloads=0)
