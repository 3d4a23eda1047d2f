"""Scripted jobs and the request log: the fake's record of what happened."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal, TypedDict

import attrs

from ._content import VideoContent
from ._faults import Target

__all__ = ["Job", "JobSpec", "JobStatus", "LoggedRequest", "JobOutcome"]

JobOutcome = Literal["Succeed", "Failed"]
"""How a job ends."""

JobStatus = Literal["InQueue", "InProgress", "Succeed", "Failed"]
"""The four statuses of the real API."""


class JobSpec(TypedDict, total=False):
    """Keyword arguments of ``FakeSiliconFlow.add_job`` (the type of ``submit_defaults``)."""

    queue_seconds: float
    run_seconds: float
    outcome: JobOutcome
    reason: str
    videos: Sequence[bytes | int]
    seed: int
    inference: float


@attrs.frozen
class Job:
    """One scripted job. Read it through ``FakeSiliconFlow.jobs``; change it with its methods."""

    request_id: str
    queue_seconds: float
    run_seconds: float
    outcome: JobOutcome
    reason: str
    videos: tuple[VideoContent, ...]
    seed: int
    inference: float
    created_at: float
    """``time.monotonic()`` when the job was added."""
    finished_at: float | None = None
    """``time.monotonic()`` when ``finish()`` forced the job to its end, else ``None``."""
    submitted: Mapping[str, object] | None = None
    """The JSON body of ``POST /video/submit`` that created the job (``None`` for ``add_job``)."""

    def status(self, now: float | None = None) -> JobStatus:
        """The status at monotonic time ``now`` (default: now)."""
        if now is None:
            now = time.monotonic()
        if self.finished_at is not None and now >= self.finished_at:
            return self.outcome
        elapsed = now - self.created_at
        if elapsed < self.queue_seconds:
            return "InQueue"
        if elapsed < self.queue_seconds + self.run_seconds:
            return "InProgress"
        return self.outcome


@attrs.frozen
class LoggedRequest:
    """One request the fake received, with how it was answered."""

    target: Target
    method: str
    path: str
    """The raw path, without the query string."""
    query: dict[str, str]
    headers: dict[str, str]
    json: object | None
    """The parsed JSON body (``None`` when absent or not JSON)."""
    request_id: str | None
    """The job the request was about: the body's ``requestId``, the id a submit created, or
    the id in a video URL."""
    status: int | None
    """The response status; ``None`` when the connection was reset instead."""
    fault: str | None
    """The class name of the fault applied, ``"rate_limit"``, or ``None``."""
    time: float
    """``time.monotonic()`` when the request arrived."""
