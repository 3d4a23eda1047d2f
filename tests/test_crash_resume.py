"""kill -9 at random moments, again and again, then resume: every video whole, no id lost,
and no video that was complete on disk fetched from the video host again.

The command line runs as a real process (its journal in the destination folder) and is
killed while it polls, mid-transfer, around a rename or a journal commit: wherever the
random moment falls.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from siliconflow_video import read_jobs
from siliconflow_video.testing import FakeSiliconFlow, SlowBody

from .test_cli import base_env, json_lines

KEY = "sk-crash-test-0123456789abcdef"
JOURNAL = ".siliconflow-video.journal"


@pytest.fixture
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=3)
    with fake.run_in_thread():
        yield fake


def env(fake: FakeSiliconFlow) -> dict[str, str]:
    return base_env(SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=fake.base_url)


def complete_videos(folder: Path) -> set[Path]:
    return {p for p in folder.glob("*.mp4") if p.is_file()}


def fetched_since(fake: FakeSiliconFlow, path: Path, since: float) -> list[float]:
    """When requests for the video that ``path`` (``{id}_{i}.mp4``) holds arrived at the
    video host after ``since`` (a ``time.monotonic()``)."""
    rid, _, index = path.stem.rpartition("_")
    return [
        r.time
        for r in fake.requests_for("video", rid)
        if f"/{rid}/{index}/" in r.path and r.time > since
    ]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_kills_then_resume_lose_nothing(
    server: FakeSiliconFlow, tmp_path: Path, seed: int
) -> None:
    """Five kill -9s at random moments of download/resume runs, then a resume that
    finishes: every video byte for byte, every id done in the journal, and no video that
    was complete on disk at a kill requested again."""
    rng = random.Random(seed)
    ids = [
        server.add_job(queue_seconds=0.3, run_seconds=0.3, videos=[150_000]),
        server.add_job(queue_seconds=0.8, videos=[300_000, 60_000]),
        server.add_job(run_seconds=1.2, videos=[200_000]),
        server.add_job(videos=[40_000]),
    ]
    for rid in ids[:3]:
        server.add_fault("video", SlowBody(250_000), times=None, request_id=rid)
    out = tmp_path / "out"
    complete_at: dict[Path, float] = {}
    for run in range(5):
        args = (
            ["download", *ids, "-o", str(out)]
            if run == 0 or rng.random() < 0.5
            else ["resume", "-o", str(out)]
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "siliconflow_video", *args, "-q"],
            env=env(server),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if run == 0:  # the ids are journaled before anything else: from then on, no loss
                deadline = time.monotonic() + 30
                while not (out / JOURNAL).exists():
                    assert proc.poll() is None, "the first download ended early"
                    assert time.monotonic() < deadline, "the journal was never created"
                    time.sleep(0.01)
            time.sleep(rng.uniform(0.2, 1.2))  # the moment of the kill, not a measurement
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        seen = time.monotonic()
        for path in complete_videos(out):
            complete_at.setdefault(path, seen)
    final = subprocess.run(
        [sys.executable, "-m", "siliconflow_video", "resume", "-o", str(out), "--json", "-q"],
        env=env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    assert all(row["error"] is None for row in json_lines(final.stdout))
    jobs = {j.request_id: j for j in read_jobs(out / JOURNAL)}
    assert set(jobs) == set(ids)
    for rid in ids:
        job = jobs[rid]
        assert job.state == "done", (rid, job.state, job.error)
        for video in job.videos:
            assert video.path is not None
            assert Path(video.path).read_bytes() == server.video_bytes(rid, video.index)
    assert not list(out.glob("*.part"))
    assert complete_at, "no video was complete at any kill: the test proves nothing"
    for path, seen in complete_at.items():
        assert fetched_since(server, path, seen) == [], f"{path.name} fetched again"
