"""A FastAPI service that downloads finished SiliconFlow videos.

One ``AsyncClient`` is shared by every request: it is opened in the app's lifespan, so all
handlers poll through one connection pool and one adaptive rate limit.

    pip install fastapi uvicorn
    SILICONFLOW_API_KEY=sk-... uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/videos/<requestId>/download
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from siliconflow_video import AsyncClient, BadRequestError, JobFailedError, WaitTimeoutError


def create_app(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    video_dir: str | os.PathLike[str] = "videos",
    wait_timeout: float = 30 * 60,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncClient(api_key, base_url) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/videos/{request_id}/download")
    async def download(request_id: str, request: Request) -> dict[str, Any]:
        client: AsyncClient = request.app.state.client
        [outcome] = await client.wait_and_download(
            [request_id], Path(video_dir), timeout=wait_timeout
        )
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

    return app


app = create_app()
