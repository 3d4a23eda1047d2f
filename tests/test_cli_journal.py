"""The journal from the command line: download keeps one in DIR by default, enqueue records,
resume finishes, jobs lists, submit --from-file never pays twice, and a bad journal is one
line and exit 2. Every command runs as a subprocess against the fake server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import siliconflow_video as sv
from siliconflow_video.testing import ConnectionReset, FakeSiliconFlow, SlowBody, TruncatedJSON

from .conftest import immutable
from .test_cli import (
    KEY,
    assert_clean,
    base_env,
    cli,
    env_for,
    error_lines,
    json_lines,
    sha256_of,
)

JOURNAL = ".siliconflow-video.journal"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=11)
    with fake.run_in_thread():
        yield fake


def jobs_json(*args: str) -> list[dict[str, object]]:
    proc = cli("jobs", *args, "--json", env=base_env())
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc)
    return json_lines(proc.stdout)


def test_download_keeps_a_private_journal_in_the_folder(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """download -o DIR journals into DIR/.siliconflow-video.journal (0600); jobs lists each
    id done with its paths; --no-journal keeps none."""
    a = server.add_job(videos=[3000, 4000])
    b = server.add_job(videos=[1000])
    out = tmp_path / "out"
    proc = cli("download", a, b, "-o", str(out), env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    journal = out / JOURNAL
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    rows = {r["request_id"]: r for r in jobs_json("-o", str(out))}
    assert set(rows) == {a, b}
    assert {r["state"] for r in rows.values()} == {"done"}
    assert rows[a]["paths"] == [str(out / f"{a}_0.mp4"), str(out / f"{a}_1.mp4")]
    assert rows[a]["dest"] == str(out)
    assert all(set(r) >= {"request_id", "state", "dest", "paths", "error"} for r in rows.values())
    for row in rows.values():
        for video in row["videos"]:  # type: ignore[attr-defined]
            assert "?" not in video["url"]
    other = tmp_path / "plain"
    proc = cli("download", a, "-o", str(other), "--no-journal", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    assert not list(other.glob(".siliconflow-video.journal*"))


def test_a_killed_download_resumes_from_its_folder(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """kill -9 in the middle of a download; 'resume -o DIR' (no ids) finishes every video
    whole, and a complete one is not fetched again."""
    quick = server.add_job(videos=[2000])
    slow = server.add_job(videos=[600_000])
    later = server.add_job(queue_seconds=0.5, videos=[3000])
    server.add_fault("video", SlowBody(200_000), request_id=slow)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", "download", quick, slow, later, "-o", str(out)],
        env=env_for(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        part = out / f"{slow}_0.mp4.part"
        deadline = time.monotonic() + 30

        def quick_recorded() -> bool:
            # The journal records a video done just after its rename: wait for the record,
            # not the file, or the kill may fall between the two.
            try:
                jobs = sv.read_jobs(out / JOURNAL)
            except sv.JournalError:  # not there yet, or being created
                return False
            return any(job.request_id == quick and job.state is sv.JobState.DONE for job in jobs)

        while not (part.exists() and part.stat().st_size > 0 and quick_recorded()):
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    quick_fetches = len(server.requests_for("video", quick))
    resumed = cli("resume", "-o", str(out), "--json", env=env_for(server))
    assert resumed.returncode == 0, resumed.stderr
    assert_clean(resumed)
    resumed_ids = {r["request_id"] for r in json_lines(resumed.stdout)}
    assert slow in resumed_ids
    assert quick not in resumed_ids  # done in the journal: not even asked about
    for rid in (quick, slow, later):
        assert sha256_of(out / f"{rid}_0.mp4") == server.video_sha256(rid)
    assert len(server.requests_for("video", quick)) == quick_fetches
    assert {r["state"] for r in jobs_json("--journal", str(out / JOURNAL))} == {"done"}


def test_enqueue_records_and_resume_downloads(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """enqueue asks SiliconFlow nothing and needs no key; resume --journal then downloads
    every id, and a failed job makes it exit 1 as download would."""
    good = server.add_job(videos=[5000])
    failed = server.add_job(outcome="Failed", reason="nsfw")
    journal = tmp_path / "jobs.db"
    out = tmp_path / "videos"
    proc = cli("enqueue", good, failed, "-o", str(out), "--journal", str(journal), env=base_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [good, "waiting", failed, "waiting"]
    assert server.requests_for("status", good) == []
    assert [r["state"] for r in jobs_json("--journal", str(journal))] == ["waiting", "waiting"]
    resumed = cli("resume", "--journal", str(journal), env=env_for(server))
    assert resumed.returncode == 1, resumed.stderr
    assert_clean(resumed)
    assert sha256_of(out / f"{good}_0.mp4") == server.video_sha256(good)
    [line] = error_lines(resumed.stderr)
    assert "nsfw" in line
    rows = {r["request_id"]: r for r in jobs_json("--journal", str(journal))}
    assert rows[good]["state"] == "done"
    assert rows[failed]["state"] == "failed"
    assert rows[failed]["error"]["type"] == "JobFailedError"  # type: ignore[index]
    again = cli("resume", "--journal", str(journal), env=env_for(server))
    assert again.returncode == 0, again.stderr


def test_jobs_reads_an_unwritable_journal_without_a_key(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """jobs lists a journal nobody may write, with no key set; resume on it is exit 2."""
    rid = server.add_job(videos=[1000])
    journal = tmp_path / "j.db"
    assert (
        cli(
            "enqueue", rid, "-o", str(tmp_path), "--journal", str(journal), env=base_env()
        ).returncode
        == 0
    )
    with immutable(journal) as locked:
        if not locked:
            pytest.skip("cannot make a file immutable here")
        proc = cli("jobs", "--journal", str(journal), env=base_env())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[:2] == [rid, "waiting"]
        resumed = cli("resume", "--journal", str(journal), env=env_for(server))
    assert resumed.returncode == 2
    assert_clean(resumed)
    [line] = error_lines(resumed.stderr)
    assert "cannot be written" in line
    assert server.requests_for("status", rid) == []


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "newer"])
def test_a_bad_journal_is_one_line_and_exit_2(
    server: FakeSiliconFlow, tmp_path: Path, kind: str
) -> None:
    """A damaged file, another application's database or a newer schema: download, resume
    and jobs each print one error line and exit 2, and leave the file as it was."""
    journal = tmp_path / "j.db"
    if kind == "corrupt":
        journal.write_bytes(b"certainly not sqlite" * 50)
    else:
        conn = sqlite3.connect(journal)
        if kind == "foreign":
            conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        else:
            done = cli(
                "enqueue", "r1", "--journal", str(journal), "-o", str(tmp_path), env=base_env()
            )
            assert done.returncode == 0, done.stderr
            conn.execute("PRAGMA user_version = 99")
        conn.commit()
        conn.close()
    before = journal.read_bytes()
    rid = server.add_job()
    for args in (
        ("download", rid, "-o", str(tmp_path / "v"), "--journal", str(journal)),
        ("resume", "--journal", str(journal)),
        ("jobs", "--journal", str(journal)),
    ):
        proc = cli(*args, env=env_for(server))
        assert proc.returncode == 2, (args, proc.stderr)
        assert_clean(proc)
        [line] = error_lines(proc.stderr)
        assert " — " in line
    assert journal.read_bytes() == before
    assert server.requests_for("status", rid) == []


def test_resume_and_jobs_need_a_journal(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """resume and jobs without --journal or -o, or with no journal there: exit 2, one line."""
    for args in (
        ("resume",),
        ("jobs",),
        ("resume", "-o", str(tmp_path)),
        ("jobs", "-o", str(tmp_path)),
    ):
        proc = cli(*args, env=env_for(server))
        assert proc.returncode == 2, (args, proc.stderr)
        assert_clean(proc)
        assert len(error_lines(proc.stderr)) == 1


# --- submit --------------------------------------------------------------------------------


def prompts(path: Path, *lines: dict[str, object] | str) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


MODEL = "Wan-AI/Wan2.2-T2V-A14B"


def test_submit_from_file_never_pays_twice(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """Each line is submitted once; a rerun with the same journal submits nothing and
    reports every line as already submitted, and --download brings every video."""
    file = prompts(
        tmp_path / "p.jsonl",
        {"model": MODEL, "prompt": "a paper boat", "key": "boat"},
        {"model": MODEL, "prompt": "a red fox", "seed": 7},
        "",
        {"model": MODEL, "prompt": "a red fox", "seed": 7},  # the same job again
    )
    journal = tmp_path / "j.db"
    before = len(server.requests_for("submit"))
    proc = cli(
        "submit", "--from-file", str(file), "--journal", str(journal), "--json", env=env_for(server)
    )
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc)
    first = {r["line"]: r for r in json_lines(proc.stdout)}
    assert sorted(first) == [1, 2]
    assert {r["result"] for r in first.values()} == {"submitted"}
    assert len(server.requests_for("submit")) == before + 2
    out = tmp_path / "v"
    again = cli(
        "submit",
        "--from-file",
        str(file),
        "--journal",
        str(journal),
        "--download",
        str(out),
        "--json",
        env=env_for(server),
    )
    assert again.returncode == 0, again.stderr
    assert len(server.requests_for("submit")) == before + 2
    lines = json_lines(again.stdout)
    reported = {r["line"]: r for r in lines if "line" in r}
    assert {r["result"] for r in reported.values()} == {"already_submitted"}
    assert {n: r["request_id"] for n, r in reported.items()} == {
        n: r["request_id"] for n, r in first.items()
    }
    rows = [r for r in lines if "status" in r]
    assert {r["request_id"] for r in rows} == {r["request_id"] for r in first.values()}
    for row in rows:
        assert sha256_of(row["paths"][0]) == server.video_sha256(row["request_id"])


def test_a_bad_line_names_its_number_and_nothing_is_submitted(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A line that is not JSON, lacks a prompt or has an unknown field: exit 2, one line
    naming the line number, and no POST at all."""
    before = len(server.requests_for("submit"))
    for bad, words in (
        ("{not json", "not JSON"),
        ({"model": MODEL}, "'prompt' is missing"),
        ({"model": MODEL, "prompt": "x", "colour": "red"}, "unknown field 'colour'"),
        ({"model": MODEL, "prompt": "x", "seed": "7"}, "seed must be a whole number"),
    ):
        file = prompts(tmp_path / "p.jsonl", {"model": MODEL, "prompt": "fine"}, bad)
        proc = cli(
            "submit",
            "--from-file",
            str(file),
            "--journal",
            str(tmp_path / "j.db"),
            env=env_for(server),
        )
        assert proc.returncode == 2, proc.stderr
        assert_clean(proc)
        [line] = error_lines(proc.stderr)
        assert "line 2" in line
        assert words in line
    assert len(server.requests_for("submit")) == before


def test_a_submit_whose_answer_was_lost_is_never_sent_again(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A POST reset before its answer is reported submit_unknown (exit 1); a rerun reports
    it again and does not send it; resume lists it without sending it."""
    file = prompts(tmp_path / "p.jsonl", {"model": MODEL, "prompt": "lost", "key": "lost"})
    journal = tmp_path / "j.db"
    server.add_fault("submit", ConnectionReset(), times=1)
    before = len(server.requests_for("submit"))
    proc = cli("submit", "--from-file", str(file), "--journal", str(journal), env=env_for(server))
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    assert proc.stdout.split()[:3] == ["line", "1", "-"]
    assert "submit_unknown" in proc.stdout
    sent = len(server.requests_for("submit"))
    again = cli("submit", "--from-file", str(file), "--journal", str(journal), env=env_for(server))
    assert again.returncode == 1, again.stderr
    assert "submit_unknown" in again.stdout
    assert len(server.requests_for("submit")) == sent
    assert sent - before <= 1
    [job] = jobs_json("--journal", str(journal))
    assert job["state"] == "submit_unknown"
    resumed = cli("resume", "--journal", str(journal), env=env_for(server))
    assert resumed.returncode == 1
    assert "submit_unknown" in resumed.stderr
    assert len(server.requests_for("submit")) == sent


def test_a_garbled_submit_answer_reads_submit_unknown_not_failed(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A submit answered with broken JSON (the job was made) is reported as the journal
    has it, submit_unknown, never "failed": a person who trusts "failed" would pay twice."""
    file = prompts(
        tmp_path / "p.jsonl",
        {"model": MODEL, "prompt": "garbled", "key": "g"},
    )
    journal = tmp_path / "j.db"
    server.add_fault("submit", TruncatedJSON(), times=1)
    proc = cli(
        "submit",
        "--from-file",
        str(file),
        "--journal",
        str(journal),
        "--json",
        env=env_for(server),
    )
    [row] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["result"] == "submit_unknown", proc.stdout
    [job] = jobs_json("--journal", str(journal))
    assert job["state"] == "submit_unknown"


def test_one_submit_with_a_journal_records_it(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """submit --journal records the job with its destination, so resume can fetch it."""
    journal = tmp_path / "j.db"
    proc = cli(
        "submit",
        "--model",
        MODEL,
        "--prompt",
        "a kite",
        "--journal",
        str(journal),
        env=env_for(server),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rid = proc.stdout.strip()
    [job] = jobs_json("--journal", str(journal))
    assert (job["request_id"], job["state"]) == (rid, "waiting")
    resumed = cli("resume", "--journal", str(journal), env=env_for(server))
    assert resumed.returncode == 0, resumed.stderr
    assert job["dest"] == str(tmp_path)
    assert sha256_of(tmp_path / f"{rid}_0.mp4") == server.video_sha256(rid)
    assert KEY not in Path(journal).read_bytes().decode("latin-1")


def test_a_reset_submit_costs_only_its_own_line(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """submit --from-file --download with one POST reset: that line is submit_unknown (never
    sent again), every other line is submitted and its video downloaded once; a rerun
    sends nothing and reuses every file."""
    file = prompts(
        tmp_path / "p.jsonl",
        *({"model": MODEL, "prompt": f"reset {n}", "key": f"r{n}"} for n in range(4)),
    )
    out = tmp_path / "v"
    server.add_fault("submit", ConnectionReset(), times=1)
    before = len(server.requests_for("submit"))
    args = ("submit", "--from-file", str(file), "--download", str(out), "--json")
    proc = cli(*args, env=env_for(server))
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    lines = json_lines(proc.stdout)
    results = sorted(r["result"] for r in lines if "line" in r)
    assert results == ["submit_unknown", "submitted", "submitted", "submitted"]
    [lost] = [r for r in lines if r.get("result") == "submit_unknown"]
    assert "never sent again" in lost["error"]["message"]
    made = {r["request_id"] for r in lines if r.get("result") == "submitted"}
    rows = [r for r in lines if "status" in r]
    assert {r["request_id"] for r in rows} == made
    for row in rows:
        assert row["error"] is None
        assert sha256_of(row["paths"][0]) == server.video_sha256(row["request_id"])
        assert len(server.requests_for("video", row["request_id"])) == 1
    sent = len(server.requests_for("submit"))
    assert sent - before == 4
    again = json_lines(cli(*args, env=env_for(server)).stdout)
    assert len(server.requests_for("submit")) == sent
    assert sorted(r["result"] for r in again if "line" in r) == [
        "already_submitted",
        "already_submitted",
        "already_submitted",
        "submit_unknown",
    ]
    reused = [f["reused"] for r in again if "status" in r for f in r["files"]]
    assert reused == [True, True, True]
    for rid in made:
        assert len(server.requests_for("video", rid)) == 1


def test_no_balance_midway_stops_the_posts_not_the_downloads(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """submit --from-file --download when the balance runs out after two POSTs: no POST
    after the 402, one error line for it, and the two jobs made are still downloaded."""
    from siliconflow_video.testing import Slow, payment_required

    file = prompts(
        tmp_path / "p.jsonl",
        *({"model": MODEL, "prompt": f"paid {n}", "key": f"paid{n}"} for n in range(6)),
    )
    out = tmp_path / "v"
    first_two = server.add_fault("submit", Slow(0), times=2)  # answered as usual
    broke = server.add_fault("submit", payment_required(), times=None)
    try:
        before = len(server.requests_for("submit"))
        proc = cli(
            "submit", "--from-file", str(file), "--download", str(out), "--json",
            env=env_for(server),
        )  # fmt: skip
        posts = len(server.requests_for("submit")) - before
    finally:
        server.remove_fault(broke)
        if first_two in server.faults:
            server.remove_fault(first_two)
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    lines = json_lines(proc.stdout)
    made = {r["request_id"] for r in lines if r.get("result") == "submitted"}
    assert len(made) == 2
    assert posts <= 2 + 4  # the POSTs in flight when the 402 came, and none after
    rows = [r for r in lines if "status" in r]
    assert {r["request_id"] for r in rows} == made
    for row in rows:
        assert sha256_of(row["paths"][0]) == server.video_sha256(row["request_id"])
    assert any("balance" in line or "402" in line for line in error_lines(proc.stderr)), proc.stderr
