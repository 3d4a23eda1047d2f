"""A FastAPI service that downloads finished SiliconFlow videos, and survives restarts.

One ``AsyncClient`` is shared by every request: it is opened in the app's lifespan, so all
handlers poll through one connection pool and one adaptive rate limit. It keeps a journal
(an SQLite file): an id is accepted only once it is recorded there, and on startup the
lifespan resumes, in the background, every id a previous run accepted but did not finish.
A deploy, a crash or a kill -9 loses no video.

    pip install fastapi uvicorn
    SILICONFLOW_API_KEY=sk-... VIDEO_DIR=videos uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/videos/<requestId>            # 202: recorded, downloading
    curl localhost:8000/videos/<requestId>                    # its state and paths
    curl -X POST localhost:8000/videos/<requestId>/download   # wait for the files

Settings: ``VIDEO_DIR`` (default ``videos``) and ``VIDEO_JOURNAL`` (default
``$VIDEO_DIR/.siliconflow-video.journal``), or the arguments of ``create_app``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from siliconflow_video import (
    AsyncClient,
    BadRequestError,
    JobFailedError,
    Outcome,
    WaitTimeoutError,
)

log = logging.getLogger("fastapi_app")


def create_app(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    video_dir: str | os.PathLike[str] | None = None,
    journal: str | os.PathLike[str] | None = None,
    wait_timeout: float = 30 * 60,
) -> FastAPI:
    folder = Path(video_dir or os.environ.get("VIDEO_DIR", "videos"))
    where = journal or os.environ.get("VIDEO_JOURNAL") or folder / ".siliconflow-video.journal"
    # A postgresql:// URL (one journal shared by every replica) stays text: a Path would
    # fold its "//" into a local file name.
    journal_at: str | Path = str(where) if "://" in str(where) else Path(where)

    def in_background(app: FastAPI, work: Coroutine[Any, Any, Any], what: str) -> None:
        # Held by the app (a bare task may be garbage-collected), cancelled at shutdown;
        # a cancelled download keeps its .part file and its journal row for the next start.
        task = asyncio.get_running_loop().create_task(work, name=what)
        app.state.tasks.add(task)
        task.add_done_callback(app.state.tasks.discard)
        task.add_done_callback(_log_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A journal file's folder must exist; the videos' folder is made by the downloads.
        if isinstance(journal_at, Path):
            await asyncio.to_thread(journal_at.parent.mkdir, parents=True, exist_ok=True)
        async with AsyncClient(api_key, base_url, journal=journal_at) as client:
            app.state.client = client
            app.state.tasks = set()
            await client.journal()  # a bad journal stops the start, not the first request
            # Every id a previous run accepted and did not finish, in the background: the
            # service answers at once while they are polled and downloaded.
            in_background(app, client.resume(timeout=wait_timeout), "resume")
            try:
                yield
            finally:
                for task in list(app.state.tasks):
                    task.cancel()
                await asyncio.gather(*app.state.tasks, return_exceptions=True)

    app = FastAPI(lifespan=lifespan)

    @app.post("/videos/{request_id}", status_code=202)
    async def accept(request_id: str, request: Request) -> dict[str, Any]:
        """Record the id in the journal (so no restart can lose it), then download it in
        the background; answer 202 at once."""
        client: AsyncClient = request.app.state.client
        journal = await client.journal()
        assert journal is not None
        [job] = await journal.accept([request_id], dest=folder)
        if not job.state.is_finished:
            in_background(
                request.app,
                client.wait_and_download([request_id], folder, timeout=wait_timeout),
                f"download {request_id}",
            )
        return {"request_id": request_id, "state": job.state.value}

    @app.get("/videos/{request_id}")
    async def state(request_id: str, request: Request) -> dict[str, Any]:
        """What the journal knows of the id: state, paths, error (URLs without queries)."""
        client: AsyncClient = request.app.state.client
        journal = await client.journal()
        assert journal is not None
        job = await journal.find(request_id)
        if job is None:
            raise HTTPException(404, detail="this service never accepted that id")
        data = job.as_dict()
        return {k: data[k] for k in ("request_id", "state", "dest", "paths", "error")}

    @app.post("/videos/{request_id}/download")
    async def download(request_id: str, request: Request) -> dict[str, Any]:
        """Wait for the job and answer with its files (journaled like the others)."""
        client: AsyncClient = request.app.state.client
        [outcome] = await client.wait_and_download([request_id], folder, timeout=wait_timeout)
        return _answer(request_id, outcome)

    return app


def _answer(request_id: str, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome.error, JobFailedError):
        raise HTTPException(422, detail=f"generation failed: {outcome.error.reason}")
    if isinstance(outcome.error, BadRequestError):
        # SiliconFlow answers 400 for a requestId it does not know: the caller's mistake.
        raise HTTPException(404, detail=f"unknown request id: {outcome.error.api_message}")
    if isinstance(outcome.error, WaitTimeoutError):
        raise HTTPException(504, detail=str(outcome.error))
    if outcome.error is not None:
        raise HTTPException(502, detail=str(outcome.error))
    return {
        "request_id": request_id,
        "files": [{"path": str(f.path), "size": f.size} for f in outcome.files],
    }


def _log_failure(task: asyncio.Task[Any]) -> None:
    # Outcomes carry each id's failure; only a broken journal or client ends up here.
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %r", task.get_name(), task.exception())


app = create_app()
