"""A PostgreSQL journal in use, against a real cluster: the library's wait_and_download and
resume, and the command line's enqueue, jobs and resume, with the password in no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import siliconflow_video as sv
from siliconflow_video.testing import FakeSiliconFlow

from . import _postgres
from ._postgres import PASSWORD
from .conftest import make_client

postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url

KEY = "sk-pg-test-0123456789"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siliconflow_video", *args],
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_wait_and_download_records_into_postgresql(
    fake: FakeSiliconFlow, pg_url: str, tmp_path: Path
) -> None:
    """journal="postgresql://..." records every id; a rerun on it asks nothing."""
    ids = [fake.add_job(videos=[20_000]), fake.add_job(videos=[10_000, 5_000])]
    async with make_client(fake, journal=pg_url) as client:
        first = await client.wait_and_download(ids, tmp_path)
    assert all(o.ok for o in first)
    assert {job.state for job in sv.read_jobs(pg_url)} == {sv.JobState.DONE}
    calls = len(fake.requests)
    async with make_client(fake, journal=pg_url) as client:
        again = await client.wait_and_download(ids, tmp_path)
    assert [o.paths for o in again] == [o.paths for o in first]
    assert len(fake.requests) == calls


def test_the_cli_enqueues_lists_and_resumes_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """enqueue, jobs and resume take a postgresql:// journal as given (not as a file path),
    and nothing they print carries its password."""
    fake = FakeSiliconFlow(api_key=KEY, seed=8)
    with fake.run_in_thread():
        rid = fake.add_job(videos=[30_000])
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")},
            "SILICONFLOW_API_KEY": KEY,
            "SILICONFLOW_BASE_URL": fake.base_url,
        }
        dest = tmp_path / "videos"
        enqueued = cli("enqueue", rid, "-o", str(dest), "--journal", pg_url, env=env)
        listed = cli("jobs", "--journal", pg_url, "--json", env=env)
        resumed = cli("resume", "--journal", pg_url, env=env)
    for done in (enqueued, listed, resumed):
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
    [job] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (job["request_id"], job["state"]) == (rid, "waiting")
    assert (dest / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
    assert [j.state for j in sv.read_jobs(pg_url)] == [sv.JobState.DONE]
