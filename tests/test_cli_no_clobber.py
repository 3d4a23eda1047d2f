"""--no-clobber with jobs of several videos: an id is skipped only when every video it is
missing was kept for a file already there; real processes against the fake SiliconFlow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from siliconflow_video.testing import FakeSiliconFlow, not_found

from .test_cli import KEY, assert_clean, cli, env_for, json_lines


@pytest.fixture
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=23)
    with fake.run_in_thread():
        yield fake


def test_a_kept_file_does_not_hide_a_sibling_video_that_failed(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Video 0's name holds a file of mine, video 1 cannot be downloaded: the id failed
    (exit 1, the 404 as its error), not skipped, and the summary counts it failed."""
    rid = server.add_job(videos=[5000, 6000])
    mine = tmp_path / f"{rid}_0.mp4"
    mine.write_bytes(b"my own notes")
    server.add_fault("video", not_found(), times=None, request_id=rid)
    args = ("download", rid, "-o", str(tmp_path), "--no-clobber", "--retries", "1")
    proc = cli(*args, "--json", env=env_for(server))
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    [row] = json_lines(proc.stdout)
    assert row["error"] is not None
    assert row["error"]["type"] != "ForeignFileError"
    assert "skipped" not in row
    assert "0 succeeded (0 already complete), 1 failed" in proc.stderr
    assert mine.read_bytes() == b"my own notes"
    assert not (tmp_path / f"{rid}_1.mp4").exists()


def test_every_kept_file_is_listed_when_all_are_kept(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Both videos' names hold files of mine: the id is skipped (exit 0) and both are listed."""
    rid = server.add_job(videos=[5000, 6000])
    mine = [tmp_path / f"{rid}_{i}.mp4" for i in (0, 1)]
    for path in mine:
        path.write_bytes(b"my own notes")
    proc = cli("download", rid, "-o", str(tmp_path), "--no-clobber", "--json", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    [row] = json_lines(proc.stdout)
    assert row["error"] is None
    assert row["skipped"] == [str(p) for p in mine]
    assert "1 skipped" in proc.stderr


def test_a_skipped_id_stays_unfinished_in_the_journal_until_its_video_is_there(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Video 1 downloaded, video 0 kept for my file: the summary says skipped and left for
    resume, the journal lists the id failed; resume --no-clobber skips it again (exit 0, no
    journal error), and once my file is moved away resume downloads video 0."""
    rid = server.add_job(videos=[5000, 6000])
    mine = tmp_path / f"{rid}_0.mp4"
    mine.write_bytes(b"my own notes")
    env = env_for(server)
    proc = cli("download", rid, "-o", str(tmp_path), "--no-clobber", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    [row] = json_lines(proc.stdout)
    assert row["skipped"] == [str(mine)]
    assert [f["index"] for f in row["files"]] == [1]
    assert "1 skipped (file already there; left unfinished for resume)" in proc.stderr
    jobs = cli("jobs", "-o", str(tmp_path), env=env)
    assert f"{rid}  failed" in jobs.stdout
    again = cli("resume", "-o", str(tmp_path), "--no-clobber", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert_clean(again)
    [row] = json_lines(again.stdout)
    assert row["error"] is None
    assert row["skipped"] == [str(mine)]
    assert row["files"][0]["reused"] is True
    mine.rename(tmp_path / "my-notes.txt")
    done = cli("resume", "-o", str(tmp_path), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"{rid}_0.mp4").read_bytes() == server.video_bytes(rid, 0)
    assert f"{rid}  done" in cli("jobs", "-o", str(tmp_path), env=env).stdout
