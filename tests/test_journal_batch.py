"""The journal in use: wait_and_download, submit and resume record every step, and a
restarted process (after kill -9) finishes every accepted id without paying twice.

Real processes are killed for real; every request goes over loopback HTTP to the fake.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import siliconflow_video as sv
from siliconflow_video.testing import FakeSiliconFlow, Slow, SlowBody

from .conftest import FAST_DOWNLOAD, FAST_RETRY, child_env, make_client, reaped, wait_until

KIB = 1024
MIB = 1024 * KIB
KEY = "sk-journal-test-0123456789"

# One run of the library in its own process, told what to do by a JSON argument; prints
# one JSON line per outcome (or the requestId of a submit) as it goes.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    import siliconflow_video as sv

    cfg = json.loads(sys.argv[1])
    options = dict(
        api_key=cfg["api_key"], base_url=cfg["base_url"], journal=cfg["journal"],
        poll_interval=0.05, max_poll_interval=0.2,
        retry=sv.RetryPolicy(base_delay=0.01, max_delay=0.05),
        download=sv.DownloadPolicy(base_delay=0.001, max_delay=0.01),
    )

    def report(outcomes):
        for o in outcomes:
            print(json.dumps({
                "request_id": o.request_id,
                "error": None if o.error is None else type(o.error).__name__,
                "reused": [f.reused for f in o.files],
            }), flush=True)

    async def main():
        if cfg["mode"] == "download":
            report(await sv.wait_and_download(cfg["ids"], cfg["dest"], **options))
        elif cfg["mode"] == "resume":
            report(await sv.resume(cfg["journal"], **{
                k: v for k, v in options.items() if k != "journal"
            }))
        else:  # submit, then wait and download it
            async with sv.AsyncClient(**options) as client:
                rid = await client.submit(
                    model="Wan-AI/Wan2.2-T2V-A14B", prompt="a paper boat",
                    dest=cfg["dest"], submit_key="boat",
                )
                print(json.dumps({"submitted": rid}), flush=True)
                report(await client.wait_and_download([rid], cfg["dest"]))

    asyncio.run(main())
    """
)


def start(script: Path, fake: FakeSiliconFlow, **cfg: Any) -> subprocess.Popen[str]:
    cfg = {"api_key": KEY, "base_url": fake.base_url, **cfg}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def kill_9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def assert_whole(fake: FakeSiliconFlow, outcome: sv.Outcome) -> None:
    assert outcome.ok, f"{outcome.request_id}: {outcome.error!r}"
    assert outcome.files
    for video in outcome.files:
        expected = fake.video_bytes(outcome.request_id, video.index)
        assert video.path.read_bytes() == expected, video.path


def served_in_full(fake: FakeSiliconFlow, request_id: str, since: float = 0.0) -> int:
    """How many times the fake sent a whole video of this job from its first byte (to
    requests that arrived after ``since``, a ``time.monotonic()``)."""
    return sum(
        1
        for r in fake.requests_for("video", request_id)
        if r.status == 200 and "Range" not in r.headers and r.time >= since
    )


# --- in one process --------------------------------------------------------------------


async def test_a_journaled_batch_records_each_job_and_a_rerun_asks_nothing(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Each id ends 'done' in the journal with its paths; a rerun on the same journal
    reports the same files (reused) without one status call or video request."""
    journal = tmp_path / "jobs.db"
    ids = [fake.add_job(videos=[30_000, 20_000]), fake.add_job(videos=[10_000])]
    async with make_client(fake, journal=journal) as client:
        first = await client.wait_and_download(ids, tmp_path / "videos")
    assert all(o.ok for o in first)
    jobs = {job.request_id: job for job in sv.read_jobs(journal)}
    assert [jobs[rid].state for rid in ids] == [sv.JobState.DONE] * 2
    assert jobs[ids[0]].paths == [str(p) for p in first[0].paths]
    assert oct(journal.stat().st_mode & 0o777) == "0o600"

    calls = len(fake.requests)
    async with make_client(fake, journal=journal) as client:
        again = await client.wait_and_download(ids, tmp_path / "videos")
    assert [o.paths for o in again] == [o.paths for o in first]
    assert all(f.reused for o in again for f in o.files)
    assert len(fake.requests) == calls


async def test_a_failed_job_is_final_and_a_changed_file_is_fetched_again(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A job SiliconFlow failed is reported failed again from the journal, without a call;
    a recorded video whose file was cut short since is fetched again, not reported whole."""
    journal = tmp_path / "jobs.db"
    failed = fake.add_job(outcome="Failed", reason="content policy")
    good = fake.add_job(videos=[40_000])
    async with make_client(fake, journal=journal) as client:
        await client.wait_and_download([failed, good], tmp_path)
    [video] = [p for p in tmp_path.iterdir() if p.name == f"{good}_0.mp4"]
    video.write_bytes(video.read_bytes()[:1000])
    fake.clear_log()

    async with make_client(fake, journal=journal) as client:
        redo_failed, redo_good = await client.wait_and_download([failed, good], tmp_path)
    assert isinstance(redo_failed.error, sv.JobFailedError)
    assert redo_failed.error.reason == "content policy"
    assert fake.requests_for("status", failed) == []
    assert_whole(fake, redo_good)
    assert fake.requests_for("video", good)


async def test_submit_records_its_intent_and_a_known_key_is_never_sent_twice(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """With a journal, submit needs dest=, commits the intent before the POST, and the
    same submit_key again returns the first requestId without a second POST."""
    journal = tmp_path / "jobs.db"
    async with make_client(fake, journal=journal) as client:
        with pytest.raises(sv.ConfigurationError, match="dest="):
            await client.submit(model="m", prompt="p")
        rid = await client.submit(model="m", prompt="p", dest=tmp_path, submit_key="k1")
        again = await client.submit(model="m", prompt="p", dest=tmp_path, submit_key="k1")
    assert again == rid
    assert len(fake.requests_for("submit")) == 1
    [job] = sv.read_jobs(journal)
    assert (job.request_id, job.state, job.submit_key) == (rid, sv.JobState.WAITING, "k1")


# --- across processes -------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_transfer_then_resume_finishes_every_id(tmp_path: Path) -> None:
    """A journaled download killed with SIGKILL mid-transfer is finished by resume(journal)
    with no id list: every video byte for byte, and the one already complete is not
    requested from the video host again."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    dest = tmp_path / "videos"
    journal = tmp_path / "jobs.db"
    fake = FakeSiliconFlow(api_key=KEY, seed=3)
    with fake.run_in_thread():
        small = fake.add_job(videos=[40 * KIB])
        big = [fake.add_job(videos=[2 * MIB, 1 * MIB]), fake.add_job(videos=[2 * MIB])]
        for rid in big:
            fake.add_fault("video", SlowBody(1 * MIB), times=None, request_id=rid)
        ids = [small, *big]
        proc = start(script, fake, mode="download", ids=ids, dest=str(dest), journal=str(journal))
        with reaped(proc):

            def moving() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"the child ended early: {proc.communicate()}")
                parts = [p for p in dest.glob("*.part") if p.stat().st_size > 100 * KIB]
                return (dest / f"{small}_0.mp4").exists() and len(parts) == 3

            wait_until(moving, 20, "every big video under way")
            kill_9(proc)
        assert {j.request_id: j.state for j in sv.read_jobs(journal)} == {
            small: sv.JobState.DONE,
            big[0]: sv.JobState.DOWNLOADING,
            big[1]: sv.JobState.DOWNLOADING,
        }
        fake.clear_faults()
        # The log is in order of completion: the killed run's transfers may still be
        # logged now. Tell the runs apart by arrival time.
        resumed_at = time.monotonic()

        async def again() -> list[sv.Outcome]:
            return await sv.resume(
                journal,
                api_key=KEY,
                base_url=fake.base_url,
                poll_interval=0.05,
                retry=FAST_RETRY,
                download=FAST_DOWNLOAD,
            )

        outcomes = asyncio.run(asyncio.wait_for(again(), 60))
        assert sorted(o.request_id for o in outcomes) == sorted(big)  # small was done
        for outcome in outcomes:
            assert_whole(fake, outcome)
            # resumed from the bytes on disk, never from 0
            assert served_in_full(fake, outcome.request_id, resumed_at) == 0
        assert [r for r in fake.requests_for("video", small) if r.time >= resumed_at] == []
        assert {j.state for j in sv.read_jobs(journal)} == {sv.JobState.DONE}


@pytest.mark.slow
def test_a_submit_killed_before_its_answer_is_submit_unknown_and_never_resent(
    tmp_path: Path,
) -> None:
    """kill -9 while the submit's POST is unanswered leaves the job submit_unknown: resume
    does not submit it, and submitting the same key raises SubmitUnknownError, so the
    account is charged at most once."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    journal = tmp_path / "jobs.db"
    fake = FakeSiliconFlow(api_key=KEY, seed=4)
    with fake.run_in_thread():
        fake.add_fault("submit", Slow(30))
        proc = start(script, fake, mode="submit", dest=str(tmp_path), journal=str(journal))
        with reaped(proc):
            wait_until(lambda: fake.in_flight > 0, 20, "the submit to reach the fake")
            kill_9(proc)
        fake.clear_faults()

        async def after() -> list[sv.Outcome]:
            outcomes = await sv.resume(journal, api_key=KEY, base_url=fake.base_url)
            async with sv.AsyncClient(KEY, fake.base_url, journal=journal) as client:
                with pytest.raises(sv.SubmitUnknownError) as caught:
                    await client.submit(model="m", prompt="p", dest=tmp_path, submit_key="boat")
            assert caught.value.job_key
            return outcomes

        assert asyncio.run(after()) == []
        [job] = sv.read_jobs(journal)
        assert job.state is sv.JobState.SUBMIT_UNKNOWN
        assert job.request_id is None
        assert len(fake.requests_for("submit")) <= 1


@pytest.mark.slow
def test_a_submit_killed_while_waiting_is_downloaded_by_resume(tmp_path: Path) -> None:
    """A submit that got its requestId, killed while the job ran, is downloaded by resume
    into the dest recorded with it, with no second submit."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    journal = tmp_path / "jobs.db"
    dest = tmp_path / "videos"
    fake = FakeSiliconFlow(api_key=KEY, seed=5)
    with fake.run_in_thread():
        fake.submit_defaults = {"queue_seconds": 1.0, "run_seconds": 2.0}
        proc = start(script, fake, mode="submit", dest=str(dest), journal=str(journal))
        with reaped(proc):
            line = proc.stdout.readline() if proc.stdout else ""
            rid = json.loads(line)["submitted"]
            kill_9(proc)
        [job] = sv.read_jobs(journal)
        assert (job.request_id, job.state) == (rid, sv.JobState.WAITING)

        async def again() -> list[sv.Outcome]:
            return await sv.resume(journal, api_key=KEY, base_url=fake.base_url, poll_interval=0.1)

        [outcome] = asyncio.run(asyncio.wait_for(again(), 30))
        assert outcome.request_id == rid
        assert_whole(fake, outcome)
        assert outcome.paths[0].parent == dest
        assert len(fake.requests_for("submit")) == 1


@pytest.mark.slow
def test_two_resume_processes_on_one_journal_fetch_nothing_twice(tmp_path: Path) -> None:
    """Two resume processes at once on one journal: every video right, each sent whole
    once, and the id the other holds is waited for, then reported from the journal."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    journal = tmp_path / "jobs.db"
    dest = tmp_path / "videos"
    fake = FakeSiliconFlow(api_key=KEY, seed=6)
    with fake.run_in_thread():
        ids = [fake.add_job(videos=[300 * KIB]) for _ in range(4)]
        for rid in ids:
            fake.add_fault("video", SlowBody(1 * MIB), times=None, request_id=rid)

        async def enqueue() -> None:
            async with sv.open_journal(journal) as open_journal:
                await open_journal.accept(ids, dest=dest)

        asyncio.run(enqueue())
        procs = [
            start(script, fake, mode="resume", journal=str(journal), dest=str(dest))
            for _ in range(2)
        ]
        with reaped(*procs):
            results = [finish(proc) for proc in procs]
    for lines in results:
        assert sorted(line["request_id"] for line in lines) == sorted(ids)
        assert all(line["error"] is None for line in lines)
    for rid in ids:
        assert (dest / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
        assert served_in_full(fake, rid) == 1


async def test_a_refused_name_is_journaled_as_that_ids_failure(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A naming function that gives an unsafe name fails that id, and the journal says so
    (failed, with the error), rather than leaving it 'downloading' forever."""
    journal = tmp_path / "jobs.db"
    bad, good = fake.add_job(), fake.add_job()
    names = {bad: "../escape.mp4", good: "fine.mp4"}
    async with make_client(fake, journal=journal) as client:
        outcomes = await client.wait_and_download(
            [bad, good], tmp_path / "v", naming=lambda rid, i, url: names[rid]
        )
    assert isinstance(outcomes[0].error, sv.UnsafeFileNameError)
    assert outcomes[1].ok
    jobs = {job.request_id: job for job in sv.read_jobs(journal)}
    assert jobs[bad].state is sv.JobState.FAILED
    assert jobs[bad].error is not None
    assert jobs[bad].error.type == "UnsafeFileNameError"
    assert jobs[good].state is sv.JobState.DONE


async def test_a_naming_callback_that_raises_fails_only_its_id(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A naming function's own bug (a KeyError) is that id's outcome, journaled as failed;
    the other ids download as usual."""
    journal = tmp_path / "jobs.db"
    known, unknown = fake.add_job(), fake.add_job()
    titles = {known: "known.mp4"}
    async with make_client(fake, journal=journal) as client:
        outcomes = await client.wait_and_download(
            [known, unknown], tmp_path / "v", naming=lambda rid, i, url: titles[rid]
        )
    assert outcomes[0].ok
    assert not outcomes[1].ok
    assert "KeyError" in str(outcomes[1].error)
    states = {job.request_id: job.state for job in sv.read_jobs(journal)}
    assert states == {known: sv.JobState.DONE, unknown: sv.JobState.FAILED}


async def test_a_rerun_from_the_journal_reports_the_recorded_status(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """An outcome the journal answers carries the Succeed status it recorded (so a script
    that checks the status sees the same as on the first run)."""
    journal = tmp_path / "jobs.db"
    rid = fake.add_job(videos=[10_000], inference=2.5)
    async with make_client(fake, journal=journal) as client:
        [first] = await client.wait_and_download([rid], tmp_path / "v")
    async with make_client(fake, journal=journal) as client:
        [again] = await client.wait_and_download([rid], tmp_path / "v")
    assert first.status is not None
    assert again.status is not None
    assert again.status.status is sv.Status.SUCCEED
    assert again.status.results is not None
    assert again.status.results.timings == sv.Timings(inference=2.5)


async def test_a_journal_shared_across_folders_downloads_into_the_one_asked(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """An id done into one folder, then asked for into another with the same journal, is
    downloaded there: never reported from a folder the caller did not name."""
    journal = tmp_path / "jobs.db"
    rid = fake.add_job(videos=[10_000])
    async with make_client(fake, journal=journal) as client:
        [first] = await client.wait_and_download([rid], tmp_path / "a")
        [second] = await client.wait_and_download([rid], tmp_path / "b")
    assert first.paths[0].parent == tmp_path / "a"
    assert second.ok
    assert second.paths[0].parent == tmp_path / "b"
    assert second.paths[0].read_bytes() == fake.video_bytes(rid)


async def test_what_the_poller_learned_survives_a_restart(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Run times learned by one client are kept in its journal when it closes, and taken
    up by the next client on that journal, so it polls as learned from its first job."""
    journal = tmp_path / "jobs.db"
    ids = [fake.add_job(run_seconds=0.3, inference=0.3) for _ in range(4)]
    async with make_client(fake, journal=journal) as client:
        await client.wait_and_download(ids, tmp_path / "v")
        learned = client.learned
    assert learned["samples"]
    async with make_client(fake, journal=journal) as client:
        await client.journal()
        assert client.learned == learned
