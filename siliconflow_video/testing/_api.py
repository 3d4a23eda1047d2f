"""The fake API host: ``POST /v1/video/submit`` and ``POST /v1/video/status``.

Each request goes: authentication → rate limit → fault → the normal answer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from aiohttp import web

from . import _transport
from ._faults import (
    ConnectionReset,
    ErrorResponse,
    HTMLPage,
    MalformedBody,
    NoVideoURL,
    Slow,
    Target,
    TruncatedJSON,
    UnknownStatus,
    not_found,
    unauthorized,
)
from ._jobs import LoggedRequest
from ._state import FakeState

__all__ = ["make_api_app"]

TRACE_HEADER = "x-siliconcloud-trace-id"
IMAGE_SIZES = frozenset({"1280x720", "720x1280", "960x960"})

_INVALID = object()  # the parsed body of a request whose body is not JSON


class _Answer:
    """What an API request is answered with, before it becomes an aiohttp response."""

    __slots__ = ("body", "content_type", "headers", "status", "traced")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        *,
        traced: bool = True,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.traced = traced

    @classmethod
    def json(cls, status: int, payload: object) -> _Answer:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode())

    @classmethod
    def error(cls, fault: ErrorResponse) -> _Answer:
        return cls(fault.status, fault.encoded_body(), fault.content_type, dict(fault.headers))

    def response(self) -> web.Response:
        # SiliconFlow's gateway tags every answer; a server that is not SiliconFlow does not.
        headers = {TRACE_HEADER: f"ti_{secrets.token_hex(16)}"} if self.traced else {}
        if self.headers:
            headers.update(self.headers)
        return web.Response(
            status=self.status, body=self.body, content_type=self.content_type, headers=headers
        )


def _invalid(message: str) -> _Answer:
    return _Answer.json(400, {"code": 20015, "message": message, "data": None})


class _ApiHandlers:
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def submit(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "submit")

    async def status(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "status")

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return _Answer.error(not_found()).response()

    async def _handle(self, request: web.Request, target: Target) -> web.StreamResponse:
        state = self.state
        with state.api_call():
            arrived = time.monotonic()
            raw = await request.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = _INVALID
            request_id = body.get("requestId") if isinstance(body, dict) else None
            if not isinstance(request_id, str):
                request_id = None
            if state.latency > 0:
                await asyncio.sleep(state.latency)
            answer, fault_name, request_id = await self._answer(request, target, body, request_id)
            if state.log_requests:
                state.record(
                    LoggedRequest(
                        target=target,
                        method=request.method,
                        path=request.raw_path.partition("?")[0],
                        query=dict(request.query),
                        headers=dict(request.headers),
                        json=None if body is _INVALID else body,
                        request_id=request_id,
                        status=None if answer is None else answer.status,
                        fault=fault_name,
                        time=arrived,
                    )
                )
            if answer is None:
                _transport.reset(request)
                return web.Response()  # never sent: the transport is gone
            return answer.response()

    async def _answer(
        self, request: web.Request, target: Target, body: Any, request_id: str | None
    ) -> tuple[_Answer | None, str | None, str | None]:
        """(answer or None for a reset, fault name, request id) of one API request."""
        state = self.state
        if not self._authorized(request):
            return _Answer.error(unauthorized()), None, request_id
        limited = state.take_rate_limit_token()
        if limited is not None:
            return _Answer.error(limited), "rate_limit", request_id
        fault = state.pick_fault(target, request_id)
        fault_name = None if fault is None else type(fault).__name__
        if isinstance(fault, Slow):
            await asyncio.sleep(fault.seconds)
        elif isinstance(fault, ConnectionReset):
            return None, fault_name, request_id
        elif isinstance(fault, ErrorResponse):
            return _Answer.error(fault), fault_name, request_id
        elif isinstance(fault, MalformedBody):
            return _Answer(200, fault.body), fault_name, request_id
        elif isinstance(fault, HTMLPage):
            page = _Answer(fault.status, fault.encoded_body(), "text/html", traced=False)
            return page, fault_name, request_id
        elif isinstance(fault, UnknownStatus):
            payload = {"status": fault.value, "reason": fault.reason, "results": None}
            return _Answer.json(200, payload), fault_name, request_id
        elif isinstance(fault, NoVideoURL):
            return _Answer.json(200, self._no_video(fault, request_id)), fault_name, request_id
        if target == "submit":
            answer, request_id = self._submit(body)
        else:
            answer = self._status(body, request_id)
        if isinstance(fault, TruncatedJSON) and answer.status == 200:
            answer.body = answer.body[: len(answer.body) // 2]
        return answer, fault_name, request_id

    def _no_video(self, fault: NoVideoURL, request_id: str | None) -> dict[str, Any]:
        """The ``Succeed`` body of a :class:`NoVideoURL` fault."""
        body: dict[str, Any] = {"status": "Succeed", "reason": ""}
        if fault.shape == "absent":
            return body
        if fault.shape == "null":
            return body | {"results": None}
        job = None if request_id is None else self.state.jobs.get(request_id)
        results: dict[str, Any] = {
            "timings": {"inference": 1.5 if job is None else job.inference},
            "seed": 42 if job is None else job.seed,
        }
        if fault.shape == "empty":
            results["videos"] = []
        elif fault.shape == "no_url":
            results["videos"] = [{}]
        return body | {"results": results}

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        return self.state.api_key is None or key.strip() == self.state.api_key

    def _submit(self, body: Any) -> tuple[_Answer, str | None]:
        problem = _submit_problem(body)
        if problem is not None:
            return _invalid(problem), None
        request_id = self.state.submit_job(dict(body))
        return _Answer.json(200, {"requestId": request_id}), request_id

    def _status(self, body: Any, request_id: str | None) -> _Answer:
        if body is _INVALID or not isinstance(body, dict):
            return _invalid("Invalid JSON body")
        if request_id is None:
            return _invalid("requestId is required and must be a string")
        payload = self.state.status_body(request_id)
        if payload is None:
            message = f"The requestId {request_id} does not exist"
            return _Answer.json(400, {"code": 20012, "message": message, "data": None})
        return _Answer.json(200, payload)


def _submit_problem(body: Any) -> str | None:
    """Why a submit body is invalid, or ``None`` when it is fine."""
    if body is _INVALID or not isinstance(body, dict):
        return "Invalid JSON body"
    for name in ("model", "prompt"):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            return f"{name} is required and must be a non-empty string"
    if body.get("image_size") not in IMAGE_SIZES:
        return "image_size must be one of 1280x720, 720x1280, 960x960"
    for name in ("negative_prompt", "image"):
        if name in body and body[name] is not None and not isinstance(body[name], str):
            return f"{name} must be a string"
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return "seed must be an integer"
    return None


def make_api_app(state: FakeState) -> web.Application:
    """The aiohttp application of the API host."""
    handlers = _ApiHandlers(state)
    # Image-to-video submits carry base64 images: allow far more than aiohttp's 1 MiB.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/video/submit", handlers.submit)
    app.router.add_post("/v1/video/status", handlers.status)
    app.router.add_route("*", "/{tail:.*}", handlers.not_found)
    return app
