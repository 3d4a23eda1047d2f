"""`FakeSiliconFlow`: the scripting methods and the lifecycle of its two servers.

What the fake knows lives in a `FakeState` (``_state.py``); the request handlers in
``_api.py`` (the API host) and ``_video.py`` (the storage host) work on that state, and
every method here delegates to it. The state is thread-safe, so scripting methods may be
called from another thread while :meth:`FakeSiliconFlow.run_in_thread` serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType

from aiohttp import web

from ._api import make_api_app
from ._faults import Fault, FaultRule, Target
from ._jobs import Job, JobOutcome, JobSpec, LoggedRequest
from ._state import NOT_RUNNING, FakeState
from ._video import make_video_app

__all__ = ["FakeSiliconFlow"]

# How long close() lets a running handler finish before cancelling it (aiohttp waits this
# twice). Short, so closing the fake while a client sits in a Slow, SlowBody or StallMidBody
# fault does not stall a test suite.
_SHUTDOWN_TIMEOUT = 0.1


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
        self._state = FakeState(
            api_key=api_key,
            seed=seed,
            log_requests=log_requests,
            url_ttl=url_ttl,
            fresh_urls=fresh_urls,
        )
        self.seed = seed
        self.host = host
        self._runners: list[web.AppRunner] = []
        self._base_url: str | None = None
        self._video_base_url: str | None = None

    # ------------------------------------------------------------------ settings

    @property
    def api_key(self) -> str | None:
        """The only bearer key accepted; ``None`` accepts any key."""
        return self._state.api_key

    @api_key.setter
    def api_key(self, value: str | None) -> None:
        self._state.api_key = value

    @property
    def log_requests(self) -> bool:
        """Whether requests are kept in :attr:`requests`."""
        return self._state.log_requests

    @log_requests.setter
    def log_requests(self, value: bool) -> None:
        self._state.log_requests = value

    @property
    def url_ttl(self) -> float:
        """Seconds a newly issued video URL stays valid."""
        return self._state.url_ttl

    @url_ttl.setter
    def url_ttl(self, value: float) -> None:
        self._state.url_ttl = value

    @property
    def fresh_urls(self) -> bool:
        """Sign a new URL on every status call (else the first URL forever)."""
        return self._state.fresh_urls

    @fresh_urls.setter
    def fresh_urls(self, value: bool) -> None:
        self._state.fresh_urls = value

    @property
    def latency(self) -> float:
        """Seconds every API request waits before it is answered."""
        return self._state.latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._state.latency = value

    @property
    def submit_defaults(self) -> JobSpec:
        """The :class:`JobSpec` a ``POST /video/submit`` job is created with."""
        return self._state.submit_defaults

    @submit_defaults.setter
    def submit_defaults(self, value: JobSpec) -> None:
        self._state.submit_defaults = value

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the API base URL (after :meth:`start`)."""
        if self._base_url is None:
            raise RuntimeError(NOT_RUNNING)
        return self._base_url

    @property
    def video_base_url(self) -> str:
        """``http://127.0.0.1:OTHERPORT``: the storage host's origin (after :meth:`start`)."""
        if self._video_base_url is None:
            raise RuntimeError(NOT_RUNNING)
        return self._video_base_url

    async def start(self) -> None:
        """Start both servers on random free ports of :attr:`host`."""
        if self._runners:
            raise RuntimeError("FakeSiliconFlow is already running")
        origins: list[str] = []
        try:
            for app in (make_api_app(self._state), make_video_app(self._state)):
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
        self._video_base_url = self._state.video_base_url = origins[1]

    async def close(self) -> None:
        """Stop both servers, cutting requests still running after a brief grace period.

        Scripted state (jobs, faults, log) is kept; closing twice is fine.
        """
        runners, self._runners = self._runners, []
        self._base_url = self._video_base_url = self._state.video_base_url = None
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
        ``seed`` and ``inference`` are the ``results.seed`` and ``results.timings.inference``
        of the ``Succeed`` answer. Ids are case-sensitive: ``"Job-1"`` and ``"job-1"`` are
        two jobs.
        """
        return self._state.add_job(
            request_id,
            queue_seconds=queue_seconds,
            run_seconds=run_seconds,
            outcome=outcome,
            reason=reason,
            videos=videos,
            seed=seed,
            inference=inference,
        )

    def finish(self, request_id: str, outcome: JobOutcome = "Succeed", reason: str = "") -> None:
        """Force a job to its end now, with ``outcome`` and ``reason``."""
        self._state.finish(request_id, outcome, reason)

    @property
    def jobs(self) -> dict[str, Job]:
        """A snapshot of every job, by request id."""
        return self._state.jobs

    def video_bytes(self, request_id: str, index: int = 0) -> bytes:
        """The exact content of one video (materialised: mind the size)."""
        return self._state.content(request_id, index).to_bytes()

    def video_sha256(self, request_id: str, index: int = 0) -> str:
        """Hex SHA-256 of one video, computed without holding it in memory."""
        return self._state.content(request_id, index).sha256()

    def video_url(self, request_id: str, index: int = 0) -> str:
        """Issue a URL for one video, exactly as a status call would."""
        return self._state.video_url(request_id, index)

    # ------------------------------------------------------------------ URLs

    def expire_urls(self) -> None:
        """Revoke every video URL issued so far (403 "Request has expired.")."""
        self._state.expire_urls()

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
        return self._state.add_fault(
            target, fault, times=times, probability=probability, request_id=request_id
        )

    def remove_fault(self, rule: FaultRule) -> None:
        """Remove one rule returned by :meth:`add_fault` (no error if it is gone already)."""
        self._state.remove_fault(rule)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._state.clear_faults()

    @property
    def faults(self) -> list[FaultRule]:
        """The rules still active, in order."""
        return self._state.faults

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
        self._state.set_rate_limit(per_second, burst=burst, retry_after=retry_after)

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[LoggedRequest]:
        """A snapshot of the request log (empty if ``log_requests`` is off).

        Requests are logged when they are answered, so a long transfer comes after shorter
        requests that arrived later; :attr:`LoggedRequest.time` is the arrival time. To
        tell two runs apart, filter on ``time`` rather than on positions in the log.
        """
        return self._state.requests

    def requests_for(self, target: Target, request_id: str | None = None) -> list[LoggedRequest]:
        """The logged requests of one target, and of one job when ``request_id`` is given,
        in the order they were answered (see :attr:`requests`)."""
        return self._state.requests_for(target, request_id)

    def clear_log(self) -> None:
        """Forget every logged request."""
        self._state.clear_log()

    @property
    def in_flight(self) -> int:
        """Submit and status requests being handled right now."""
        return self._state.in_flight

    @property
    def max_in_flight(self) -> int:
        """The peak of :attr:`in_flight` since start (or :meth:`reset_max_in_flight`)."""
        return self._state.max_in_flight

    def reset_max_in_flight(self) -> None:
        """Restart the peak count from the current :attr:`in_flight`."""
        self._state.reset_max_in_flight()

    def __repr__(self) -> str:
        where = self._base_url or "not running"
        return f"<FakeSiliconFlow {where} jobs={len(self._state.jobs)}>"
