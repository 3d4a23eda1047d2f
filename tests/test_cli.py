"""The ``siliconflow-video`` command line, run as a subprocess against the fake server.

The fake serves from a background thread of the test process; every command runs as
``python -m siliconflow_video ...`` with the key and base URL in its environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from siliconflow_video.testing import ExpiredURL, FakeSiliconFlow, SlowBody, not_found

from .conftest import small_tmpfs

KEY = "sk-cli-test-8f3a1c77e2d94b0bb1a6"
MiB = 1024 * 1024
DOWNLOAD_KEYS = {"request_id", "status", "reason", "paths", "sha256", "files", "error"}
WAIT_KEYS = DOWNLOAD_KEYS | {"urls"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=7)
    with fake.run_in_thread():
        yield fake


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def env_for(fake: FakeSiliconFlow, **extra: str) -> dict[str, str]:
    settings = {"SILICONFLOW_API_KEY": KEY, "SILICONFLOW_BASE_URL": fake.base_url}
    return base_env(**{**settings, **extra})


def cli(
    *args: str,
    env: dict[str, str],
    stdin: str | None = None,
    timeout: float = 30,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siliconflow_video", *args],
        env=env,
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    """No traceback and no key anywhere in what the command printed."""
    for text in (proc.stdout, proc.stderr):
        assert "Traceback" not in text, proc.stderr
        assert KEY not in text


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- download ---------------------------------------------------------------------------------


def test_download_saves_every_video_and_exits_0(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """download: every video of every id lands whole under its final name; one line per id."""
    a = server.add_job(videos=[3000, 5000])
    b = server.add_job(videos=[70_000])
    proc = cli("download", a, b, "-o", str(tmp_path / "out"), env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc)
    lines = proc.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted([a, b])
    assert all(line.split()[1] == "Succeed" for line in lines)
    for rid, count in ((a, 2), (b, 1)):
        for i in range(count):
            path = tmp_path / "out" / f"{rid}_{i}.mp4"
            assert sha256_of(path) == server.video_sha256(rid, i)
            assert str(path) in proc.stdout
    assert not list((tmp_path / "out").glob("*.part*"))


def test_download_json_lines_shape_and_exit_1(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """download --json: one object per id as each finishes, with the documented keys;
    a failed job and an unknown id make exit 1 after the good id is downloaded."""
    failed = server.add_job(outcome="Failed", reason="content moderation")
    good = server.add_job(videos=[4096])
    proc = cli(
        "download",
        failed,
        "unknown-id",
        good,
        "-o",
        str(tmp_path),
        "--json",
        "--sha256",
        env=env_for(server),
    )
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    rows = {r["request_id"]: r for r in json_lines(proc.stdout)}
    assert len(rows) == len(proc.stdout.splitlines()) == 3
    assert all(set(r) == DOWNLOAD_KEYS for r in rows.values())
    bad, unknown, ok = rows[failed], rows["unknown-id"], rows[good]
    assert bad["status"] == "Failed"
    assert bad["reason"] == "content moderation"
    assert bad["error"] == {"type": "JobFailedError", "message": bad["error"]["message"]}
    assert bad["paths"] == []
    assert bad["sha256"] == []
    assert unknown["status"] is None
    assert unknown["error"]["type"] == "BadRequestError"
    assert ok["status"] == "Succeed"
    assert ok["reason"] is None
    assert ok["error"] is None
    assert ok["paths"] == [str(tmp_path / f"{good}_0.mp4")]
    assert ok["sha256"] == [server.video_sha256(good)] == [sha256_of(ok["paths"][0])]
    assert ok["files"] == [
        {
            "path": ok["paths"][0],
            "index": 0,
            "size": 4096,
            "sha256": ok["sha256"][0],
            "reused": False,
        }
    ]
    # One clear line per problem on stderr, saying what to do.
    errors = error_lines(proc.stderr)
    assert len(errors) == 2
    assert all(" — " in line for line in errors)


def test_ids_come_from_a_file_and_from_stdin(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """--from-file FILE and '-' read ids one per line (blank lines and # comments skipped)."""
    a, b, c = (server.add_job(videos=[1000]) for _ in range(3))
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"# my jobs\n{a}\n\n  {b}  \n")
    proc = cli(
        "download",
        "--from-file",
        str(ids_file),
        "-",
        "-o",
        str(tmp_path / "v"),
        "--json",
        env=env_for(server),
        stdin=f"{c}\n{a}\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["request_id"] for r in json_lines(proc.stdout)) == sorted([c, a, b])
    proc = cli("status", "--from-file", "-", "--json", env=env_for(server), stdin=f"{b}\n")
    assert proc.returncode == 0, proc.stderr
    assert [r["request_id"] for r in json_lines(proc.stdout)] == [b]


def test_concurrency_and_timeout_options(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """download --timeout ends the wait for a job that runs too long (exit 3, WaitTimeoutError)
    while --concurrency/--max-requests are accepted and the other id is downloaded."""
    slow = server.add_job(queue_seconds=60)
    fast = server.add_job(videos=[2000])
    proc = cli(
        "download",
        slow,
        fast,
        "-o",
        str(tmp_path),
        "--timeout",
        "1",
        "--concurrency",
        "1",
        "--max-requests",
        "2",
        "--json",
        env=env_for(server),
    )
    assert proc.returncode == 3, proc.stderr
    assert_clean(proc)
    rows = {r["request_id"]: r for r in json_lines(proc.stdout)}
    late, done = rows[slow], rows[fast]
    assert late["status"] == "InQueue"
    assert late["error"]["type"] == "WaitTimeoutError"
    assert done["error"] is None
    assert len(done["paths"]) == 1


# --- status, wait, submit -------------------------------------------------------------------------


def test_status_gives_every_id_its_line(server: FakeSiliconFlow) -> None:
    """status: each id gets its line even when another id errors; exit 1 if any errored."""
    running = server.add_job(queue_seconds=60)
    done = server.add_job(videos=[1000, 1000])
    proc = cli("status", running, "no-such-id", done, "--json", env=env_for(server))
    assert proc.returncode == 1
    assert_clean(proc)
    rows = json_lines(proc.stdout)
    assert [r["request_id"] for r in rows] == [running, "no-such-id", done]
    assert all(set(r) == WAIT_KEYS for r in rows)
    assert rows[0]["status"] == "InQueue"
    assert rows[0]["error"] is None
    assert rows[0]["urls"] == []
    assert rows[1]["error"]["type"] == "BadRequestError"
    assert rows[2]["status"] == "Succeed"
    assert len(rows[2]["urls"]) == 2
    assert rows[2]["paths"] == []
    assert rows[2]["sha256"] == []
    human = cli("status", running, done, env=env_for(server))
    assert human.returncode == 0
    assert [line.split()[:2] for line in human.stdout.splitlines()] == [
        [running, "InQueue"],
        [done, "Succeed"],
    ]


def test_wait_prints_urls_without_downloading(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """wait: waits for the jobs and prints their URLs; nothing is downloaded."""
    rid = server.add_job(queue_seconds=0.2, run_seconds=0.2, videos=[1000])
    proc = cli("wait", rid, "--json", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc)
    (row,) = json_lines(proc.stdout)
    assert set(row) == WAIT_KEYS
    assert row["status"] == "Succeed"
    assert len(row["urls"]) == 1
    assert f"/{rid}/0/" in row["urls"][0]
    assert not server.requests_for("video", rid)
    failed = server.add_job(outcome="Failed", reason="nsfw")
    proc = cli("wait", failed, env=env_for(server))
    assert proc.returncode == 1
    assert "reason: nsfw" in proc.stdout


def test_submit_prints_the_request_id(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """submit prints the requestId; with --download it also waits and saves the video."""
    image = tmp_path / "frame.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    proc = cli(
        "submit",
        "--model",
        "Wan-AI/Wan2.2-I2V-A14B",
        "--prompt",
        "a cat",
        "--image",
        str(image),
        "--seed",
        "7",
        "--image-size",
        "960x960",
        env=env_for(server),
    )
    assert proc.returncode == 0, proc.stderr
    rid = proc.stdout.strip()
    body = server.jobs[rid].submitted
    assert body is not None
    assert body["prompt"] == "a cat"
    assert body["seed"] == 7
    assert str(body["image"]).startswith("data:image/png;base64,")
    assert body["image_size"] == "960x960"

    proc = cli(
        "submit",
        "--model",
        "m",
        "--prompt",
        "p",
        "--download",
        str(tmp_path / "v"),
        "--json",
        env=env_for(server),
    )
    assert proc.returncode == 0, proc.stderr
    submitted, row = json_lines(proc.stdout)
    assert submitted == {"request_id": row["request_id"], "submitted": True}
    assert set(row) == DOWNLOAD_KEYS
    assert row["error"] is None
    assert row["sha256"] == [None]  # one entry per path; hashing was not asked for

    # A size SiliconFlow rejects, and one that is no size at all: usage errors naming it.
    for size in ("1x1", "big"):
        args = ("submit", "--model", "m", "--prompt", "p", "--image-size", size)
        bad = cli(*args, env=env_for(server))
        assert bad.returncode == 2, bad.stderr
        assert_clean(bad)
        assert size in bad.stderr
        assert "--image-size" in bad.stderr


# --- exit codes and errors ---------------------------------------------------------------------


def test_missing_key_is_a_usage_error(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """No key: exit 2 with one line naming SILICONFLOW_API_KEY, for every command."""
    env = base_env(SILICONFLOW_BASE_URL=server.base_url)
    for args in (
        ("download", "abc", "-o", str(tmp_path)),
        ("status", "abc"),
        ("wait", "abc"),
        ("submit", "--model", "m", "--prompt", "p"),
    ):
        proc = cli(*args, env=env)
        assert proc.returncode == 2, args
        assert_clean(proc)
        (line,) = error_lines(proc.stderr)
        assert "SILICONFLOW_API_KEY" in line


def test_usage_errors_exit_2(server: FakeSiliconFlow) -> None:
    """Bad command lines exit 2 without a traceback; --help exits 0."""
    env = env_for(server)
    for args in (
        ("download",),
        ("frobnicate",),
        ("download", "abc", "--concurrency", "0"),
        ("wait", "abc", "--timeout", "soon"),
        ("submit", "--prompt", "p"),
        ("status", "--from-file", "/no/such/file"),
    ):
        proc = cli(*args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert_clean(proc)
    bad_url = cli("status", "abc", env=env_for(server, SILICONFLOW_BASE_URL="ftp://x"))
    assert bad_url.returncode == 2
    assert_clean(bad_url)
    assert cli("--help", env=env).returncode == 0


def test_wrong_key_gives_one_clear_line(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """A rejected key: exit 2 and one line about HTTP 401 and SILICONFLOW_API_KEY."""
    rid = server.add_job()
    env = env_for(server, SILICONFLOW_API_KEY="sk-wrong")
    for args in (("download", rid, "-o", str(tmp_path)), ("status", rid), ("wait", rid)):
        proc = cli(*args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert_clean(proc)
        (line,) = error_lines(proc.stderr)
        assert "401" in line
        assert "SILICONFLOW_API_KEY" in line
        assert ".cn vs .com" in line


def test_network_down_gives_one_clear_line(tmp_path: Path) -> None:
    """No server at the base URL: exit 1 and one 'cannot reach' line, for every command."""
    url = closed_port_url()
    env = base_env(SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=url)
    commands = [
        ("download", "abc", "-o", str(tmp_path)),
        ("status", "abc", "def"),
        ("wait", "abc"),
        ("submit", "--model", "m", "--prompt", "p"),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "siliconflow_video", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for args in commands
    ]
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=30)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert done.returncode == 1, (args, err)
        assert_clean(done)
        (line,) = error_lines(err)
        assert line == f"error: cannot reach {url} — check your network or --base-url"


def test_unknown_id_gives_one_clear_line(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """An id the API does not know: exit 1 and one line that names it."""
    for args in (("download", "zz-unknown", "-o", str(tmp_path)), ("wait", "zz-unknown")):
        proc = cli(*args, env=env_for(server))
        assert proc.returncode == 1
        assert_clean(proc)
        (line,) = error_lines(proc.stderr)
        assert "'zz-unknown'" in line
        assert "HTTP 400, code 20012" in line


def test_destination_that_is_a_file(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """-o naming an existing file: exit 1 and one line, before any waiting."""
    rid = server.add_job()
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    proc = cli("download", rid, "-o", str(target), env=env_for(server))
    assert proc.returncode == 1
    assert_clean(proc)
    (line,) = error_lines(proc.stderr)
    assert str(target) in line
    assert "destination folder" in line
    assert not server.requests_for("video", rid)


def test_disk_full(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """A 2 MiB video into a 1 MiB tmpfs: refused once its size is known, before a byte is
    written: exit 1, one line with the sizes, no final file and no partial one."""
    rid = server.add_job(videos=[2 * MiB])
    with small_tmpfs(tmp_path / "small") as small:
        if small is None:
            pytest.skip("cannot mount a tmpfs here")
        proc = cli("download", rid, "-o", str(small), "--no-journal", env=env_for(server))
        assert proc.returncode == 1
        assert_clean(proc)
        (line,) = error_lines(proc.stderr)
        assert f"not enough free space in {small} for {rid}_0.mp4: 2.0 MiB still to download" in (
            line
        )
        assert "free space" in line.partition(" — ")[2]
        assert sorted(p.name for p in small.iterdir()) == []


def test_videos_that_fit_one_by_one_but_not_together(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Two 600 KiB videos for a 1 MiB tmpfs: the one that fits is saved, the other is
    refused with the sizes (counting what the first still takes), not left half-written."""
    ids = [server.add_job(videos=[600 * 1024]) for _ in range(2)]
    with small_tmpfs(tmp_path / "small") as small:
        if small is None:
            pytest.skip("cannot mount a tmpfs here")
        args = ("download", *ids, "-o", str(small), "--no-journal", "--json")
        proc = cli(*args, "--concurrency", "2", env=env_for(server))
        assert proc.returncode == 1
        rows = json_lines(proc.stdout)
        ok = [r for r in rows if r["error"] is None]
        refused = [r for r in rows if r["error"] is not None]
        assert len(ok) == 1
        assert len(refused) == 1
        assert "not enough free space" in refused[0]["error"]["message"]
        assert sha256_of(ok[0]["paths"][0]) == server.video_sha256(ok[0]["request_id"])
        assert not list(small.glob("*.part"))


def test_folder_without_write_permission(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """A folder that cannot be written: exit 1 and one line (read-only mount as root)."""
    rid = server.add_job()
    if os.geteuid() == 0:
        ctx: contextlib.AbstractContextManager[Path | None] = small_tmpfs(tmp_path / "ro", "ro")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        ctx = contextlib.nullcontext(locked)
    with ctx as folder:
        if folder is None:
            pytest.skip("cannot mount a read-only tmpfs here")
        proc = cli("download", rid, "-o", str(folder), env=env_for(server))
    assert proc.returncode == 1
    assert_clean(proc)
    (line,) = error_lines(proc.stderr)
    assert str(folder) in line


def test_key_never_printed_at_verbose(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """-v shows debug logs, yet the key appears nowhere, even given with --api-key."""
    rid = server.add_job(videos=[1000])
    env = env_for(server)
    no_key_env = base_env(SILICONFLOW_BASE_URL=server.base_url)
    runs = [
        cli("-v", "download", rid, "-o", str(tmp_path), env=env),
        cli("status", rid, "-v", "--json", env=env),
        cli("-v", "wait", rid, env=env),
        cli("-v", "--api-key", KEY, "status", rid, env=no_key_env),
        cli("-v", "submit", "--model", "m", "--prompt", "p", env=env),
        cli("-v", "status", rid, env=env_for(server, SILICONFLOW_API_KEY=KEY + "x")),
    ]
    for proc in runs:
        assert_clean(proc)
    assert "DEBUG" in runs[0].stderr
    assert "POST /video/status" in runs[0].stderr
    assert [p.returncode for p in runs] == [0, 0, 0, 0, 0, 2]


def test_unexpected_error_is_one_line_and_traceback_only_at_verbose(
    server: FakeSiliconFlow,
) -> None:
    """A bug gives one 'unexpected' line (exit 1); its traceback only at -v, redacted."""
    script = (
        "import sys, siliconflow_video._cli as c, siliconflow_video._cli._commands as cmd\n"
        "async def boom(self):\n"
        f"    raise RuntimeError('kaput {KEY}')\n"
        "cmd.Cli.status = boom\n"
        "raise SystemExit(c.main(sys.argv[1:]))\n"
    )
    env = env_for(server)
    for verbose in (False, True):
        args = ["-v"] if verbose else []
        proc = subprocess.run(
            [sys.executable, "-c", script, *args, "status", "abc"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1
        assert KEY not in proc.stdout + proc.stderr
        (line,) = error_lines(proc.stderr)
        assert line == (
            "error: unexpected RuntimeError: kaput *** — please report this "
            "(run with -v for details)"
        )
        assert ("Traceback" in proc.stderr) is verbose


def test_ctrl_c_keeps_the_partial_download(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """SIGINT mid-download: exit 130, one line, a .part kept, no final file; a rerun resumes."""
    rid = server.add_job(videos=[6 * MiB])
    server.add_fault("video", SlowBody(bytes_per_second=1 * MiB), request_id=rid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", "download", rid, "-o", str(tmp_path)],
        env=env_for(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(20, proc.kill)
    watchdog.start()
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # plain progress lines: stderr is not a terminal
            seen.append(line)
            # Bytes are on disk (the first line, as the body starts, says 0 B).
            if f"{rid}: video 0:" in line and ": 0 B of" not in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        watchdog.cancel()
    assert proc.returncode == 130, "".join(seen) + err
    assert "Traceback" not in err
    assert out == ""
    assert err.strip().endswith(
        "interrupted — partial downloads are kept and will resume on the next run"
    )
    final = tmp_path / f"{rid}_0.mp4"
    part = tmp_path / f"{rid}_0.mp4.part"
    assert not final.exists()
    kept = part.stat().st_size
    assert 0 < kept < 6 * MiB

    again = cli("download", rid, "-o", str(tmp_path), env=env_for(server))
    assert again.returncode == 0, again.stderr
    assert sha256_of(final) == server.video_sha256(rid)
    ranges = [r.headers.get("Range") for r in server.requests_for("video", rid)]
    assert ranges[-1] == f"bytes={kept}-"


def test_no_rerun_advice_where_a_rerun_cannot_help(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """A 404 from the video host, an expired URL with no fresh one and a failed job each say
    what will help instead of 'run the same command again'."""
    gone = server.add_job(videos=[1000])
    server.add_fault("video", not_found(), request_id=gone, times=None)
    expired = server.add_job(videos=[1000])
    server.add_fault("video", ExpiredURL(), request_id=expired, times=None)
    failed = server.add_job(outcome="Failed", reason="nsfw")
    proc = cli("download", gone, expired, failed, "-o", str(tmp_path), env=env_for(server))
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    errors = error_lines(proc.stderr)
    assert len(errors) == 3, proc.stderr
    for rid in (gone, expired, failed):
        (line,) = [e for e in errors if rid in e]
        assert "run the same command again" not in line
        assert "submit" in line.partition(" — ")[2]
    (line,) = [e for e in errors if gone in e]
    assert "HTTP 404" in line.partition(" — ")[2]


def test_one_failure_is_printed_once_in_the_results_and_once_on_stderr(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A failed download: its message once on stdout (the result) and once on stderr (the
    summary), not again in a progress line."""
    rid = server.add_job(videos=[1000])
    server.add_fault("video", not_found(), request_id=rid, times=None)
    proc = cli("download", rid, "-o", str(tmp_path), env=env_for(server))
    assert proc.returncode == 1, proc.stderr
    message = "404 page not found"  # the host's answer, quoted in the error
    assert proc.stdout.count(message) == 1
    assert proc.stderr.count(message) == 1
    (line,) = error_lines(proc.stderr)
    assert message in line


def test_demo_report_compares_each_file_with_its_own_digest(tmp_path: Path) -> None:
    """When a job's first video failed, its second is checked against the second digest."""
    from siliconflow_video import DownloadError, Outcome, VideoFile
    from siliconflow_video._cli._demo import DemoRun, demo_report

    second = VideoFile(tmp_path / "r_1.mp4", 10, "bb" * 32, reused=False, index=1)
    outcome = Outcome("r", None, (second,), DownloadError("video 0 failed", request_id="r"))
    run = DemoRun("http://127.0.0.1:1/v1", [outcome], {"r": ["aa" * 32, "bb" * 32]})
    lines = demo_report(run, tmp_path)
    (line,) = [line for line in lines if "r_1.mp4" in line]
    assert line.endswith("verified")


# --- demo, terminal, entry points --------------------------------------------------------------


def test_demo_runs_with_no_key_and_no_network(tmp_path: Path) -> None:
    """demo: no key in the environment (and a dead base URL), exit 0, three verified videos."""
    env = base_env(SILICONFLOW_BASE_URL=closed_port_url())
    started = time.monotonic()
    proc = cli("demo", "-o", str(tmp_path / "demo"), env=env)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 15
    listed = re.findall(r"^\s+(/\S+\.mp4)\s.*sha256 ([0-9a-f]{64})\s+verified$", proc.stdout, re.M)
    assert len(listed) == 3
    for path, digest in listed:
        assert Path(path).parent == (tmp_path / "demo").resolve()
        assert sha256_of(path) == digest
        assert 1 * MiB < Path(path).stat().st_size < 10 * MiB
    assert "SILICONFLOW_API_KEY" in proc.stdout  # the closing hint
    assert "Succeed, downloading" in proc.stderr  # progress went to stderr


def test_live_progress_bars_on_a_terminal(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """With stderr on a terminal, progress is rich live bars; stdout stays plain results."""
    rid = server.add_job(queue_seconds=0.3, videos=[2 * MiB])
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", "download", rid, "-o", str(tmp_path)],
        env=env_for(server, COLUMNS="100", TERM="xterm"),
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    screen = bytearray()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=10) == 0
    text = screen.decode("utf-8", "replace")
    assert "━" in text
    assert "\x1b[" in text
    assert "all jobs" in text
    assert "MiB" in text
    assert out.split()[:2] == [rid, "Succeed"]
    assert "\x1b" not in out


def test_importing_the_library_loads_neither_rich_nor_the_cli() -> None:
    """`import siliconflow_video` loads no rich and no part of the command line."""
    code = (
        "import siliconflow_video, sys\n"
        "assert 'rich' not in sys.modules, 'rich'\n"
        "cli = [m for m in sys.modules if m.split('.')[:2] == ['siliconflow_video', '_cli']]\n"
        "assert not cli, cli\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_console_script_exit_codes(server: FakeSiliconFlow) -> None:
    """The installed console script exits with the same codes as python -m."""
    script = shutil.which("siliconflow-video", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the console script is not installed in this environment")
    rid = server.add_job()

    def run(args: Sequence[str], env: dict[str, str]) -> int:
        return subprocess.run([script, *args], env=env, capture_output=True).returncode

    assert run(["status", rid], env_for(server)) == 0
    assert run(["status", "unknown"], env_for(server)) == 1
    assert run(["status", rid], base_env()) == 2


# --- results as they happen, stops, output trouble ------------------------------------------


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_rows_come_as_ids_finish_and_survive_a_stop(
    server: FakeSiliconFlow, tmp_path: Path, sig: int, code: int, word: str
) -> None:
    """A finished id's JSON line is on stdout while others still run; Ctrl-C or SIGTERM then
    exits 130/143 with one line, the row printed and the partial file kept."""
    fast = server.add_job(videos=[1000])
    queued = server.add_job(queue_seconds=120)
    big = server.add_job(videos=[6 * MiB])
    server.add_fault("video", SlowBody(bytes_per_second=1 * MiB), request_id=big)
    proc = start("download", fast, queued, big, "-o", str(tmp_path), "--json", env=env_for(server))
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = json.loads(proc.stdout.readline())
        assert first["request_id"] == fast
        assert first["files"][0]["size"] == 1000
        assert proc.poll() is None  # the batch goes on
        for line in proc.stderr:
            # Bytes of the big one are on disk (not the first line: 0 B, as it starts).
            if f"{big}: video 0:" in line and ": 0 B of" not in line:
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        watchdog.cancel()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert out == ""  # nothing more finished; the fast row came before
    assert err.strip().splitlines()[-1] == (
        f"{word} — partial downloads are kept and will resume on the next run"
    )
    assert 0 < (tmp_path / f"{big}_0.mp4.part").stat().st_size < 6 * MiB


def test_submit_download_prints_the_id_at_once(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """submit --download prints the requestId before waiting; a Ctrl-C then names it."""
    defaults = server.submit_defaults
    server.submit_defaults = {**defaults, "queue_seconds": 120}
    try:
        proc = start(
            "submit", "--model", "m", "--prompt", "p", "--download", str(tmp_path),
            env=env_for(server),
        )  # fmt: skip
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            rid = proc.stdout.readline().strip()
            assert rid in server.jobs
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            watchdog.cancel()
    finally:
        server.submit_defaults = defaults
    assert proc.returncode == 130
    assert f"siliconflow-video download {rid} -o {tmp_path}" in err


def shell(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30
    )


def test_closed_full_and_cut_stdout(server: FakeSiliconFlow) -> None:
    """>&- and > /dev/full give one clear line; a pipe closed by head ends quietly."""
    rid = server.add_job()
    py = f"{sys.executable} -m siliconflow_video"
    closed = shell(f"{py} status {rid} >&-", env_for(server))
    assert closed.returncode == 2
    (line,) = error_lines(closed.stderr)
    assert "stdout is closed" in line
    if Path("/dev/full").exists():
        full = shell(f"{py} status {rid} > /dev/full", env_for(server))
        assert full.returncode == 1
        assert full.stderr.strip().splitlines() == [
            "error: cannot write the results to stdout: No space left on device — free some "
            "space where stdout goes, or send it elsewhere (> another/file)"
        ]
    ids = " ".join(server.add_job() for _ in range(300))
    cut = shell(f"{py} status {ids} --json | head -n 1", env_for(server))
    assert len(cut.stdout.splitlines()) == 1
    assert cut.stderr == ""


def test_small_usage_errors(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """Options are checked and named: --download FILE, an unknown option, -q -v, -o ''."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    env = env_for(server)
    jobs = len(server.jobs)
    proc = cli("submit", "--model", "m", "--prompt", "p", "--download", str(afile), env=env)
    (line,) = error_lines(proc.stderr)
    assert "another --download folder" in line
    assert " -o " not in line
    assert len(server.jobs) == jobs  # checked before paying for a video
    unknown = cli("download", "abc", "--bogus", env=env)
    assert unknown.returncode == 2
    assert "usage: siliconflow-video download" in unknown.stderr
    assert "--bogus" in unknown.stderr
    both = cli("-q", "status", "abc", "-v", env=env)
    assert both.returncode == 2
    assert "-q and -v" in both.stderr
    empty = cli("download", "abc", "-o", "", env=env)
    assert empty.returncode == 2
    assert "folder name is empty" in empty.stderr


def test_rejected_api_key_option_is_named(server: FakeSiliconFlow) -> None:
    """A rejected --api-key is named as --api-key, not as the environment variable."""
    rid = server.add_job()
    env = base_env(SILICONFLOW_BASE_URL=server.base_url)
    proc = cli("--api-key", "sk-wrong", "status", rid, env=env)
    assert proc.returncode == 2
    (line,) = error_lines(proc.stderr)
    assert "check --api-key" in line
    assert "SILICONFLOW_API_KEY" not in line


def test_status_dash_on_a_terminal_says_it_reads_stdin(server: FakeSiliconFlow) -> None:
    """status - with stdin on a terminal prints a hint, then reads the ids typed."""
    rid = server.add_job()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", "status", "-"],
        env=env_for(server),
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    os.write(leader, f"{rid}\n".encode())
    os.write(leader, b"\x04")  # Ctrl-D at the start of a line: end of input
    out, err = proc.communicate(timeout=30)
    os.close(leader)
    assert proc.returncode == 0, err
    assert "reading request ids from stdin" in err
    assert out.split()[:2] == [rid, "Succeed"]


# --- options ------------------------------------------------------------------------------------


def test_name_template(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """--name names the files; a bad or unsafe template, or one that gives two ids the
    same name, is refused."""
    rid = server.add_job(videos=[1000, 1000])
    env = env_for(server)
    proc = cli("download", rid, "-o", str(tmp_path), "--name", "clip-{index}-{request_id}{ext}",
               env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for i in (0, 1):
        assert sha256_of(tmp_path / f"clip-{i}-{rid}.mp4") == server.video_sha256(rid, i)
    for bad in ("{nope}{ext}", "../{request_id}_{index}{ext}", ".{request_id}{index}"):
        refused = cli("download", rid, "-o", str(tmp_path), "--name", bad, env=env)
        assert refused.returncode == 2, bad
        assert_clean(refused)
        assert "--name" in refused.stderr
    a, b = server.add_job(videos=[10]), server.add_job(videos=[10])
    same = cli("download", a, b, "-o", str(tmp_path / "s"), "--name", "v{index}{ext}", env=env)
    assert same.returncode == 1
    assert len(list((tmp_path / "s").glob("*.mp4"))) == 1
    assert "--name gives 'v0.mp4'" in same.stderr


def test_retries_and_read_timeout(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """--retries 0 makes one 503 from the video host final; --read-timeout cuts a silent
    host off after that many seconds."""
    from siliconflow_video.testing import StallMidBody, server_error

    rid = server.add_job(videos=[1000])
    server.add_fault("video", server_error(503), request_id=rid)
    proc = cli("download", rid, "-o", str(tmp_path), "--retries", "0", env=env_for(server))
    assert proc.returncode == 1
    assert "after 1 tries" in proc.stderr
    stalled = server.add_job(videos=[100_000])
    server.add_fault("video", StallMidBody(after_bytes=1000, seconds=10), request_id=stalled)
    args = ("--retries", "0", "--read-timeout", "0.3", "--connect-timeout", "5")
    proc = cli("download", stalled, "-o", str(tmp_path), *args, env=env_for(server))
    assert proc.returncode == 1
    assert "read timeout 0.3 s" in proc.stderr


def test_id_files_with_inline_comments_commas_and_spaces(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """An id file may hold inline # comments and several ids per line, split by , or spaces."""
    a, b, c, d = (server.add_job() for _ in range(4))
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{a}  # the first\n{b}, {c}\n{d} {a}\n")
    proc = cli("status", "--from-file", str(ids), "--json", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    assert [r["request_id"] for r in json_lines(proc.stdout)] == [a, b, c, d]


# --- plain mode --------------------------------------------------------------------------------


def test_plain_progress_says_each_change_once_and_sums_up(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Off a terminal: each state change is one line, and a last line sums the run up;
    a rerun counts the files already complete."""
    a = server.add_job(queue_seconds=0.2, run_seconds=0.2, videos=[3000])
    b = server.add_job(videos=[5000])
    proc = cli("download", a, b, "-o", str(tmp_path), env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    for rid in (a, b):
        assert proc.stderr.count(f"{rid}: Succeed, downloading") == 1
        assert proc.stderr.count(f"{rid}: done") == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"summary: 2 succeeded \(0 already complete\), 0 failed, 0 unfinished; "
        r"7\.8 KiB downloaded in \d+\.\d s",
        last,
    ), last
    again = cli("download", a, b, "-o", str(tmp_path), env=env_for(server))
    assert "summary: 2 succeeded (2 already complete), 0 failed" in again.stderr
    assert "0 B downloaded" in again.stderr
