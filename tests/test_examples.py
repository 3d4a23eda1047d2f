"""The examples run as written, against the fake SiliconFlow."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import httpx

from siliconflow_video.testing import FakeSiliconFlow

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
