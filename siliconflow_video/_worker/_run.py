"""One worker process: a procrastinate worker running the poll and transfer tasks, with
one AsyncClient and one journal shared by every task, and the upkeep beside it.

The upkeep (every ``check_every`` seconds) retries the jobs of stalled workers (their
heartbeat stopped: killed, frozen, cut off), found by procrastinate's own
``get_stalled_jobs`` and put back with its retry while still the stalled row
(``_queue.retry_stalled``); gives every unfinished journaled id without a task a
poll (what ``enqueue`` wrote, or what a lost task left); refreshes the job counts of the
metrics; and, in burst mode, ends the worker once no task is waiting or running and no
journaled id is unfinished.

A poll is one status call made through the download pipeline (``download_as_completed``,
as ``download`` runs it): a job still running ends the task at once, its successor queued;
a finished one carries on into its transfer in the same task, so it costs no second status
call. A job the journal shows ``downloading`` (a transfer cut short) gets a transfer task.

Every API call of the worker's client is paced by the fleet's rate budget
(``_budget.SharedBudget``: one rate per account in PostgreSQL, this worker's own governor
while it is out of reach) unless ``WorkerSettings.rate_budget`` is ``"local"``.

A poll's next delay is the blind schedule of the client's ``PollPolicy`` (``interval``
growing by ``growth`` per call up to ``max_blind_interval``, jittered): the learned schedule
needs one process to follow a job from its first answer, which a fleet does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from .._client import AsyncClient
from .._config import PollPolicy, resolve_api_key, resolve_base_url
from .._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ForeignFileError,
    JobFailedError,
    JournalConnectionError,
    JournalError,
    LeaseHeldError,
    NoSuchBucketError,
    NotFoundError,
    NotSiliconFlowError,
    PaymentRequiredError,
    PermissionDeniedError,
    SiliconFlowError,
    StorageAuthenticationError,
    StoragePermissionError,
    UnsafeFileNameError,
    WaitTimeoutError,
)
from .._journal import JobRecord, JobState, Journal, open_journal
from .._models import EventKind, ProgressEvent, Status
from ._budget import SharedBudget, account_key
from ._metrics import Metrics
from ._queue import (
    POLL,
    TRANSFER,
    defer_poll,
    defer_transfer,
    ensure_schema,
    make_app,
    pending_ids,
    queue_target,
    retry_stalled,
)
from ._settings import WorkerSettings

__all__ = ["Worker", "poll_delay", "run_worker"]

logger = logging.getLogger("siliconflow_video.worker")

#: Journal states with work left for a worker (``submitting`` and ``submit_unknown`` are
#: a person's to settle: a worker never submits).
_OPEN = (JobState.WAITING, JobState.DOWNLOADING)
#: What SiliconFlow says of a job that has not finished.
_RUNNING = (Status.IN_QUEUE, Status.IN_PROGRESS)
#: Errors about the account or the set-up, not the id: the id is kept for later (a
#: worker in burst mode stops on the first, since no id can get past it).
_ACCOUNT_ERRORS = (
    AuthenticationError,
    PaymentRequiredError,
    PermissionDeniedError,
    NotFoundError,
    NotSiliconFlowError,
    # The API out of reach: every id would meet it (one poll's wait is bounded by
    # ``WorkerSettings.poll_timeout``, so it comes here rather than holding a slot).
    APIConnectionError,
    # The bucket refuses this worker's credentials, or is not there: a set-up to fix.
    StorageAuthenticationError,
    StoragePermissionError,
    NoSuchBucketError,
)
#: Errors no later try can get past: the job failed at SiliconFlow, SiliconFlow refuses
#: the id, a file name that is not ours, a destination or option that cannot work. Any
#: other error (the API or the video host out of reach, the bucket failing, an expired
#: URL) is tried again for ``WorkerSettings.retry_for``.
_FINAL_ERRORS = (
    JobFailedError,
    BadRequestError,
    ForeignFileError,
    UnsafeFileNameError,
    ConfigurationError,
)
#: Job counts for the metrics are read this often at most (a GROUP BY over the jobs).
_COUNT_EVERY = 10.0
#: While tasks are under way, the journal is searched for ids without one this often.
_SCAN_EVERY = 10.0


def poll_delay(policy: PollPolicy, n: int, rng: random.Random | None = None) -> float:
    """Seconds before the poll after ``n`` earlier ones: ``interval · growth**n``, at most
    the policy's blind cap, spread by its jitter."""
    base = min(policy.interval * policy.growth ** min(n, 64), policy.blind_cap)
    spread = (rng or random).uniform(-policy.jitter, policy.jitter)
    return max(base * (1 + spread), 0.05)


class Worker:
    """A worker on a PostgreSQL journal; ``await worker.run()`` until :meth:`stop` (or,
    with ``burst=True``, until no work is left).

    ::

        worker = Worker("postgresql://sfv@db/sfv", concurrency=16, burst=True)
        code = await worker.run()   # 0: all done; 1: some id failed
        # (burst mode: a rejected key, no balance, a wrong base URL is raised, ids kept)

    ``client_options`` go to the worker's one :class:`AsyncClient` (``api_key``,
    ``base_url``, ``poll``, ``download``...). ``metrics_port`` serves Prometheus metrics
    at ``/metrics`` on ``metrics_host`` (loopback unless told otherwise); 0 picks a free port
    (``metrics_port`` then says which, once running).
    """

    def __init__(
        self,
        journal: str,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        settings: WorkerSettings | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        if concurrency is not None:
            self.settings = attrs.evolve(self.settings, concurrency=concurrency)
        self._target = queue_target(os.fspath(journal))
        self._url = os.fspath(journal)
        self.burst = burst
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._client_options = dict(client_options or {})
        if "journal" in self._client_options:
            raise ConfigurationError("the worker's client uses the worker's journal")
        #: requestIds whose job ended failed in this worker's tasks.
        self.failed: set[str] = set()
        #: In burst mode, the account-wide error that stopped the worker (ids kept).
        self.held_by: SiliconFlowError | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping: asyncio.Event | None = None
        self._client: AsyncClient | None = None
        self._journal: Journal | None = None
        self._app: Any = None
        self._budget: SharedBudget | None = None
        self._metrics = Metrics()
        self._scanned = -_SCAN_EVERY

    def __repr__(self) -> str:
        return f"<Worker journal={self._target.shown!r} burst={self.burst}>"

    @property
    def shown(self) -> str:
        """The journal, as shown to a person (no password)."""
        return self._target.shown

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    def stop(self) -> None:
        """Ask the worker to stop: running tasks get ``shutdown_grace`` to finish."""
        if self._stopping is not None:
            self._stopping.set()

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, in burst mode, until no work is left): 0, or 1 when a
        job this worker handled failed.

        In burst mode an error about the account or the set-up rather than an id (a
        rejected key, no balance, 403, a base URL that is not SiliconFlow's) stops the
        worker and is raised once it has stopped: no id can get past it, and waiting it
        out would never end. The ids stay ``waiting`` for the next worker."""
        self._stopping = asyncio.Event()
        settings = self.settings
        await self._reaching("prepare the task tables", lambda: ensure_schema(self._target))
        journal = open_journal(self._url, lease_seconds=settings.lease_seconds)
        await self._reaching("open the journal", journal.open)
        self._journal = journal
        budget: SharedBudget | None = None
        try:
            options = {
                "max_concurrent_downloads": settings.concurrency,
                # A call waits for its rate turn before a request slot: with fewer slots
                # than tasks, turns taken would queue for slots, each spaced at its old rate.
                "max_concurrent_requests": max(16, settings.concurrency),
                **self._client_options,
            }
            if settings.rate_budget == "shared" and "pacing" not in options:
                budget = SharedBudget(self._target, self._account(options))
                await budget.open()
                options["pacing"] = budget
                self._budget = budget
            async with AsyncClient(journal=journal, **options) as client:
                self._client = client
                if self.metrics_port is not None:
                    self.metrics_port = self._metrics.serve(self.metrics_port, self.metrics_host)
                    logger.info(
                        "worker: metrics at http://%s:%d/metrics",
                        self.metrics_host,
                        self.metrics_port,
                    )
                try:
                    await self._serve()
                finally:
                    self._metrics.count_calls(client.rate_stats)
                    self._metrics.close()
        finally:
            try:
                if budget is not None:
                    await budget.aclose()
            finally:
                await journal.aclose()
        if self.held_by is not None:
            raise self.held_by
        return 1 if self.failed else 0

    @staticmethod
    def _account(options: Mapping[str, Any]) -> str:
        """The rate budget's row: the account the client will use (its key and base URL,
        resolved as the client does), hashed."""
        return account_key(
            resolve_api_key(options.get("api_key")), resolve_base_url(options.get("base_url"))
        )

    async def _reaching(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """``step``, tried again for ``start_timeout`` seconds while PostgreSQL cannot be
        reached (a server restarting as the worker starts). Any other journal error (a
        password refused, a missing database) is no outage: it is raised at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.start_timeout
        while True:
            try:
                await step()
                return
            except JournalConnectionError as exc:
                if loop.time() >= deadline:
                    raise
                logger.warning("worker: cannot %s yet, trying again: %s", what, exc)
            await asyncio.sleep(1.0)

    async def _serve(self) -> None:
        settings = self.settings
        app = make_app(
            self._target,
            pool_size=settings.concurrency + 3,
            poll=self._poll,
            transfer=self._transfer,
        )
        self._app = app
        await self._reaching("open the task queue", lambda: self._open_queue(app))
        try:
            assert self._stopping is not None
            upkeep = asyncio.create_task(self._upkeep(), name="upkeep")
            try:
                await self._procrastinate(app)
            finally:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep
        finally:
            await app.close_async()

    async def _open_queue(self, app: Any) -> None:
        from procrastinate.exceptions import ConnectorException

        try:
            await app.open_async()
        except ConnectorException as exc:
            raise JournalError(self._target.scrub(str(exc.__cause__ or exc))) from None

    async def _procrastinate(self, app: Any) -> None:
        """procrastinate's worker until stopped; started again when it ends on its own
        (PostgreSQL restarted, the network cut: its listener or heartbeat failed)."""
        assert self._stopping is not None
        settings = self.settings
        while not self._stopping.is_set():
            run = asyncio.create_task(
                app.run_worker_async(
                    concurrency=settings.concurrency,
                    name=self.name,
                    wait=True,
                    install_signal_handlers=False,
                    fetch_job_polling_interval=settings.fetch_every,
                    abort_job_polling_interval=max(settings.fetch_every, 5.0),
                    update_heartbeat_interval=settings.heartbeat_every,
                    stalled_worker_timeout=settings.stalled_after,
                    shutdown_graceful_timeout=settings.shutdown_grace,
                    # The journal keeps each id's outcome and error; a task row is only
                    # the queue's, and a failed one (its id gets a new poll) would stay
                    # forever.
                    delete_jobs="always",
                ),
                name="procrastinate worker",
            )
            stopping = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait((run, stopping), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # SIGTERM or Ctrl-C in the CLI, a cancel in Python: the same graceful stop.
                self._stopping.set()
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                raise
            finally:
                stopping.cancel()
            if not run.done():
                # procrastinate's graceful stop: no new job, running ones get the grace.
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
                return
            error = run.exception()
            if self._stopping.is_set():
                return
            logger.warning(
                "worker: the task queue stopped (%s); starting it again",
                self._target.scrub(str(error)) if error else "no error",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 2.0)

    async def _upkeep(self) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        counted = -_COUNT_EVERY
        while not self._stopping.is_set():
            try:
                await self._retry_stalled()
                left = await self._feed()
                if loop.time() - counted >= _COUNT_EVERY:
                    assert self._journal is not None
                    self._metrics.count_jobs(await self._journal.count_jobs())
                    counted = loop.time()
                if self.burst and not left:
                    logger.info("worker: no work left; stopping (burst)")
                    self._stopping.set()
                    return
            except (SiliconFlowError, OSError) as exc:
                logger.warning("worker: upkeep failed, trying again: %s", exc)
            except Exception as exc:  # noqa: BLE001 - procrastinate's, psycopg's: the db is away
                logger.warning(
                    "worker: upkeep failed, trying again: %s", self._target.scrub(str(exc))
                )
            if self._client is not None:
                self._metrics.count_calls(self._client.rate_stats)
            if self._budget is not None:
                self._metrics.rate_shared.set(1 if self._budget.shared else 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.check_every)

    async def _retry_stalled(self) -> None:
        """Jobs running on a worker whose heartbeat stopped go back to the queue."""
        manager = self._app.job_manager
        for name in (POLL, TRANSFER):
            stalled = list(
                await manager.get_stalled_jobs(
                    task_name=name, seconds_since_heartbeat=self.settings.stalled_after
                )
            )
            retried = await retry_stalled(self._app, stalled) if stalled else 0
            if retried:
                logger.info(
                    "worker: %d %s task(s) of a stalled worker back in the queue", retried, name
                )

    async def _feed(self) -> bool:
        """A poll for every unfinished journaled id with no task; True if work is left.

        The journal is read in full every ``_SCAN_EVERY`` seconds, or as soon as no task
        is left (which burst mode must check): with tasks under way, every id they cover
        is taken care of, and reading 10,000 rows every round would be waste."""
        assert self._journal is not None
        loop = asyncio.get_running_loop()
        pending = await pending_ids(self._app)
        if pending and loop.time() - self._scanned < _SCAN_EVERY:
            return True
        self._scanned = loop.time()
        jobs = await self._journal.jobs(states=_OPEN)
        for job in jobs:
            if job.request_id is not None and job.request_id not in pending:
                await defer_poll(self._app, job.request_id)
                pending.add(job.request_id)
        return bool(jobs or pending)

    # -- the tasks ----------------------------------------------------------------------

    async def _poll(self, request_id: str, n: int) -> None:
        await self._counted("poll", request_id, self._poll_once(request_id, n))

    async def _counted(self, task: str, request_id: str, step: Awaitable[str]) -> None:
        """Run one task's ``step``; its outcome and the client's calls are counted however
        it ends."""
        outcome = "error"
        try:
            outcome = await step
        except Exception as exc:
            # procrastinate marks the task failed; the upkeep gives the id a new poll.
            logger.warning("worker: %s of %s failed: %s", task, request_id, exc)
            raise
        finally:
            self._metrics.tasks.labels(task=task, outcome=outcome).inc()
            if self._client is not None:
                self._metrics.count_calls(self._client.rate_stats)

    async def _poll_once(self, request_id: str, n: int) -> str:
        """One status call through the download pipeline: a job still running ends the
        task at once (its successor queued), a finished one goes on into its transfer in
        this same task. The pipeline's own status call is the poll, so a job costs no
        extra call for fresh URLs, and everything is journaled as by ``download``."""
        journal, client, app = self._journal, self._client, self._app
        assert journal is not None
        assert client is not None
        job = await journal.find(request_id)
        if job is None or job.state not in _OPEN:
            return "skipped"  # finished meanwhile, or not ours to touch
        if job.state is JobState.DOWNLOADING:
            await defer_transfer(app, request_id)  # a transfer cut short: carry it on
            return "transfer"
        loop = asyncio.get_running_loop()
        running: asyncio.Future[None] = loop.create_future()

        def progress(event: ProgressEvent) -> None:
            self._metrics.progress(event)
            running_now = event.kind is EventKind.STATUS and event.status in _RUNNING
            if running_now and not running.done():
                running.set_result(None)

        outcomes = client.download_as_completed(
            [request_id], job.dest, progress=progress, timeout=self.settings.poll_timeout
        )
        async with contextlib.aclosing(outcomes):
            first = asyncio.ensure_future(anext(outcomes, None))
            try:
                await asyncio.wait((first, running), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not first.done():
                    # Still running at SiliconFlow: stop this wait (the lease is given
                    # back, nothing else was begun) and ask again later.
                    first.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await first
            outcome = None if first.cancelled() else first.result()
        if outcome is None:
            await defer_poll(app, request_id, n + 1, delay=poll_delay(client.poll_policy, n))
            return "waiting"
        if outcome.error is None:
            return "done"
        return await self._ended(job.job_key, request_id, outcome.error, n)

    async def _ended(self, job_key: str, request_id: str, error: SiliconFlowError, n: int) -> str:
        """An id whose wait or transfer ended with ``error`` (the pipeline journaled it)."""
        assert self._journal is not None
        assert self._client is not None
        # No status in a whole poll_timeout: the API, not this id. A wait for another
        # process's lease on the id (which may leave the status wait less than that) is
        # this id's, and is tried again below.
        unheard = (
            isinstance(error, WaitTimeoutError)
            and error.last_status is None
            and error.timeout >= self.settings.poll_timeout
            and not isinstance(error.__cause__, LeaseHeldError)
        )
        if isinstance(error, _ACCOUNT_ERRORS) or unheard:
            # The key, the balance or the base URL, not this id: keep it for later.
            after = await self._journal.find(request_id)
            await self._keep_waiting(after, request_id, n, self._client.poll_policy.blind_cap)
            if self.burst:
                # Every id would meet it: a burst worker (a CI step, a Job) that waited it
                # out would never end. Stop; the ids stay waiting, nothing is lost.
                if self.held_by is None:
                    self.held_by = error
                    logger.info("worker: stopping (burst): %s; the ids stay waiting", error)
                assert self._stopping is not None
                self._stopping.set()
            else:
                logger.error("worker: %s: %s; asking again later", request_id, error)
            return "error"
        if not isinstance(error, _FINAL_ERRORS):
            after = await self._journal.find(request_id)
            if after is not None and self._young(after):
                # A passing trouble (an outage, the video host or the bucket failing): the
                # id stays waiting and is asked about again, with fresh URLs.
                delay = max(self.settings.retry_every, poll_delay(self._client.poll_policy, n))
                await self._keep_waiting(after, request_id, n, delay)
                logger.warning("worker: %s: %s; trying again in %.0f s", request_id, error, delay)
                return "error"
        try:
            after = await self._journal.find(request_id)
            if after is not None and after.state in _OPEN:
                # Not retried forever: the journal says failed; `resume` may try again.
                await self._journal.failed(job_key, error)
        except JournalError as exc:
            logger.warning("worker: could not record the failure of %s: %s", request_id, exc)
        self.failed.add(request_id)
        logger.warning("worker: %s failed: %s", request_id, error)
        return "failed"

    async def _keep_waiting(
        self, job: JobRecord | None, request_id: str, n: int, delay: float
    ) -> None:
        """Keep the id waiting (reopened if the pipeline recorded it failed) and poll it
        again in ``delay`` seconds."""
        assert self._journal is not None
        if job is not None and job.state is JobState.FAILED:
            await self._journal.accept([request_id], dest=job.dest)
        await defer_poll(self._app, request_id, n + 1, delay=delay)

    def _young(self, job: JobRecord) -> bool:
        """Whether ``job`` was journaled less than ``retry_for`` seconds ago."""
        since = job.created_at or job.submitted_at
        if since is None:
            return False
        age = (datetime.now(UTC) - since).total_seconds()
        return age < self.settings.retry_for

    async def _transfer(self, request_id: str, n: int) -> None:
        await self._counted("transfer", request_id, self._transfer_once(request_id, n))

    async def _transfer_once(self, request_id: str, n: int) -> str:
        journal, client = self._journal, self._client
        assert journal is not None
        assert client is not None
        job = await journal.find(request_id)
        if job is None or job.state not in _OPEN:
            return "skipped"
        if job.state is JobState.DOWNLOADING:
            # Begun before (the pipeline journals `succeeded` first): by a dead worker, or
            # an earlier try that stopped.
            self._metrics.transfer_retries.inc()
        # The pipeline of `download`: journaled, leased per id, complete files reused.
        outcomes = client.download_as_completed(
            [request_id], job.dest, progress=self._metrics.progress
        )
        error: SiliconFlowError | None = None
        async with contextlib.aclosing(outcomes):
            async for outcome in outcomes:
                error = outcome.error
        if error is None:
            return "done"
        return await self._ended(job.job_key, request_id, error, n)


async def run_worker(journal: str, **options: Any) -> int:
    """Run a :class:`Worker` (same keywords) until stopped or, with ``burst=True``, until
    no work is left; 0, or 1 when a job it handled failed (in burst mode, an error about
    the account is raised: see :meth:`Worker.run`). Cancelling it stops the worker
    cleanly."""
    return await Worker(journal, **options).run()
