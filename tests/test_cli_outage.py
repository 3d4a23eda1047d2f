"""``resume -o DIR`` started during an API outage (a restarted service): the journal's jobs
were polled through this base URL, so the command waits the outage out and downloads, while
a base URL the journal never saw answer still ends the command at once. Real processes; the
fake's API behind a forwarder on a fixed port, stopped (connections refused) and started."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from siliconflow_video.testing import FakeSiliconFlow

from .conftest import wait_until
from .test_cli import KEY, assert_clean, base_env, cli, json_lines
from .test_outage_resume import forwarder, free_port


@pytest.fixture
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=31)
    with fake.run_in_thread():
        yield fake


class Forwarder:
    """The fake's API on a fixed port, served from a thread while ``up``."""

    def __init__(self, port: int, fake: FakeSiliconFlow) -> None:
        self.port, self.fake = port, fake
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with forwarder(self.port, self.fake):
                ready.set()
                await self._stop.wait()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the forwarder did not start"

    def stop(self) -> None:
        assert self._loop is not None
        assert self._stop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def port() -> int:
    return free_port()


def env_at(port: int) -> dict[str, str]:
    return base_env(SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=f"http://127.0.0.1:{port}/v1")


def test_resume_waits_out_an_outage_at_restart(
    server: FakeSiliconFlow, tmp_path: Path, port: int
) -> None:
    """An id journaled while polled through the forwarder; resume started while nothing
    listens there, past the retry budget: it waits, and downloads once the API is back."""
    rid = server.add_job(run_seconds=3600, videos=[4000])
    up = Forwarder(port, server)
    up.start()
    first = cli("download", rid, "-o", str(tmp_path), "--timeout", "0.5", env=env_at(port))
    assert first.returncode == 3, first.stderr  # timed out: journaled, polled, unfinished
    up.stop()
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        args = ("resume", "-o", str(tmp_path), "--retries", "1", "--json", "-v")
        proc = subprocess.Popen(
            [sys.executable, "-m", "siliconflow_video", *args],
            env=env_at(port),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            # Three refused polls in a row: past --retries 1's budget of two tries.
            wait_until(
                lambda: (
                    log.read_text().count(f"status of {rid}: cannot connect") >= 3
                    or proc.poll() is not None
                ),
                30,
                "the resume to poll through the outage",
            )
            assert proc.poll() is None, log.read_text()
            up = Forwarder(port, server)
            up.start()
            server.finish(rid)
            out, _ = proc.communicate(timeout=30)
            up.stop()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "answered before" in text
    [row] = json_lines(out)
    assert row["error"] is None
    assert (tmp_path / f"{rid}_0.mp4").read_bytes() == server.video_bytes(rid, 0)


def test_resume_through_a_base_url_the_journal_never_saw_still_fails_fast(
    server: FakeSiliconFlow, tmp_path: Path, port: int
) -> None:
    """A journal whose jobs were polled through another base URL does not vouch for this
    one: nothing listens, and the command ends at once saying it cannot reach it."""
    rid = server.add_job(run_seconds=3600, videos=[4000])
    env = base_env(SILICONFLOW_API_KEY=KEY, SILICONFLOW_BASE_URL=server.base_url)
    first = cli("download", rid, "-o", str(tmp_path), "--timeout", "0.5", env=env)
    assert first.returncode == 3, first.stderr
    proc = cli("resume", "-o", str(tmp_path), "--retries", "1", env=env_at(port))
    assert proc.returncode != 0
    assert_clean(proc)
    assert "cannot reach" in proc.stderr
    assert "answered before" not in proc.stderr
