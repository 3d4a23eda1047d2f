"""The command line's options for files already there (--force, --no-clobber), the rate cap
(--limit-rate), -v's request log, and the messages for a wrong base URL and a timeout with
nothing heard: real processes against the package's fake SiliconFlow."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from siliconflow_video import DownloadPolicy, WaitTimeoutError
from siliconflow_video._cli._explain import explain
from siliconflow_video.testing import FakeSiliconFlow

from .test_cli import KEY, assert_clean, base_env, cli, env_for, error_lines, json_lines, sha256_of


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=11)
    with fake.run_in_thread():
        yield fake


# --- files already at a video's name ----------------------------------------------------------


def test_a_file_already_there_fails_the_id_and_is_left_alone(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """By default a file the tool did not download as that video fails the id (exit 1),
    is not touched, and the message names --force and --no-clobber."""
    rid = server.add_job(videos=[4000])
    mine = tmp_path / f"{rid}_0.mp4"
    mine.write_bytes(b"my own notes")
    proc = cli("download", rid, "-o", str(tmp_path), env=env_for(server))
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc)
    assert mine.read_bytes() == b"my own notes"
    [line] = error_lines(proc.stderr)
    assert "already exists" in line
    assert "--force" in line
    assert "--no-clobber" in line
    assert "DownloadPolicy" not in line  # the library's knob, not the command's


def test_no_clobber_keeps_the_file_and_reports_the_id_skipped(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """--no-clobber: the file is kept, the video not downloaded, the id is skipped (not
    failed, exit 0), in the row, in JSON and in the summary."""
    rid = server.add_job(videos=[4000])
    other = server.add_job(videos=[3000])
    mine = tmp_path / f"{rid}_0.mp4"
    mine.write_bytes(b"my own notes")
    args = ("download", rid, other, "-o", str(tmp_path), "--no-clobber")
    proc = cli(*args, "--json", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    assert mine.read_bytes() == b"my own notes"
    rows = {r["request_id"]: r for r in json_lines(proc.stdout)}
    assert rows[rid]["skipped"] == [str(mine)]
    assert rows[rid]["error"] is None
    assert "skipped" not in rows[other]
    assert rows[other]["files"][0]["reused"] is False
    summary = "1 succeeded (0 already complete), 1 skipped (file already there; left "
    assert summary + "unfinished for resume), 0 failed" in proc.stderr
    text = cli(*args, env=env_for(server))
    assert f"skipped: {mine} already exists (kept as it is)" in text.stdout
    assert f"{rid}: skipped: {mine} already exists" in text.stderr  # plain progress


def test_force_replaces_the_file_and_a_rerun_reuses_the_video(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """--force puts the video in the place of a file that was not it; the next run finds
    it recorded as the video and reuses it."""
    rid = server.add_job(videos=[4000])
    mine = tmp_path / f"{rid}_0.mp4"
    mine.write_bytes(b"my own notes")
    proc = cli("download", rid, "-o", str(tmp_path), "--force", "--json", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    assert sha256_of(mine) == server.video_sha256(rid, 0)
    again = cli("download", rid, "-o", str(tmp_path), "--json", env=env_for(server))
    assert again.returncode == 0, again.stderr
    assert json_lines(again.stdout)[0]["files"][0]["reused"] is True


def test_force_and_no_clobber_together_is_a_usage_error(server: FakeSiliconFlow) -> None:
    """--force and --no-clobber contradict each other: exit 2 with the command's usage."""
    proc = cli("download", "x", "--force", "--no-clobber", env=env_for(server))
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr
    assert "usage: siliconflow-video download" in proc.stderr


def test_a_folder_at_the_name_is_refused_even_with_force(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """--force replaces files, never a folder (or a link) at a video's name."""
    rid = server.add_job(videos=[1000])
    (tmp_path / f"{rid}_0.mp4").mkdir()
    proc = cli("download", rid, "-o", str(tmp_path), "--force", env=env_for(server))
    assert proc.returncode == 1
    assert "is not a regular file" in proc.stderr
    assert (tmp_path / f"{rid}_0.mp4").is_dir()


# --- the rate cap ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["fast", "0", "2X", "-1M", ""])
def test_a_bad_limit_rate_is_a_usage_error(server: FakeSiliconFlow, rate: str) -> None:
    """A --limit-rate that is not a rate like 500k or 2M: exit 2, naming it."""
    proc = cli("download", "x", "--limit-rate", rate, env=env_for(server))
    assert proc.returncode == 2
    assert "--limit-rate" in proc.stderr


def test_limit_rate_downloads_whole_videos(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """--limit-rate 4M still brings every video whole (its pace is the benchmark's)."""
    ids = [server.add_job(videos=[200_000]) for _ in range(2)]
    proc = cli("download", *ids, "-o", str(tmp_path), "--limit-rate", "4M", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    for rid in ids:
        assert sha256_of(tmp_path / f"{rid}_0.mp4") == server.video_sha256(rid, 0)


def test_the_rate_policy_is_checked() -> None:
    """DownloadPolicy refuses a rate under one byte per second and unknown file rules."""
    from siliconflow_video import ConfigurationError

    with pytest.raises(ConfigurationError, match="max_bytes_per_second"):
        DownloadPolicy(max_bytes_per_second=0)
    with pytest.raises(ConfigurationError, match="foreign_files"):
        DownloadPolicy(foreign_files="overwrite")  # type: ignore[arg-type]


# --- -v ----------------------------------------------------------------------------------------


def test_verbose_logs_each_video_request_without_its_query(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """-v: one line per video request that brought bytes (host and path, status, bytes),
    never the signed query string."""
    rid = server.add_job(videos=[5000])
    proc = cli("download", rid, "-o", str(tmp_path), "-v", env=env_for(server))
    assert proc.returncode == 0, proc.stderr
    url = server.video_url(rid, 0)
    path_only, _, query = url.partition("?")
    [line] = [line for line in proc.stderr.splitlines() if f"GET {path_only}:" in line]
    assert "HTTP 200, 5000 bytes" in line
    assert query
    assert query not in proc.stderr
    assert "Signature" not in proc.stderr


# --- a wrong base URL, a timeout with nothing heard -------------------------------------------


@pytest.fixture
def html_site() -> Iterator[str]:
    """A web server that answers every request with 200 and an HTML page."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def answer(self) -> None:
            body = b"<!doctype html><html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/v1"
    finally:
        site.shutdown()
        site.server_close()


@pytest.mark.parametrize("command", ["download", "wait", "status"])
def test_a_base_url_answering_html_ends_at_once_with_exit_2(
    html_site: str, tmp_path: Path, command: str
) -> None:
    """A base URL that answers 200 with HTML is not SiliconFlow: one line saying so, exit 2,
    without waiting (the run is bounded by the test's timeout, far below any poll budget)."""
    env = base_env(SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=html_site)
    extra = ("-o", str(tmp_path)) if command == "download" else ()
    proc = cli(command, "id-one", "id-two", *extra, env=env, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert_clean(proc)
    [line] = error_lines(proc.stderr)
    assert line.startswith(f"error: this is not a SiliconFlow API: {html_site} answered")
    assert "SILICONFLOW_BASE_URL" in line
    assert "id-one" not in line  # about the base URL, not an id


def test_a_timeout_with_no_status_read_does_not_claim_the_job_goes_on() -> None:
    """A wait that ran out before any status was read says so, and does not claim the job
    goes on at SiliconFlow; one with a status read does."""
    blind = explain(WaitTimeoutError("abc", 5, None), "https://api.siliconflow.cn/v1")
    assert "no status was read" in blind[0]
    assert "goes on" not in " ".join(blind)
    seen = explain(WaitTimeoutError("abc", 5, "InQueue"), "https://api.siliconflow.cn/v1")
    assert "last status InQueue" in seen[0]
    assert "goes on at SiliconFlow" in seen[1]


# --- another process holds a video's lock -------------------------------------------------------


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock from this process, as a second download would."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_until(fd: int, words: bytes, deadline: float) -> bytes:
    got = bytearray()
    while words not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return bytes(got)


@pytest.mark.parametrize("terminal", [False, True])
def test_a_video_locked_by_another_process_says_so(
    server: FakeSiliconFlow, tmp_path: Path, terminal: bool
) -> None:
    """While another process holds a video's .part lock, the row (on a terminal) or one
    plain line says "waiting for another process"; once it lets go the video downloads."""
    rid = server.add_job(videos=[8000])
    part = tmp_path / f"{rid}_0.mp4.part"
    args = [sys.executable, "-m", "siliconflow_video", "download", rid, "-o", str(tmp_path)]
    with locked(part):
        if terminal:
            leader, follower = pty.openpty()
            env = env_for(server, COLUMNS="80", LINES="24", TERM="xterm")
            proc = subprocess.Popen(
                args, env=env, stdin=follower, stdout=subprocess.PIPE, stderr=follower
            )
            os.close(follower)
            reader = leader
        else:
            proc = subprocess.Popen(
                args, env=env_for(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            assert proc.stderr is not None
            reader = proc.stderr.fileno()
        try:
            seen = read_until(reader, b"waiting for another process", time.monotonic() + 20)
            assert b"waiting for another process" in seen, seen.decode(errors="replace")
            assert proc.poll() is None  # it waits; it does not fail
        except BaseException:
            proc.kill()
            raise
    rest = read_until(reader, b"\x00never", time.monotonic() + 20)  # to the end
    if terminal:
        os.close(reader)
    assert proc.wait(timeout=20) == 0, (seen + rest).decode(errors="replace")
    assert sha256_of(tmp_path / f"{rid}_0.mp4") == server.video_sha256(rid, 0)
    text = (seen + rest).decode(errors="replace")
    if not terminal:
        assert text.count("waiting for another process") == 1
        assert f"it is writing {part}" in text


def test_timeout_bounds_the_wait_not_the_downloads(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """--timeout: an id still queued when it runs out ends with exit 3, "timed out" (not
    "failed"), while a download already under way finishes whole."""
    from siliconflow_video.testing import SlowBody

    ready = server.add_job(videos=[60_000])
    server.add_fault("video", SlowBody(bytes_per_second=30_000), request_id=ready)
    queued = server.add_job(queue_seconds=60)
    proc = cli(
        "download", ready, queued, "-o", str(tmp_path), "--timeout", "1", env=env_for(server)
    )
    assert proc.returncode == 3, proc.stderr
    assert sha256_of(tmp_path / f"{ready}_0.mp4") == server.video_sha256(ready, 0)
    assert f"{queued}: timed out (--timeout)" in proc.stderr
    assert "1 succeeded (0 already complete), 1 timed out, 0 failed" in proc.stderr
    [line] = error_lines(proc.stderr)
    assert "last status InQueue" in line
    assert "goes on at SiliconFlow" in line


async def test_one_throttle_caps_all_transfers_together() -> None:
    """The client's throttle books every piece of every transfer at the cap: two
    transfers sharing it wait as long for their bytes as one transfer of both would."""
    from siliconflow_video._download import Throttle

    clock = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    class Host:
        def paused(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

        def heard(self, *, force: bool = False) -> None:
            pass

    shared = Throttle(now=lambda: clock[0], sleep=sleep)
    for _ in range(10):  # two transfers, taking turns piece by piece
        await shared.take(50_000, 100_000.0, Host())
        await shared.take(50_000, 100_000.0, Host())
    # 1 MB at 100 kB/s: 10 s on the clock, less the one burst allowed ahead.
    assert clock[0] - 100.0 == pytest.approx(10.0 - Throttle.burst)
    free = Throttle(now=lambda: clock[0], sleep=sleep)
    await free.take(10**9, None, Host())  # no rate: never waits
    assert clock[0] - 100.0 == pytest.approx(10.0 - Throttle.burst)


def test_an_id_leased_by_another_download_says_so(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """Two downloads of one id into one folder: the second says "waiting for another
    process" once while the first holds the id's journal lease, then takes its result."""
    from siliconflow_video.testing import SlowBody

    rid = server.add_job(videos=[120_000])
    server.add_fault("video", SlowBody(bytes_per_second=40_000), request_id=rid)
    args = [sys.executable, "-m", "siliconflow_video", "download", rid, "-o", str(tmp_path)]
    env = env_for(server)
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        assert first.stderr is not None
        started = read_until(first.stderr.fileno(), b"downloading", time.monotonic() + 20)
        assert b"downloading" in started
        second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert second.stderr is not None
        seen = read_until(second.stderr.fileno(), b"waiting for another", time.monotonic() + 20)
        assert b"waiting for another process" in seen, seen.decode(errors="replace")
        assert first.wait(timeout=30) == 0
        out, rest = second.communicate(timeout=30)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert second.returncode == 0, (seen + rest).decode(errors="replace")
    assert (seen + rest).count(b"waiting for another process") == 1
    assert out.decode().split()[:2] == [rid, "Succeed"]
    assert sha256_of(tmp_path / f"{rid}_0.mp4") == server.video_sha256(rid, 0)
