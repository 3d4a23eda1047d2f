"""`FakeSiliconFlow`: its state, the scripting methods and the lifecycle of its two servers.

The request handlers live in ``_api.py`` (the API host) and ``_video.py`` (the storage host);
they call the underscore methods below. Every piece of shared state is guarded by one
lock, held only for short, await-free sections, so scripting methods may be called from
another thread while :meth:`FakeSiliconFlow.run_in_thread` serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import attrs
from aiohttp import web

from ._api import make_api_app
from ._content import VideoContent
from ._faults import ErrorResponse, Fault, FaultRule, Target, rate_limited
from ._jobs import Job, JobOutcome, JobSpec, LoggedRequest
from ._urls import UrlSigner, Verdict, video_path
from ._video import make_video_app

__all__ = ["FakeSiliconFlow"]

_TARGETS: frozenset[str] = frozenset({"submit", "status", "video"})
_OUTCOMES: frozenset[str] = frozenset({"Succeed", "Failed"})

# How long close() lets a running handler finish before cancelling it (aiohttp waits this
# twice). Short, so closing the fake while a client sits in a Slow, SlowBody or StallMidBody
# fault does not stall a test suite.
_SHUTDOWN_TIMEOUT = 0.1


class _TokenBucket:
    """A token bucket refilled continuously at ``rate`` tokens per second up to ``capacity``."""

    def __init__(self, rate: float, capacity: int) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = float(capacity)
        self.updated = time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FakeSiliconFlow:
    """A scripted stand-in for SiliconFlow's video API and the storage host of its videos.

    Two aiohttp servers on loopback: the API at :attr:`base_url` and the video host at
    :attr:`video_base_url` (another port, so another origin). Use it as an async context
    manager, or call :meth:`start` / :meth:`close`, or :meth:`run_in_thread` from sync code.

    Args:
        api_key: the only bearer key accepted; ``None`` accepts any key.
        seed: seeds the generated request ids and the fault probabilities.
        log_requests: keep :attr:`requests`; turn off for benchmarks.
        url_ttl: seconds a newly issued video URL stays valid (may be 0 or negative).
        fresh_urls: sign a new URL on every status call; if false, the first URL issued
            for a video is returned forever.
        host: the address both servers listen on.

    Attributes you may change at any time:
        submit_defaults: the :class:`JobSpec` a ``POST /video/submit`` job is created with.
        url_ttl, fresh_urls: as above.
        latency: seconds every API request waits before it is answered (default 0).
    """

    def __init__(
        self,
        api_key: str | None = "sk-test",
        *,
        seed: int = 0,
        log_requests: bool = True,
        url_ttl: float = 3600.0,
        fresh_urls: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.seed = seed
        self.log_requests = log_requests
        self.url_ttl = url_ttl
        self.fresh_urls = fresh_urls
        self.host = host
        self.latency = 0.0
        self.submit_defaults: JobSpec = {
            "queue_seconds": 0.05,
            "run_seconds": 0.1,
            "videos": (64 * 1024,),
        }
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._id_rng = random.Random(f"ids/{seed}")
        self._jobs: dict[str, Job] = {}
        self._polls: dict[str, int] = {}
        self._first_urls: dict[tuple[str, int], str] = {}
        self._signer = UrlSigner()
        self._rules: list[FaultRule] = []
        self._bucket: _TokenBucket | None = None
        self._bucket_retry_after: str | float | None = None
        self._log: list[LoggedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._runners: list[web.AppRunner] = []
        self._base_url: str | None = None
        self._video_base_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the API base URL (after :meth:`start`)."""
        if self._base_url is None:
            raise RuntimeError("FakeSiliconFlow is not running; call start() first")
        return self._base_url

    @property
    def video_base_url(self) -> str:
        """``http://127.0.0.1:OTHERPORT``: the storage host's origin (after :meth:`start`)."""
        if self._video_base_url is None:
            raise RuntimeError("FakeSiliconFlow is not running; call start() first")
        return self._video_base_url

    async def start(self) -> None:
        """Start both servers on random free ports of :attr:`host`."""
        if self._runners:
            raise RuntimeError("FakeSiliconFlow is already running")
        origins: list[str] = []
        try:
            for app in (make_api_app(self), make_video_app(self)):
                runner = web.AppRunner(
                    app,
                    access_log=None,
                    handle_signals=False,
                    shutdown_timeout=_SHUTDOWN_TIMEOUT,
                )
                await runner.setup()
                self._runners.append(runner)
                await web.TCPSite(runner, self.host, 0).start()
                port = runner.addresses[0][1]
                origins.append(f"http://{self.host}:{port}")
        except BaseException:
            await self.close()
            raise
        self._base_url = origins[0] + "/v1"
        self._video_base_url = origins[1]

    async def close(self) -> None:
        """Stop both servers, cutting requests still running after a brief grace period.

        Scripted state (jobs, faults, log) is kept; closing twice is fine.
        """
        runners, self._runners = self._runners, []
        self._base_url = self._video_base_url = None
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    async def __aenter__(self) -> FakeSiliconFlow:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeSiliconFlow]:
        """Serve from a background thread with its own event loop, for sync tests.

        Both servers are listening when the ``with`` body starts and fully stopped when it
        ends. Scripting methods may be called from the test's thread meanwhile.
        """
        ready = threading.Event()
        failure: list[BaseException] = []
        loop_and_stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

        async def serve() -> None:
            stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)
                ready.set()
                return
            loop_and_stop.append((asyncio.get_running_loop(), stop))
            ready.set()
            try:
                await stop.wait()
            finally:
                await self.close()

        thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name="FakeSiliconFlow", daemon=True
        )
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        loop, stop = loop_and_stop[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join()

    # ------------------------------------------------------------------ jobs

    def add_job(
        self,
        request_id: str | None = None,
        *,
        queue_seconds: float = 0.0,
        run_seconds: float = 0.0,
        outcome: JobOutcome = "Succeed",
        reason: str = "",
        videos: Sequence[bytes | int] = (1024,),
        seed: int = 42,
        inference: float = 1.5,
    ) -> str:
        """Script a job and return its request id (a uuid4-like hex id when not given).

        The job is ``InQueue`` for ``queue_seconds``, then ``InProgress`` for ``run_seconds``,
        then ``outcome``; times count from now. Each entry of ``videos`` is the literal
        content (``bytes``) or the size of generated deterministic content (``int``).
        """
        if request_id in ("", ".", ".."):
            raise ValueError(f"request id {request_id!r} cannot be a URL path segment")
        if queue_seconds < 0 or run_seconds < 0:
            raise ValueError("queue_seconds and run_seconds must be >= 0")
        if outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be 'Succeed' or 'Failed', got {outcome!r}")
        for video in videos:
            if isinstance(video, bool) or not isinstance(video, (bytes, int)):
                raise TypeError(f"each video must be bytes or an int size, got {video!r}")
        now, wall = time.monotonic(), time.time()
        with self._lock:
            if request_id is None:
                request_id = uuid.UUID(int=self._id_rng.getrandbits(128), version=4).hex
            if request_id in self._jobs:
                raise ValueError(f"a job with request id {request_id!r} already exists")
            contents = tuple(
                VideoContent.literal(video, modified=wall)
                if isinstance(video, bytes)
                else VideoContent.generated(f"{request_id}/{index}", video, modified=wall)
                for index, video in enumerate(videos)
            )
            self._jobs[request_id] = Job(
                request_id=request_id,
                queue_seconds=queue_seconds,
                run_seconds=run_seconds,
                outcome=outcome,
                reason=reason,
                videos=contents,
                seed=seed,
                inference=inference,
                created_at=now,
            )
        return request_id

    def _attach_submission(self, request_id: str, body: dict[str, Any]) -> None:
        """Remember the ``/video/submit`` body that created a job."""
        with self._lock:
            job = self._jobs[request_id]
            self._jobs[request_id] = attrs.evolve(job, submitted=body)

    def finish(self, request_id: str, outcome: JobOutcome = "Succeed", reason: str = "") -> None:
        """Force a job to its end now, with ``outcome`` and ``reason``."""
        if outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be 'Succeed' or 'Failed', got {outcome!r}")
        with self._lock:
            job = self._jobs[request_id]
            self._jobs[request_id] = attrs.evolve(
                job, finished_at=time.monotonic(), outcome=outcome, reason=reason
            )

    @property
    def jobs(self) -> dict[str, Job]:
        """A snapshot of every job, by request id."""
        with self._lock:
            return dict(self._jobs)

    def video_bytes(self, request_id: str, index: int = 0) -> bytes:
        """The exact content of one video (materialised: mind the size)."""
        return self._content(request_id, index).to_bytes()

    def video_sha256(self, request_id: str, index: int = 0) -> str:
        """Hex SHA-256 of one video, computed without holding it in memory."""
        return self._content(request_id, index).sha256()

    def video_url(self, request_id: str, index: int = 0) -> str:
        """Issue a URL for one video, exactly as a status call would."""
        self._content(request_id, index)
        with self._lock:
            return self._issue_url(request_id, index)

    def _content(self, request_id: str, index: int) -> VideoContent:
        with self._lock:
            job = self._jobs[request_id]
        try:
            return job.videos[index]
        except IndexError:
            raise IndexError(f"job {request_id!r} has {len(job.videos)} video(s)") from None

    # ------------------------------------------------------------------ URLs

    def expire_urls(self) -> None:
        """Revoke every video URL issued so far (403 "Request has expired.")."""
        with self._lock:
            self._signer.revoke_all()

    def _issue_url(self, request_id: str, index: int) -> str:
        """Must be called with the lock held."""
        key = (request_id, index)
        if not self.fresh_urls and key in self._first_urls:
            return self._first_urls[key]
        path = video_path(request_id, index)
        expires = int(time.time() + self.url_ttl)
        url = f"{self.video_base_url}{path}?{self._signer.query(path, expires)}"
        self._first_urls.setdefault(key, url)
        return url

    def _check_url(
        self, request_id: str, index: int, expires: str | None, signature: str | None
    ) -> Verdict:
        path = video_path(request_id, index)
        with self._lock:
            return self._signer.check(path, expires, signature, time.time())

    def _video(self, request_id: str, index: int) -> VideoContent | None:
        with self._lock:
            job = self._jobs.get(request_id)
        if job is None or not 0 <= index < len(job.videos):
            return None
        return job.videos[index]

    # ------------------------------------------------------------------ status bodies

    def _status_body(self, request_id: str) -> dict[str, Any] | None:
        """The JSON of ``/video/status`` for one job, or ``None`` for an unknown id."""
        now = time.monotonic()
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return None
            status = job.status(now)
            if status == "Succeed":
                videos = [{"url": self._issue_url(request_id, i)} for i in range(len(job.videos))]
                results = {
                    "videos": videos,
                    "timings": {"inference": job.inference},
                    "seed": job.seed,
                }
                return {"status": status, "reason": "", "results": results}
            if status == "Failed":
                return {"status": status, "reason": job.reason, "results": None}
            polls = self._polls.get(request_id, 0)
            self._polls[request_id] = polls + 1
        # The real API answers a running job with `results` absent, null or without videos.
        body: dict[str, Any] = {"status": status, "reason": ""}
        shape = polls % 3
        if shape == 1:
            body["results"] = None
        elif shape == 2:
            body["results"] = {"videos": []}
        if status == "InQueue":
            body["position"] = 1 + polls % 3
        return body

    # ------------------------------------------------------------------ faults

    def add_fault(
        self,
        target: Target,
        fault: Fault,
        *,
        times: int | None = 1,
        probability: float = 1.0,
        request_id: str | None = None,
    ) -> FaultRule:
        """Apply ``fault`` to the next ``times`` matching requests (``None``: forever).

        Rules are tried in the order added; the first that matches ``target`` (and
        ``request_id``, when given) and wins its ``probability`` draw answers the request.
        """
        if target not in _TARGETS:
            raise ValueError(f"target must be 'submit', 'status' or 'video', got {target!r}")
        if target not in fault.targets:
            raise ValueError(f"{type(fault).__name__} cannot be used on {target!r} requests")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {probability}")
        rule = FaultRule(target, fault, times, probability, request_id)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_fault(self, rule: FaultRule) -> None:
        """Remove one rule returned by :meth:`add_fault` (no error if it is gone already)."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self._rules.clear()

    @property
    def faults(self) -> list[FaultRule]:
        """The rules still active, in order."""
        with self._lock:
            return list(self._rules)

    def _pick_fault(self, target: Target, request_id: str | None) -> Fault | None:
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.target != target:
                    continue
                if rule.request_id is not None and rule.request_id != request_id:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                if rule.times is not None and rule.fired >= rule.times:
                    self._rules.remove(rule)
                return rule.fault
        return None

    # ------------------------------------------------------------------ rate limit

    def set_rate_limit(
        self,
        per_second: float | None,
        *,
        burst: int | None = None,
        retry_after: str | float | None = None,
    ) -> None:
        """Limit submit + status calls together to ``per_second`` (``None`` removes the limit).

        A token bucket of ``burst`` tokens (default ``ceil(per_second)``); a call finding it
        empty gets 429 with the rate-limit body, and ``Retry-After`` only if given.
        The limit is checked after authentication and before faults.
        """
        if per_second is None:
            with self._lock:
                self._bucket = None
            return
        if per_second <= 0:
            raise ValueError(f"per_second must be > 0, got {per_second}")
        capacity = math.ceil(per_second) if burst is None else burst
        if capacity < 1:
            raise ValueError(f"burst must be >= 1, got {capacity}")
        with self._lock:
            self._bucket = _TokenBucket(per_second, capacity)
            self._bucket_retry_after = retry_after

    def _rate_limited(self) -> ErrorResponse | None:
        """The 429 to send when the bucket is empty, else ``None`` (a token is taken)."""
        if self._bucket is None:
            return None
        with self._lock:
            if self._bucket is None or self._bucket.take(time.monotonic()):
                return None
            return rate_limited(self._bucket_retry_after)

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[LoggedRequest]:
        """A snapshot of the request log (empty if ``log_requests`` is off).

        Requests are logged when they are answered, so a long transfer comes after shorter
        requests that arrived later; :attr:`LoggedRequest.time` is the arrival time. To
        tell two runs apart, filter on ``time`` rather than on positions in the log.
        """
        with self._lock:
            return list(self._log)

    def requests_for(self, target: Target, request_id: str | None = None) -> list[LoggedRequest]:
        """The logged requests of one target, and of one job when ``request_id`` is given,
        in the order they were answered (see :attr:`requests`)."""
        with self._lock:
            return [
                r
                for r in self._log
                if r.target == target and (request_id is None or r.request_id == request_id)
            ]

    def clear_log(self) -> None:
        """Forget every logged request."""
        with self._lock:
            self._log.clear()

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    @property
    def in_flight(self) -> int:
        """Submit and status requests being handled right now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The peak of :attr:`in_flight` since start (or :meth:`reset_max_in_flight`)."""
        return self._max_in_flight

    def reset_max_in_flight(self) -> None:
        """Restart the peak count from the current :attr:`in_flight`."""
        with self._lock:
            self._max_in_flight = self._in_flight

    def _enter_api(self) -> None:
        with self._lock:
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight

    def _leave_api(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def __repr__(self) -> str:
        where = self._base_url or "not running"
        return f"<FakeSiliconFlow {where} jobs={len(self._jobs)}>"
