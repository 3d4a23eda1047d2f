"""The examples run as written, against the fake SiliconFlow."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from siliconflow_video.testing import FakeSiliconFlow, SlowBody

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_fastapi_example_downloads_in_a_handler(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """The FastAPI app's handler awaits wait_and_download on its shared client."""
    app = load("fastapi_app").create_app(
        api_key=fake.api_key, base_url=fake.base_url, video_dir=tmp_path
    )
    ok = fake.add_job(run_seconds=0.2, videos=[300_000])
    failed = fake.add_job(run_seconds=0.1, outcome="Failed", reason="nsfw")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            good, bad = await asyncio.gather(
                http.post(f"/videos/{ok}/download"), http.post(f"/videos/{failed}/download")
            )
    assert good.status_code == 200
    [file] = good.json()["files"]
    assert Path(file["path"]).read_bytes() == fake.video_bytes(ok)
    assert file["size"] == len(fake.video_bytes(ok))
    assert bad.status_code == 422
    assert "nsfw" in bad.json()["detail"]


async def test_fastapi_example_answers_404_for_an_unknown_id(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """An id SiliconFlow does not know is the caller's mistake: 404, not 502."""
    app = load("fastapi_app").create_app(
        api_key=fake.api_key, base_url=fake.base_url, video_dir=tmp_path
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            answer = await http.post("/videos/no-such-id/download")
    assert answer.status_code == 404
    assert "unknown request id" in answer.json()["detail"]


async def test_quickstart_runs_against_the_fake(fake: FakeSiliconFlow, tmp_path: Path) -> None:
    """The README quickstart script submits, waits and downloads a video."""
    fake.submit_defaults = {"run_seconds": 0.2, "videos": (50_000,)}
    env = {
        **os.environ,
        "SILICONFLOW_API_KEY": fake.api_key or "",
        "SILICONFLOW_BASE_URL": fake.base_url,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "quickstart.py"),
        "a fox",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    [rid] = fake.jobs
    assert (tmp_path / "videos" / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
    assert rid in out.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_app(
    fake: FakeSiliconFlow, folder: Path, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """The example served by a real uvicorn process, its journal in ``folder``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")},
        "SILICONFLOW_API_KEY": fake.api_key or "",
        "SILICONFLOW_BASE_URL": fake.base_url,
        "VIDEO_DIR": str(folder / "videos"),
        "VIDEO_JOURNAL": str(folder / "service.journal"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(EXAMPLES),
            "fastapi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/videos/none", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1].decode()
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.slow
def test_fastapi_example_resumes_every_accepted_id_after_kill_9(tmp_path: Path) -> None:
    """A real uvicorn process accepts ids, is killed with SIGKILL mid-work, starts again,
    and every accepted video ends up on disk, whole, without the ids being sent again."""
    fake = FakeSiliconFlow(api_key="sk-uvicorn-test-0123456789", seed=5)
    with fake.run_in_thread():
        waiting = fake.add_job(queue_seconds=1.5, videos=[20_000])
        slow = fake.add_job(videos=[400_000])
        fake.add_fault("video", SlowBody(100_000), request_id=slow)
        done = fake.add_job(videos=[5_000])
        ids = [waiting, slow, done]
        port = free_port()
        videos = tmp_path / "videos"
        with uvicorn_app(fake, tmp_path, port) as proc:
            for rid in ids:
                answer = httpx.post(f"http://127.0.0.1:{port}/videos/{rid}", timeout=10)
                assert answer.status_code == 202, answer.text
            part = videos / f"{slow}_0.mp4.part"
            deadline = time.monotonic() + 30
            while not (part.exists() and part.stat().st_size > 0):
                assert time.monotonic() < deadline, "the slow download never started"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        assert not (videos / f"{slow}_0.mp4").exists()
        with uvicorn_app(fake, tmp_path, free_port()) as proc:
            deadline = time.monotonic() + 60
            while not all((videos / f"{rid}_0.mp4").exists() for rid in ids):
                assert proc.poll() is None, "uvicorn died"
                assert time.monotonic() < deadline, "the accepted ids were not resumed"
                time.sleep(0.05)
        for rid in ids:
            assert (videos / f"{rid}_0.mp4").read_bytes() == fake.video_bytes(rid)
        # The one whole before the kill was not fetched again; the slow one resumed.
        assert len(fake.requests_for("video", done)) == 1
        assert fake.requests_for("video", slow)[-1].headers["Range"].startswith("bytes=")
