"""Workers on a shared PostgreSQL journal (siliconflow_video.worker, procrastinate), in
this process: the tasks, the upkeep, burst mode, metrics. Fleets of worker processes are
in tests/test_worker_fleet.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import attrs
import psycopg
import pytest

from siliconflow_video import AsyncClient, PollPolicy, WaitTimeoutError
from siliconflow_video._exceptions import ConfigurationError, JournalUnavailableError
from siliconflow_video._journal import JobState, open_journal, read_jobs
from siliconflow_video._worker import poll_delay
from siliconflow_video.testing import FakeSiliconFlow, not_found
from siliconflow_video.worker import Worker, WorkerSettings, enqueue_polls, run_worker

from . import _postgres
from ._postgres import PASSWORD
from .conftest import FAST_DOWNLOAD
from .test_outage_resume import forwarder, free_port

postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url

#: Timings for tests: a dead worker is found in seconds, polls come quickly.
FAST = WorkerSettings(
    concurrency=4,
    heartbeat_every=0.5,
    stalled_after=3.0,
    check_every=0.3,
    fetch_every=0.2,
    lease_seconds=5.0,
)
QUICK_POLLS = PollPolicy(interval=0.1, max_blind_interval=0.3, max_interval=0.3)


def options(fake: FakeSiliconFlow) -> dict[str, object]:
    return {"api_key": fake.api_key, "base_url": fake.base_url, "poll": QUICK_POLLS}


async def accept(url: str, ids: list[str], dest: Path | str) -> None:
    async with open_journal(url) as journal:
        await journal.accept(ids, dest=dest)


async def test_a_burst_worker_drains_the_journal(pg_url: str, tmp_path: Path) -> None:
    """Every journaled id is polled and downloaded byte for byte; burst mode then ends
    with 0 and the journal says done."""
    async with FakeSiliconFlow() as fake:
        ids = [fake.add_job(run_seconds=0.3, videos=[20_000, 3_000]) for _ in range(6)]
        await accept(pg_url, ids, tmp_path)
        code = await run_worker(pg_url, burst=True, settings=FAST, client_options=options(fake))
        for rid in ids:
            for index in (0, 1):
                path = tmp_path / f"{rid}_{index}.mp4"
                assert path.read_bytes() == fake.video_bytes(rid, index)
    assert code == 0
    assert {job.state for job in read_jobs(pg_url)} == {JobState.DONE}


async def test_an_id_siliconflow_does_not_know_fails_once(pg_url: str, tmp_path: Path) -> None:
    """A requestId the API rejects (400) is recorded failed and not polled again: burst
    mode ends with 1, and a second run has nothing to do."""
    async with FakeSiliconFlow() as fake:
        await accept(pg_url, ["no-such-job"], tmp_path)
        first = await run_worker(pg_url, burst=True, settings=FAST, client_options=options(fake))
        calls = len(fake.requests_for("status"))
        second = await run_worker(pg_url, burst=True, settings=FAST, client_options=options(fake))
        assert len(fake.requests_for("status")) == calls
    assert (first, second) == (1, 0)
    (job,) = read_jobs(pg_url)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.type == "BadRequestError"


async def test_enqueued_ids_get_one_poll_each(pg_url: str, tmp_path: Path) -> None:
    """enqueue_polls queues one poll per id, at once; asking again queues none (the
    queueing lock), and a worker then drains them."""
    async with FakeSiliconFlow() as fake:
        ids = [fake.add_job(videos=[1_000]) for _ in range(3)]
        await accept(pg_url, ids, tmp_path)
        assert await enqueue_polls(pg_url, ids) == 3
        assert await enqueue_polls(pg_url, ids) == 0
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo'"
            ).fetchall()
        assert sorted(lock for (lock,) in rows) == sorted(f"poll:{rid}" for rid in ids)
        code = await run_worker(pg_url, burst=True, settings=FAST, client_options=options(fake))
    assert code == 0
    assert {job.state for job in read_jobs(pg_url)} == {JobState.DONE}


async def test_stop_ends_a_worker_cleanly(pg_url: str, tmp_path: Path) -> None:
    """A worker without burst runs until stop(); it then returns 0, its metrics listener
    closed."""
    async with FakeSiliconFlow() as fake:
        rid = fake.add_job(queue_seconds=600)
        await accept(pg_url, [rid], tmp_path)
        worker = Worker(pg_url, settings=FAST, metrics_port=0, client_options=options(fake))
        running = asyncio.create_task(worker.run())
        while not fake.requests_for("status", rid):  # noqa: ASYNC110 - the fake has no event
            await asyncio.sleep(0.05)
        worker.stop()
        assert await asyncio.wait_for(running, 60) == 0
    assert read_jobs(pg_url)[0].state is JobState.WAITING  # left for the next worker


def test_poll_delay_grows_within_the_policy() -> None:
    """The delay between polls grows from interval by growth, never past the blind cap
    (jitter aside)."""
    policy = PollPolicy(interval=1.0, growth=2.0, max_blind_interval=5.0, jitter=0.0)
    assert [poll_delay(policy, n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = PollPolicy(interval=1.0, jitter=0.2)
    assert all(0.8 <= poll_delay(jittered, 0) <= 1.2 for _ in range(100))


def test_settings_refuse_a_heartbeat_slower_than_the_stall() -> None:
    """A stall threshold within two heartbeats would take a busy worker for dead."""
    with pytest.raises(ConfigurationError):
        WorkerSettings(heartbeat_every=5.0, stalled_after=8.0)
    assert WorkerSettings().takeover_bound == 13.0


def test_a_journal_that_is_not_postgresql_is_refused() -> None:
    """Workers share a PostgreSQL journal: a file path is a clear error, at once."""
    with pytest.raises(JournalUnavailableError, match="PostgreSQL"):
        Worker("jobs.db")


def test_importing_the_library_loads_no_worker_parts() -> None:
    """`import siliconflow_video` loads neither the worker nor procrastinate, psycopg or
    prometheus_client."""
    code = (
        "import siliconflow_video, sys\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('procrastinate', 'prometheus_client', 'psycopg', 'psycopg_pool') "
        "or m.startswith(('siliconflow_video._worker', 'siliconflow_video.worker'))]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_password_stays_out_of_the_worker(pg_url: str) -> None:
    """The worker's repr and name show the journal without its password."""
    worker = Worker(pg_url)
    assert PASSWORD not in repr(worker)
    assert PASSWORD not in worker.shown


async def test_a_passing_trouble_is_tried_again_not_failed(pg_url: str, tmp_path: Path) -> None:
    """A video host that refuses a job's video for longer than one transfer's tries leaves
    the id waiting (not failed): it is polled again, with fresh URLs, and its video lands;
    past ``retry_for`` the same trouble fails the id, as before."""
    quick = attrs.evolve(FAST, retry_every=0.3)
    async with FakeSiliconFlow() as fake:
        rid = fake.add_job(run_seconds=0.1, videos=[20_000])
        fake.add_fault("video", not_found(), times=3, request_id=rid)
        await accept(pg_url, [rid], tmp_path)
        client = {**options(fake), "download": FAST_DOWNLOAD}
        code = await run_worker(pg_url, burst=True, settings=quick, client_options=client)
        assert (tmp_path / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
        assert len(fake.requests_for("video", rid)) >= 4

        late = fake.add_job(run_seconds=0.1, videos=[20_000])
        fake.add_fault("video", not_found(), times=None, request_id=late)
        await accept(pg_url, [late], tmp_path)
        old = attrs.evolve(quick, retry_for=0.001)
        failed = await run_worker(pg_url, burst=True, settings=old, client_options=client)
    assert (code, failed) == (0, 1)
    states = {job.request_id: job.state for job in read_jobs(pg_url)}
    assert states == {rid: JobState.DONE, late: JobState.FAILED}


async def test_a_burst_worker_ends_during_an_outage_the_journal_vouches_for(
    pg_url: str, tmp_path: Path
) -> None:
    """The journal says the API answered at this base URL before, so a status call waits
    an outage out; a poll task still gives its slot back after ``poll_timeout``, and a
    burst worker stops (the error raised, the id left waiting) instead of running on."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    async with FakeSiliconFlow() as fake:
        rid = fake.add_job(run_seconds=3600, videos=[4000])
        async with forwarder(port, fake):
            client = AsyncClient(fake.api_key, base_url, journal=pg_url, poll=QUICK_POLLS)
            async with client:
                [outcome] = await client.wait_and_download([rid], tmp_path, timeout=0.3)
            assert isinstance(outcome.error, WaitTimeoutError)  # polled: the journal vouches
        quick = attrs.evolve(FAST, poll_timeout=1.0)
        worker = Worker(
            pg_url,
            burst=True,
            settings=quick,
            client_options={"api_key": fake.api_key, "base_url": base_url, "poll": QUICK_POLLS},
        )
        with pytest.raises(WaitTimeoutError):
            await asyncio.wait_for(worker.run(), 60)
    (job,) = read_jobs(pg_url)
    assert job.state is JobState.WAITING
    assert worker.failed == set()


async def test_an_id_another_process_holds_is_waited_for_not_a_reason_to_stop(
    pg_url: str, tmp_path: Path
) -> None:
    """Another process holds an id's journal lease for longer than one poll waits: that is
    this id's wait, not an outage, so a burst worker keeps it and carries on once the
    lease is given back (it neither stops nor fails the id)."""
    quick = attrs.evolve(FAST, poll_timeout=0.5, retry_every=0.3)
    async with FakeSiliconFlow() as fake:
        rid = fake.add_job(run_seconds=0.1, videos=[20_000])
        await accept(pg_url, [rid], tmp_path)
        async with open_journal(pg_url) as other:
            lease = await other.claim(rid)
            worker = Worker(pg_url, burst=True, settings=quick, client_options=options(fake))
            running = asyncio.create_task(worker.run())
            await asyncio.sleep(2.0)  # several polls, each giving up on the lease
            assert not running.done(), running
            await other.release(lease)
            code = await asyncio.wait_for(running, 60)
        assert (tmp_path / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
    assert code == 0
