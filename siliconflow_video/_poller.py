"""One scheduler polls every job a client waits for.

Waiting for ten thousand jobs must cost little, so there is no task or timer per job: each
job is a small record in a heap ordered by when it is next due, and one loop dispatches due
polls (at most ``max_in_flight`` at once, most overdue first). Waiters hold a future; any
number of waiters share one job's polls.

Per job, the first poll goes out at once. After that, polls are spaced by what was learned
of run times (``_learning``: sparse while a finish is unlikely, dense across the window where
it is likely), or, while nothing is learned or a job has outlived what was, blind: from
``interval`` growing by ``growth`` up to ``PollPolicy.max_blind_interval``. Each gap is
jittered so that jobs started together drift apart, and none is longer than
``max_interval``. Each job that succeeds teaches the client its run time (``learned``).

A transient failure (429, 5xx, reset, malformed body) only delays that job's next poll, by
at least the exponential backoff of its failure streak (and any ``Retry-After``); for a 429
that delay counts from when the poll was due, so that behind a backlog the job keeps its
place in line. A permanent failure (400, 401, 403, 404) ends its waiters at once with the
typed error. Exceptions, so that no
wait (even one with no deadline) is polled forever on an answer that never changes:

- While the client has never had any answer from the API, failing to connect ends the wait
  after the retry budget (a wrong base URL, or no network).
- While no usable status has ever been read, a 200 whose body is not JSON at all (an HTML
  page) ends the wait at once: the base URL is not a SiliconFlow API.
- Answers that are not a usable status (an undocumented status such as ``"Cancelled"``, a
  ``Succeed`` with no video URL, a body of the wrong shape) are asked again, but after
  ``PollPolicy.malformed_grace`` seconds of them in a row the wait ends with a
  ``MalformedResponseError`` naming the last one.

Time comes from a ``Clock`` (``time()`` and ``call_later()``): the running event loop by
default, a virtual one in tests, so that a schedule can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

from ._config import PollPolicy, RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIError,
    MalformedResponseError,
    NotSiliconFlowError,
    RateLimitError,
    SiliconFlowError,
)
from ._http import is_transient, retry_delay
from ._learning import JobTrace, RunTimes, learned_gap, run_time_sample
from ._logging import logger
from ._models import Status, VideoStatus

StatusListener = Callable[[VideoStatus], None]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the poller reads the time and sets its one timer; an event loop is one."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object], /) -> TimerHandle: ...


class _Job:
    __slots__ = (
        "active",
        "due",
        "failures",
        "interval",
        "key",
        "last",
        "malformed",
        "malformed_since",
        "request_id",
        "trace",
        "waiters",
        "was_due",
    )

    def __init__(self, request_id: str, interval: float, key: str | None) -> None:
        self.request_id = request_id
        self.interval = interval  # the next blind gap
        self.key = key  # what its run time is learned under (model and size), if known
        self.trace = JobTrace()
        self.due = 0.0
        self.was_due = 0.0  # when the poll in flight was due
        self.failures = 0
        self.malformed = 0  # unusable answers in a row
        self.malformed_since = 0.0  # when the first of them came
        self.active = True
        self.last: VideoStatus | None = None
        self.waiters: list[tuple[asyncio.Future[VideoStatus], StatusListener | None]] = []


class Poller:
    """See the module docstring. Bound to the event loop it is first used in."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[VideoStatus]],
        *,
        reachable: Callable[[], bool] = lambda: True,
        base_url: str = "the base URL",
        policy: PollPolicy,
        retry: RetryPolicy,
        max_in_flight: int,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        learned: RunTimes | None = None,
    ) -> None:
        self._fetch = fetch
        #: None until first use: then the running loop.
        self._clock = clock
        self._random = rng if rng is not None else random.Random()
        #: The run times learned from this client's finished jobs.
        self.learned = learned if learned is not None else RunTimes()
        self._keys: dict[str, str] = {}
        self._reachable = reachable
        self._base_url = base_url
        #: Whether any poll ever read a usable status: until one did, a page that is not
        #: JSON means a wrong base URL, not a passing fault.
        self._status_seen = False
        self._policy = policy
        self._retry = retry
        self._jobs: dict[str, _Job] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._closed = False

    #: Keys remembered for submitted jobs not yet waited for; the oldest go first.
    MAX_KEYS = 100_000

    def expect(self, request_id: str, key: str) -> None:
        """Say what a job's run time is learned under (its model and size), when this
        client submitted it."""
        self._keys.pop(request_id, None)
        self._keys[request_id] = key
        if len(self._keys) > self.MAX_KEYS:
            del self._keys[next(iter(self._keys))]

    def last_status(self, request_id: str) -> VideoStatus | None:
        job = self._jobs.get(request_id)
        return job.last if job else None

    def watch(
        self, request_id: str, listener: StatusListener | None = None
    ) -> asyncio.Future[VideoStatus]:
        """A future for the job's terminal status (or its permanent error). Cancel the
        future to stop waiting; the job is dropped once nobody waits for it."""
        if self._closed:
            raise SiliconFlowError("the AsyncClient is closed", request_id=request_id)
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop
        future: asyncio.Future[VideoStatus] = loop.create_future()
        job = self._jobs.get(request_id)
        if job is None:
            key = self._keys.pop(request_id, None)
            job = self._jobs[request_id] = _Job(request_id, self._policy.interval, key)
            self._schedule(job, self._clock.time())
        elif listener is not None and job.last is not None:
            _tell(listener, job.last)
        job.waiters.append((future, listener))
        future.add_done_callback(lambda f: self._forget(job, f))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run(), name="siliconflow-video poller")
        return future

    def _forget(self, job: _Job, future: asyncio.Future[VideoStatus]) -> None:
        job.waiters = [w for w in job.waiters if w[0] is not future]
        if not job.waiters and job.active:
            job.active = False
            if self._jobs.get(job.request_id) is job:
                del self._jobs[job.request_id]

    def _schedule(self, job: _Job, due: float) -> None:
        job.due = due
        if not self._heap or due < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (due, next(self._order), job))

    async def _run(self) -> None:
        try:
            await self._dispatch()
        except Exception as exc:  # noqa: BLE001 - a bug here must end waits, not hang them
            logger.exception("the poll scheduler stopped")
            for job in list(self._jobs.values()):
                self._finish(
                    job,
                    error=SiliconFlowError(
                        f"polling stopped unexpectedly: {type(exc).__name__}: {exc}",
                        request_id=job.request_id,
                    ),
                )
            self._runner = None

    def _drop_stale(self) -> None:
        """Pop entries of jobs nobody waits for, and stale entries of rescheduled jobs."""
        heap = self._heap
        while heap and (not heap[0][2].active or heap[0][0] != heap[0][2].due):
            heapq.heappop(heap)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._clock
        assert clock is not None  # set by watch(), which starts this task
        heap = self._heap
        while True:
            self._drop_stale()
            self._wake.clear()
            if not heap:
                await self._wake.wait()
                continue
            delay = heap[0][0] - clock.time()
            if delay > 0:
                timer = clock.call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
                continue
            # Choose the job only once a slot is free: the most overdue one at that moment
            # (a 429'd poll put back in line meanwhile may have become it).
            await self._slots.acquire()
            self._drop_stale()
            if not heap or heap[0][0] > clock.time():
                self._slots.release()
                continue
            job = heapq.heappop(heap)[2]
            job.was_due = job.due
            job.due = float("inf")  # in flight: not due again until rescheduled
            task = loop.create_task(self._poll(job))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    def _now(self) -> float:
        assert self._clock is not None  # set by watch(), before any poll
        return self._clock.time()

    async def _poll(self, job: _Job) -> None:
        try:
            status = await self._fetch(job.request_id)
        except APIError as exc:
            job.failures += 1
            if isinstance(exc, MalformedResponseError):
                unusable = self._unusable(job, exc)
                if unusable is not None:
                    self._finish(job, error=unusable)
                    return
            if not is_transient(exc) or self._never_reached(exc, job):
                self._finish(job, error=exc)
                return
            delay = max(job.interval, retry_delay(self._retry, job.failures, exc))
            due = self._now() + delay
            if isinstance(exc, RateLimitError):
                # The client-wide governor now paces every call; behind a backlog of polls
                # waiting their turn, this one keeps its place in line (shifted by its
                # backoff) instead of going to the back, a whole round of polls later.
                due = min(due, job.was_due + delay)
            # A streak past the retry budget is worth a user's attention; the wait goes on.
            level = logging.WARNING if job.failures == self._retry.max_attempts else logging.DEBUG
            logger.log(
                level,
                "status of %s: %s; next poll in %.2fs",
                job.request_id,
                exc,
                max(0.0, due - self._now()),
            )
            if job.active:
                self._schedule(job, due)
            return
        except Exception as exc:  # noqa: BLE001 - a waiter must hear of any failure
            self._finish(job, error=exc)
            return
        finally:
            self._slots.release()
        job.failures = 0
        job.malformed = 0
        self._status_seen = True
        if job.last is None or job.last.status != status.status:
            for _, listener in job.waiters:
                if listener is not None:
                    _tell(listener, status)
        job.last = status
        now = self._now()
        if status.is_terminal:
            if status.status is Status.SUCCEED:
                self._learn(job, status, now)
            self._finish(job, status=status)
            return
        job.trace.saw(status.status, now)
        policy = self._policy
        spread = self.learned.spread(job.key) if policy.learn else None
        gap = learned_gap(policy, spread, job.trace, status.status, now)
        jitter = self._random.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)
        if gap is None:  # blind: the growing schedule
            delay = min(policy.blind_cap, job.interval * jitter)
            job.interval = min(policy.blind_cap, job.interval * policy.growth)
        else:
            delay = min(policy.max_interval, gap * jitter)
        if job.active:
            self._schedule(job, now + delay)

    def _learn(self, job: _Job, status: VideoStatus, now: float) -> None:
        """Learn the run time of a job seen succeeding. A failed job, or a wait that ended
        before the finish, is never learned from: it says nothing of how long runs take."""
        timings = status.results.timings if status.results else None
        inference = timings.inference if timings else None
        sample = run_time_sample(job.trace, now, inference)
        if sample is not None:
            self.learned.add(job.key, sample)

    def _unusable(self, job: _Job, exc: MalformedResponseError) -> MalformedResponseError | None:
        """The error that ends the wait on this unusable answer, or None to ask again."""
        if not self._status_seen and exc.not_json_at_all:
            return NotSiliconFlowError.from_answer(exc, self._base_url, job.request_id)
        now = self._now()
        if job.malformed == 0:
            job.malformed_since = now
        job.malformed += 1
        lasted = now - job.malformed_since
        grace = self._policy.malformed_grace
        if lasted < grace:
            return None
        return MalformedResponseError(
            f"gave up after {job.malformed} unusable status answers in a row over "
            f"{lasted:.0f} s (PollPolicy.malformed_grace is {grace:g} s); the last: "
            f"{_problem(exc)}",
            field=exc.field,
            excerpt=exc.excerpt,
            request_id=job.request_id,
        )

    def _never_reached(self, exc: APIError, job: _Job) -> bool:
        """A connection that was never made, by a client that never got any answer, is more
        likely a wrong base URL or no network than an outage: give up after the retry
        budget instead of polling forever. Once the API has answered, outages are waited out."""
        return (
            isinstance(exc, APIConnectionError)
            and not exc.maybe_processed
            and not self._reachable()
            and job.failures >= self._retry.max_attempts
        )

    def _finish(
        self, job: _Job, *, status: VideoStatus | None = None, error: BaseException | None = None
    ) -> None:
        job.active = False
        if self._jobs.get(job.request_id) is job:
            del self._jobs[job.request_id]
        for future, _ in job.waiters:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            elif status is not None:
                future.set_result(status)

    async def aclose(self) -> None:
        """Stop polling; waiters still waiting get a SiliconFlowError."""
        self._closed = True
        tasks = list(self._polls)
        if self._runner is not None:
            tasks.append(self._runner)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in list(self._jobs.values()):
            self._finish(
                job,
                error=SiliconFlowError(
                    "the AsyncClient was closed while waiting", request_id=job.request_id
                ),
            )


def _tell(listener: StatusListener, status: VideoStatus) -> None:
    """Give a listener a status; a listener that raises must not stop the polling."""
    try:
        listener(status)
    except Exception:  # noqa: BLE001 - logged; the job's polling goes on
        logger.exception("status listener raised on %s", status.request_id)


def _problem(exc: MalformedResponseError) -> str:
    """What was wrong with the body, without the field and excerpt the message ends with."""
    return exc.message.removesuffix(f" at {exc.field}; body starts {exc.excerpt!r}")
