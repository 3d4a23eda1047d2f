"""wait_and_download end to end against the fake SiliconFlow: outcomes, files, pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import siliconflow_video as sv
from siliconflow_video import AsyncClient, EventKind, ProgressEvent
from siliconflow_video.testing import DropMidBody, FakeSiliconFlow, SlowBody, server_error

from .conftest import make_client


class Transfers:
    """A progress callback that counts the videos in transfer at once (first bytes to
    complete file) and keeps the peak."""

    def __init__(self) -> None:
        self.active: set[tuple[str, int | None]] = set()
        self.peak = 0

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.request_id, event.index)
        if event.kind is EventKind.BYTES:
            self.active.add(key)
            self.peak = max(self.peak, len(self.active))
        elif event.kind is EventKind.FILE:
            self.active.discard(key)


async def test_outcomes_come_back_in_order_and_typed(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """One outcome per id, in the order given; failures are that id's own, typed."""
    two = fake.add_job(run_seconds=0.3, videos=[200_000, 150_000])
    failed = fake.add_job(run_seconds=0.1, outcome="Failed", reason="content policy")
    one = fake.add_job(queue_seconds=0.2, videos=[100_000])
    outcomes = await client.wait_and_download([two, failed, "no-such-id", one], tmp_path)

    assert [o.request_id for o in outcomes] == [two, failed, "no-such-id", one]
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert isinstance(outcomes[1].error, sv.JobFailedError)
    assert outcomes[1].error.reason == "content policy"
    assert outcomes[1].paths == []
    assert isinstance(outcomes[2].error, sv.BadRequestError)
    assert outcomes[2].error.request_id == "no-such-id"

    for outcome in (outcomes[0], outcomes[3]):
        assert outcome.status is not None
        assert outcome.status.status is sv.Status.SUCCEED
        for index, video in enumerate(outcome.files):
            expected = fake.video_bytes(outcome.request_id, index)
            assert video.path.parent == tmp_path
            assert video.path.read_bytes() == expected
            assert video.size == len(expected)
            assert video.sha256 is None  # not asked for: DownloadPolicy(sha256=False)
    assert outcomes[0].paths == [tmp_path / f"{two}_0.mp4", tmp_path / f"{two}_1.mp4"]
    videos = (p for p in tmp_path.iterdir() if p.name != ".siliconflow-video")
    assert sorted(p.name for p in videos) == sorted(p.name for o in outcomes for p in o.paths)


async def test_downloads_start_while_others_are_still_polled(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """The batch is a pipeline: an early job's video is fetched before a late job finishes."""
    early = fake.add_job(run_seconds=0.1)
    late = fake.add_job(run_seconds=2.0)
    await client.wait_and_download([late, early], tmp_path)
    first_fetch = fake.requests_for("video", early)[0].time
    assert first_fetch < fake.jobs[late].created_at + 2.0 - 0.5


async def test_download_limit_is_respected(fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """No more than max_concurrent_downloads videos are in transfer at once."""
    ids = [fake.add_job(videos=[120_000]) for _ in range(6)]
    fake.add_fault("video", SlowBody(400_000), times=None)
    transfers = Transfers()
    async with make_client(fake) as client:
        outcomes = await client.wait_and_download(
            ids, tmp_path, max_concurrent_downloads=2, progress=transfers
        )
    assert all(o.ok for o in outcomes)
    assert transfers.peak == 2


async def test_rerun_fetches_nothing(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """Running the same batch again reuses the complete files and reports the same paths."""
    ids = [fake.add_job(videos=[50_000, 60_000]) for _ in range(3)]
    first = await client.wait_and_download(ids, tmp_path)
    fetched = len(fake.requests_for("video"))
    again = await client.wait_and_download(ids, tmp_path)
    assert len(fake.requests_for("video")) == fetched
    assert [o.paths for o in again] == [o.paths for o in first]
    assert [[f.size for f in o.files] for o in again] == [[f.size for f in o.files] for o in first]
    assert all(f.reused for o in again for f in o.files)


async def test_key_never_reaches_the_video_host(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """Video requests carry no Authorization header and no trace of the key."""
    ids = [fake.add_job(videos=[30_000]) for _ in range(3)]
    fake.add_fault("video", DropMidBody(10_000))
    outcomes = await client.wait_and_download(ids, tmp_path)
    assert all(o.ok for o in outcomes)
    video_requests = fake.requests_for("video")
    assert len(video_requests) >= 4  # three videos and one resume
    for request in video_requests:
        assert "authorization" not in {k.lower() for k in request.headers}
        assert all(fake.api_key not in v for v in request.headers.values())


async def test_failed_transfer_leaves_no_final_file(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """A video that cannot be fetched is a DownloadError and nothing sits under its name."""
    bad = fake.add_job(videos=[40_000])
    good = fake.add_job(videos=[40_000])
    fake.add_fault("video", server_error(), times=None, request_id=bad)
    outcomes = await client.wait_and_download([bad, good], tmp_path)
    assert isinstance(outcomes[0].error, sv.DownloadError)
    assert outcomes[0].error.status_code == 500
    assert outcomes[0].error.request_id == bad
    assert not (tmp_path / f"{bad}_0.mp4").exists()
    assert outcomes[1].ok


async def test_expired_url_is_refreshed_through_status(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """An expired first URL is exchanged for a fresh one from /video/status."""
    rid = fake.add_job(videos=[80_000])
    fake.url_ttl = -1  # every URL issued from now on is already expired...
    status = await client.get_status(rid)
    fake.url_ttl = 3600  # ...until the refresh
    polls_before = len(fake.requests_for("status", rid))
    [outcome] = await client.wait_and_download([rid], tmp_path)
    assert outcome.ok, outcome.error
    assert outcome.paths[0].read_bytes() == fake.video_bytes(rid)
    assert len(fake.requests_for("status", rid)) >= polls_before + 1
    assert status.urls[0] != outcome.status.urls[0] if outcome.status else True


async def test_no_fresh_url_is_a_clear_expiry_error(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """When /video/status keeps giving the dead URL, the id fails with VideoURLExpiredError."""
    rid = fake.add_job(videos=[80_000])
    fake.fresh_urls = False
    fake.url_ttl = -1
    [outcome] = await client.wait_and_download([rid], tmp_path)
    assert isinstance(outcome.error, sv.VideoURLExpiredError)
    assert "expired" in str(outcome.error)
    assert "one hour" in str(outcome.error)
    assert outcome.paths == []


async def test_progress_reports_status_bytes_and_files(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """The progress callback hears status changes, bytes with totals, each file and the end."""
    rid = fake.add_job(queue_seconds=0.2, run_seconds=0.2, videos=[600_000])
    events: list[ProgressEvent] = []
    await client.wait_and_download([rid], tmp_path, progress=events.append)
    statuses = [e.status for e in events if e.kind is EventKind.STATUS]
    assert statuses[0] in (sv.Status.IN_QUEUE, sv.Status.IN_PROGRESS)
    assert statuses[-1] is sv.Status.SUCCEED
    sizes = [e.bytes_done for e in events if e.kind is EventKind.BYTES]
    assert sizes == sorted(sizes)
    assert sizes[-1] == 600_000
    assert {e.bytes_total for e in events if e.kind is EventKind.BYTES} == {600_000}
    [file_event] = [e for e in events if e.kind is EventKind.FILE]
    assert file_event.path == tmp_path / f"{rid}_0.mp4"
    assert events[-1].kind is EventKind.DONE
    assert events[-1].error is None


async def test_a_broken_progress_callback_costs_nothing(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """A progress callback that raises is logged; the videos still arrive."""
    rid = fake.add_job(videos=[20_000])

    def explode(event: ProgressEvent) -> None:
        raise RuntimeError("bar broke")

    [outcome] = await client.wait_and_download([rid], tmp_path, progress=explode)
    assert outcome.ok
    assert outcome.paths[0].read_bytes() == fake.video_bytes(rid)


async def test_custom_naming(fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path) -> None:
    """A naming function picks the names; an unsafe or clashing name fails only its id."""
    a = fake.add_job(videos=[1_000, 2_000])
    b = fake.add_job(videos=[3_000])
    c = fake.add_job(videos=[4_000])

    def naming(request_id: str, index: int, url: str) -> str:
        if request_id == b:
            return "../escape.mp4"
        if request_id == c:
            return "clip-0.mp4"  # the same name as a's first video
        return f"clip-{index}.mp4"

    by_id = {
        o.request_id: o for o in await client.wait_and_download([a, b, c], tmp_path, naming=naming)
    }
    assert isinstance(by_id[b].error, sv.UnsafeFileNameError)
    assert not (tmp_path.parent / "escape.mp4").exists()
    # a and c both want clip-0.mp4: whichever job is seen first gets it, the other fails.
    [won] = [by_id[rid] for rid in (a, c) if by_id[rid].ok]
    [lost] = [by_id[rid] for rid in (a, c) if not by_id[rid].ok]
    assert isinstance(lost.error, sv.UnsafeFileNameError)
    assert won.paths[0] == tmp_path / "clip-0.mp4"
    assert won.paths[0].read_bytes() == fake.video_bytes(won.request_id, 0)
    if won.request_id == a:
        assert won.paths == [tmp_path / "clip-0.mp4", tmp_path / "clip-1.mp4"]


async def test_repeated_ids_share_one_download(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """An id given twice gets an outcome at each place and is fetched once."""
    rid = fake.add_job(videos=[10_000])
    outcomes = await client.wait_and_download([rid, rid], tmp_path)
    assert outcomes[0] == outcomes[1]
    assert len(fake.requests_for("video", rid)) == 1


async def test_bad_arguments_are_typed(client: AsyncClient, tmp_path: Path) -> None:
    """A bare string for ids, an empty id, or a destination that is a file: clear errors."""
    with pytest.raises(TypeError):
        await client.wait_and_download("abc", tmp_path)
    [outcome] = await client.wait_and_download([""], tmp_path)
    assert isinstance(outcome.error, sv.ConfigurationError)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(sv.DownloadError, match="destination folder"):
        await client.wait_and_download(["x"], blocker / "videos")


async def test_module_level_function_owns_its_client(
    fake: FakeSiliconFlow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wait_and_download(ids, dir) works on its own from the environment."""
    monkeypatch.setenv("SILICONFLOW_API_KEY", fake.api_key or "")
    monkeypatch.setenv("SILICONFLOW_BASE_URL", fake.base_url)
    rid = fake.add_job(videos=[5_000])
    [outcome] = await sv.wait_and_download([rid], tmp_path / "videos", poll_interval=0.05)
    assert outcome.ok
    assert outcome.paths[0].read_bytes() == fake.video_bytes(rid)


async def test_closed_client_is_a_plain_error(fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """wait_and_download on a closed client raises SiliconFlowError, not an ExceptionGroup."""
    client = make_client(fake)
    await client.aclose()
    with pytest.raises(sv.SiliconFlowError, match="closed"):
        await client.wait_and_download([fake.add_job()], tmp_path)


async def test_per_call_download_limit_cannot_raise_the_clients(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """max_concurrent_downloads given per call lowers the client's cap but never raises it."""
    fake.add_fault("video", SlowBody(300_000), times=None)
    async with make_client(fake, max_concurrent_downloads=3) as client:
        above, below = Transfers(), Transfers()
        ids = [fake.add_job(videos=[150_000]) for _ in range(8)]
        outcomes = await client.wait_and_download(
            ids, tmp_path / "above", max_concurrent_downloads=6, progress=above
        )
        ids = [fake.add_job(videos=[150_000]) for _ in range(8)]
        outcomes += await client.wait_and_download(
            ids, tmp_path / "below", max_concurrent_downloads=2, progress=below
        )
    assert all(o.ok for o in outcomes)
    assert (above.peak, below.peak) == (3, 2)


async def test_download_cap_holds_across_concurrent_calls(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Many calls at once on one client (a web service) share its max_concurrent_downloads."""
    fake.add_fault("video", SlowBody(300_000), times=None)
    transfers = Transfers()
    async with make_client(fake, max_concurrent_downloads=4) as client:
        calls = [
            client.wait_and_download(
                [fake.add_job(videos=[150_000])], tmp_path / str(n), progress=transfers
            )
            for n in range(12)
        ]
        results = await asyncio.gather(*calls)
    assert all(o.ok for outcomes in results for o in outcomes)
    assert transfers.peak == 4


async def test_names_differing_only_in_case_clash(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """Two videos named 'Clip.mp4' and 'clip.mp4' clash (one file on macOS and Windows)."""
    a = fake.add_job(videos=[1_000])
    b = fake.add_job(videos=[1_000])
    names = {a: "Clip.mp4", b: "clip.mp4"}
    outcomes = await client.wait_and_download(
        [a, b], tmp_path, naming=lambda rid, i, url: names[rid]
    )
    # Which of the two is seen first depends on poll order: one gets the name, one fails.
    [won] = [o for o in outcomes if o.ok]
    [lost] = [o for o in outcomes if not o.ok]
    assert isinstance(lost.error, sv.UnsafeFileNameError)
    assert won.paths[0].name == names[won.request_id]
