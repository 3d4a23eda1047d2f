"""Fleets of `siliconflow-video worker` processes on one real PostgreSQL journal, against
the fake over real HTTP: they share the work, survive one of them killed with SIGKILL and
a PostgreSQL restart, hold the account's rate limit together, serve metrics, and exit as
documented."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from siliconflow_video._journal import JobState, open_journal, read_jobs
from siliconflow_video.testing import FakeSiliconFlow, SlowBody
from siliconflow_video.worker import WorkerSettings

from . import _postgres, _seaweed
from ._postgres import PASSWORD, Cluster, free_port
from ._seaweed import BUCKET
from .conftest import child_env, reaped, wait_until
from .test_s3_batch import aws_env, object_bytes, object_keys, open_uploads

postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url

KEY = "sk-fleet-test"
#: What the issue's check allows for a killed worker's jobs to be finished elsewhere.
TAKEOVER_ALLOWED = 120.0
#: The documented bound on a killed worker's jobs running again elsewhere (workers on one
#: machine: its leases free at once), plus slack for a machine shared with other work.
TAKEOVER_BOUND = WorkerSettings().takeover_bound + 15.0


@pytest.fixture
def fake() -> Iterator[FakeSiliconFlow]:
    """The fake in a thread of its own: the test blocks on child processes."""
    with FakeSiliconFlow(api_key=KEY).run_in_thread() as server:
        yield server


def env(fake: FakeSiliconFlow) -> dict[str, str]:
    return {**child_env(), "SILICONFLOW_API_KEY": KEY, "SILICONFLOW_BASE_URL": fake.base_url}


def cli(
    args: Sequence[str], fake: FakeSiliconFlow, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siliconflow_video", *args],
        env=env(fake),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def worker(url: str, fake: FakeSiliconFlow, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", "worker", "--journal", url, *extra],
        env=env(fake),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def enqueue(url: str, fake: FakeSiliconFlow, ids: Sequence[str], dest: Path) -> None:
    done = cli(["enqueue", *ids, "-o", str(dest), "--journal", url], fake)
    assert done.returncode == 0, done.stderr


def finish(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str]]:
    """Each process's exit code and stderr, once all have exited (the stderr of those that
    failed is printed, for the test's report)."""
    results = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        results.append((proc.returncode, err))
        if proc.returncode:
            print(f"--- worker {proc.pid} exited {proc.returncode}:\n{err}")
    return results


def assert_all_downloaded(fake: FakeSiliconFlow, ids: Sequence[str], dest: Path) -> None:
    for rid in ids:
        assert (dest / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid), rid
    assert not list(dest.glob("*.part")), "a partial file was left"


@pytest.mark.slow
def test_workers_share_the_work(pg_url: str, fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """Three burst workers drain the journal byte for byte, each video fetched once, and
    all exit 0."""
    ids = [fake.add_job(run_seconds=1.0, videos=[150_000]) for _ in range(12)]
    enqueue(pg_url, fake, ids, tmp_path)
    procs = [worker(pg_url, fake, "--burst", "--concurrency", "3") for _ in range(3)]
    with reaped(*procs):
        results = finish(procs, timeout=90)
    assert [code for code, _ in results] == [0, 0, 0], results
    assert_all_downloaded(fake, ids, tmp_path)
    for rid in ids:
        fetched = [r for r in fake.requests_for("video", rid) if r.status in (200, 206)]
        assert len(fetched) == 1, (rid, fetched)  # one transfer per id, never two
    assert {job.state for job in read_jobs(pg_url)} == {JobState.DONE}
    assert all(PASSWORD not in err for _, err in results)


def lease_holder_pid(url: str, dest: Path) -> int | None:
    """The pid of a worker downloading a video now: its .part file has bytes, and the
    worker holds the id's lease."""
    started = {p.name.split("_")[0] for p in dest.glob("*.part") if p.stat().st_size}
    for job in read_jobs(url):
        if job.lease_owner and job.request_id in started and job.state is JobState.DOWNLOADING:
            return int(job.lease_owner.split(":")[1])
    return None


def held_by(url: str, pid: int) -> list[str]:
    """The ids the worker ``pid`` holds the lease of, downloading."""
    return [
        job.request_id
        for job in read_jobs(url)
        if job.request_id is not None
        and job.state is JobState.DOWNLOADING
        and job.lease_owner is not None
        and int(job.lease_owner.split(":")[1]) == pid
    ]


@pytest.mark.slow
def test_a_worker_killed_mid_transfer_is_taken_over(
    pg_url: str, fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """One of three workers killed with SIGKILL mid-download: each of its transfers
    resumes on another worker within the documented bound (WorkerSettings.takeover_bound,
    plus slack), and the other two finish every id byte for byte and exit 0."""
    fake.add_fault("video", SlowBody(bytes_per_second=400_000), times=None)
    ids = [fake.add_job(run_seconds=0.5, videos=[1_200_000]) for _ in range(6)]
    enqueue(pg_url, fake, ids, tmp_path)
    procs = [worker(pg_url, fake, "--burst", "--concurrency", "2") for _ in range(3)]
    with reaped(*procs):
        wait_until(
            lambda: lease_holder_pid(pg_url, tmp_path) is not None, 60, "a transfer under way"
        )
        victim_pid = lease_holder_pid(pg_url, tmp_path)
        (victim,) = [p for p in procs if p.pid == victim_pid]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        held = held_by(pg_url, victim.pid)
        assert held

        def asked_again(rid: str) -> bool:
            return any(r.time > killed_at for r in fake.requests_for("video", rid))

        wait_until(lambda: all(asked_again(rid) for rid in held), 120, "the takeover")
        taken_over = max(
            min(r.time for r in fake.requests_for("video", rid) if r.time > killed_at)
            for rid in held
        )
        others = [p for p in procs if p is not victim]
        results = finish(others, timeout=TAKEOVER_ALLOWED + 30)
        took = time.monotonic() - killed_at
    assert victim.returncode == -signal.SIGKILL
    assert [code for code, _ in results] == [0, 0], results
    # Every transfer of the dead worker resumed on another within the documented bound.
    assert taken_over - killed_at < TAKEOVER_BOUND, taken_over - killed_at
    assert took < TAKEOVER_ALLOWED
    assert_all_downloaded(fake, ids, tmp_path)
    assert {job.state for job in read_jobs(pg_url)} == {JobState.DONE}


@pytest.mark.slow
def test_a_postgresql_restart_is_survived(
    postgres: Cluster, pg_url: str, fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """PostgreSQL restarted while two workers poll and download: they reconnect and finish
    everything; nothing is lost."""
    fake.add_fault("video", SlowBody(bytes_per_second=500_000), times=None)
    ids = [fake.add_job(run_seconds=2.0 + i * 0.3, videos=[600_000]) for i in range(8)]
    enqueue(pg_url, fake, ids, tmp_path)
    procs = [worker(pg_url, fake, "--burst", "--concurrency", "3") for _ in range(2)]
    with reaped(*procs):
        wait_until(
            lambda: lease_holder_pid(pg_url, tmp_path) is not None, 60, "a transfer under way"
        )
        postgres.restart()
        results = finish(procs, timeout=150)
    assert [code for code, _ in results] == [0, 0], results
    assert_all_downloaded(fake, ids, tmp_path)
    assert {job.state for job in read_jobs(pg_url)} == {JobState.DONE}
    assert all(PASSWORD not in err for _, err in results)


@pytest.mark.slow
def test_workers_hold_the_rate_limit_together(
    pg_url: str, fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Two workers under a 4 calls/s account limit: few of their calls get 429 (they keep
    to one rate in PostgreSQL, the default; the benchmark measures the share)."""
    fake.set_rate_limit(4.0)
    ids = [fake.add_job(run_seconds=3.0, videos=[2_000]) for _ in range(16)]
    enqueue(pg_url, fake, ids, tmp_path)
    procs = [worker(pg_url, fake, "--burst", "--concurrency", "4") for _ in range(2)]
    with reaped(*procs):
        results = finish(procs, timeout=120)
    assert [code for code, _ in results] == [0, 0], results
    assert_all_downloaded(fake, ids, tmp_path)
    calls = fake.requests_for("status")
    limited = [r for r in calls if r.status == 429]
    assert len(limited) < 0.5 * len(calls), (len(limited), len(calls))


def test_metrics_are_served_on_loopback_without_secrets(
    pg_url: str, fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """--metrics-port serves the siliconflow_video_* metrics on 127.0.0.1, with no
    password in them; SIGTERM then stops the worker cleanly with one line."""
    done = fake.add_job(videos=[5_000])
    ids = [done, fake.add_job(queue_seconds=600)]
    enqueue(pg_url, fake, ids, tmp_path)
    port = free_port()
    proc = worker(pg_url, fake, "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    with reaped(proc):
        wait_until(
            lambda: "siliconflow_video_bytes_transferred_total 5000.0" in scrape(),
            60,
            "the bytes counted",
        )
        wait_until(
            lambda: 'siliconflow_video_jobs{state="done"} 1.0' in scrape(), 60, "the job counts"
        )
        text = scrape()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    for name in (
        'siliconflow_video_jobs{state="waiting"} 1.0',
        "siliconflow_video_status_calls_total",
        "siliconflow_video_status_429_total",
        "siliconflow_video_transfer_retries_total",
        'siliconflow_video_tasks_total{outcome="done",task="poll"} 1.0',
    ):
        assert name in text, name
    assert PASSWORD not in text
    assert KEY not in text
    assert "python_gc" not in text  # its own registry, not the process-wide one
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("terminated"), err
    assert PASSWORD not in err


def test_burst_exit_codes(pg_url: str, fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """--burst exits 0 with nothing to do, 1 once an id failed (recorded failed, not
    retried), and 2 for a journal that is not PostgreSQL."""
    empty = cli(["worker", "--journal", pg_url, "--burst"], fake)
    assert empty.returncode == 0, empty.stderr
    ok = fake.add_job(videos=[1_000])
    bad = fake.add_job(outcome="Failed", reason="content policy")
    enqueue(pg_url, fake, [ok, bad], tmp_path)
    failed = cli(["worker", "--journal", pg_url, "--burst"], fake)
    assert failed.returncode == 1, failed.stderr
    states = {job.request_id: job for job in read_jobs(pg_url)}
    assert states[ok].state is JobState.DONE
    assert states[bad].state is JobState.FAILED
    assert states[bad].remote_reason == "content policy"
    again = cli(["worker", "--journal", pg_url, "--burst"], fake)
    assert again.returncode == 0, again.stderr  # a failed id is not tried again
    sqlite = cli(["worker", "--journal", str(tmp_path / "j.db"), "--burst"], fake)
    assert sqlite.returncode == 2
    assert "PostgreSQL" in sqlite.stderr
    assert "Traceback" not in sqlite.stderr


def test_a_metrics_port_taken_is_a_usage_error(pg_url: str, fake: FakeSiliconFlow) -> None:
    """--metrics-port on a port already in use: exit 2, one line naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli(["worker", "--journal", pg_url, "--burst", "--metrics-port", str(port)], fake)
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def uploading_pid(url: str) -> int | None:
    """The pid of a worker with an upload under way: parts recorded, its lease held."""

    async def read() -> int | None:
        async with open_journal(url, read_only=True) as journal:
            for job in await journal.jobs(states=[JobState.DOWNLOADING]):
                kept = await journal.upload_state(job.job_key, 0)
                if job.lease_owner and kept is not None and json.loads(kept)["parts"]:
                    return int(job.lease_owner.split(":")[1])
        return None

    return asyncio.run(read())


@pytest.mark.slow
def test_workers_into_s3_survive_one_killed_mid_upload(
    request: pytest.FixtureRequest, pg_url: str, fake: FakeSiliconFlow
) -> None:
    """Three workers upload into s3:// on a real SeaweedFS; one is killed with SIGKILL
    mid-upload: the others finish every object byte for byte, no multipart upload is left
    open, and no object other than the whole videos is ever listed."""
    seaweed = _seaweed.shared(request)
    prefix = "fleet/killed"
    part = 8 * 1024 * 1024  # the default part size: the workers read AWS_* only
    ids = [fake.add_job(videos=[2 * part + 4321]) for _ in range(4)]
    fake.add_fault("video", SlowBody(bytes_per_second=6 * 1024 * 1024), times=None)
    env_s3 = {**aws_env(seaweed), "SILICONFLOW_API_KEY": KEY, "SILICONFLOW_BASE_URL": fake.base_url}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "siliconflow_video",
            "enqueue",
            *ids,
            "-o",
            f"s3://{BUCKET}/{prefix}",
            "--journal",
            pg_url,
        ],
        env=env_s3,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "siliconflow_video",
                "worker",
                "--journal",
                pg_url,
                "--burst",
                "--concurrency",
                "1",
            ],
            env=env_s3,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    expected = sorted(f"{prefix}/{rid}_0.mp4" for rid in ids)
    with reaped(*procs):
        wait_until(lambda: uploading_pid(pg_url) is not None, 90, "an upload under way")
        victim_pid = uploading_pid(pg_url)
        (victim,) = [p for p in procs if p.pid == victim_pid]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        others = [p for p in procs if p is not victim]
        deadline = time.monotonic() + TAKEOVER_ALLOWED + 60
        while any(p.poll() is None for p in others) and time.monotonic() < deadline:
            assert set(object_keys(seaweed, prefix)) <= set(expected)  # never a stray key
            time.sleep(0.2)
        results = finish(others, timeout=30)
        took = time.monotonic() - killed_at
    assert [code for code, _ in results] == [0, 0], results
    assert took < TAKEOVER_ALLOWED
    assert object_keys(seaweed, prefix) == expected
    for rid in ids:
        assert object_bytes(seaweed, f"{prefix}/{rid}_0.mp4") == fake.video_bytes(rid), rid
    assert open_uploads(seaweed, prefix) == []
    assert {job.state for job in read_jobs(pg_url)} == {JobState.DONE}
