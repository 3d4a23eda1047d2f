"""Workers on a shared PostgreSQL journal (siliconflow_video.worker, procrastinate), in
this process: the tasks, the upkeep, burst mode, metrics. Fleets of worker processes are
in tests/test_worker_fleet.py."""

from __future__ import annotations

from pathlib import Path

from siliconflow_video import PollPolicy
from siliconflow_video._journal import JobState, open_journal, read_jobs
from siliconflow_video.testing import FakeSiliconFlow
from siliconflow_video.worker import WorkerSettings, run_worker

from . import _postgres

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
