"""procrastinate's side: the App on the journal's database, its schema, and deferring the
two tasks.

The tasks live in procrastinate's tables beside the journal's (same database, same
``search_path``). A *poll* task makes one status call for one requestId and defers its
successor (``schedule_in`` the backoff); a *transfer* task moves one id's videos. Both carry
``lock=job:<id>``, so two tasks of one id never run at once, and a queueing lock
(``poll:<id>``, ``transfer:<id>``), so an id has at most one of each waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .._exceptions import JournalError, JournalUnavailableError
from .._journal import Target, connect_error, parse_url, shown_url

__all__ = [
    "POLL",
    "TRANSFER",
    "defer_poll",
    "defer_transfer",
    "ensure_schema",
    "make_app",
    "pending_ids",
    "queue_target",
    "retry_stalled",
]

POLL = "siliconflow_video.poll"
TRANSFER = "siliconflow_video.transfer"
#: Taken while one process checks for (and creates) procrastinate's tables: workers
#: started together must not create them twice.
_SCHEMA_LOCK = 0x5F5C_1E0F


def queue_target(url: str) -> Target:
    """The journal's PostgreSQL URL, for procrastinate; anything else is refused."""
    if not url.startswith(("postgres://", "postgresql://", "postgresql+")):
        raise JournalUnavailableError(
            "workers share a PostgreSQL journal: give postgresql://USER@HOST:PORT/DB",
            # Never the text as given: libpq's keyword form may hold a password.
            path=shown_url(url),
        )
    return parse_url(url)


def _lock(request_id: str) -> str:
    return f"job:{request_id}"


def make_app(
    target: Target,
    *,
    pool_size: int = 4,
    poll: Callable[[str, int], Awaitable[None]] | None = None,
    transfer: Callable[[str, int], Awaitable[None]] | None = None,
) -> Any:
    """A procrastinate App on the journal's database; with ``poll`` and ``transfer``, the
    two tasks run them (a worker's app), else it only defers (``enqueue``'s)."""
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=target.conninfo,
        min_size=1,
        max_size=pool_size,
        kwargs={"application_name": "siliconflow-video-worker"},
    )
    # procrastinate's pool checks each connection before handing it out: one broken by a
    # server restart is replaced, not used.
    app = procrastinate.App(connector=connector)
    if poll is not None:

        async def poll_task(request_id: str, n: int = 0) -> None:
            await poll(request_id, n)

        app.task(name=POLL)(poll_task)
    if transfer is not None:

        async def transfer_task(request_id: str, n: int = 0) -> None:
            await transfer(request_id, n)

        app.task(name=TRANSFER)(transfer_task)
    return app


async def ensure_schema(target: Target) -> None:
    """Create procrastinate's tables unless they are there (under a lock, so that workers
    started together create them once)."""
    import psycopg
    from procrastinate.schema import SchemaManager

    try:
        conn = await psycopg.AsyncConnection.connect(
            target.conninfo, connect_timeout=10, application_name="siliconflow-video-worker"
        )
    except psycopg.Error as exc:
        # Out of reach (JournalConnectionError: worth waiting for), or a user or password
        # refused (a plain JournalError: reported at once).
        raise connect_error(exc, target) from None
    try:
        async with conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur = await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            row = await cur.fetchone()
            if row is None or not row[0]:
                await conn.execute(SchemaManager.get_schema())
    except psycopg.Error as exc:
        raise JournalError(
            f"cannot prepare the task tables in {target.shown}: {target.scrub(str(exc))}",
            path=target.shown,
        ) from None


async def _defer(app: Any, task: str, request_id: str, n: int, *, delay: float, kind: str) -> bool:
    from procrastinate.exceptions import AlreadyEnqueued

    options: dict[str, Any] = {
        "lock": _lock(request_id),
        "queueing_lock": f"{kind}:{request_id}",
    }
    if delay > 0:
        options["schedule_in"] = {"seconds": delay}
    try:
        await app.configure_task(name=task, **options).defer_async(request_id=request_id, n=n)
    except AlreadyEnqueued:
        return False  # one is waiting already: that one will do
    return True


async def defer_poll(app: Any, request_id: str, n: int = 0, *, delay: float = 0.0) -> bool:
    """A poll of ``request_id`` in ``delay`` seconds; False if one is waiting already."""
    return await _defer(app, POLL, request_id, n, delay=delay, kind="poll")


async def defer_transfer(app: Any, request_id: str, n: int = 0) -> bool:
    """A transfer of ``request_id``'s videos now; False if one is waiting already."""
    return await _defer(app, TRANSFER, request_id, n, delay=0.0, kind="transfer")


async def pending_ids(app: Any) -> set[str]:
    """The ids with a task waiting or running."""
    rows = await app.connector.execute_query_all_async(
        "SELECT DISTINCT lock FROM procrastinate_jobs "
        "WHERE status IN ('todo', 'doing') AND task_name IN (%(poll)s, %(transfer)s)",
        poll=POLL,
        transfer=TRANSFER,
    )
    return {row["lock"][len("job:") :] for row in rows if row["lock"]}


async def defer_polls(app: Any, request_ids: Iterable[str]) -> int:
    """A poll now for each id; how many were deferred (the others had one waiting)."""
    count = 0
    for rid in request_ids:
        count += await defer_poll(app, rid)
    return count


#: procrastinate's own retry (``procrastinate_retry_job_v2``, what ``JobManager.retry_job``
#: runs), applied only while the job is still the stalled row: still running, on the worker
#: that was found stalled. Its own check is the status alone, so a list read before another
#: worker retried the job, and a live worker took it, would send it back to the queue while
#: it runs. The row is locked first; a worker that took it meanwhile leaves nothing to retry.
_RETRY_IF_STALLED = """
WITH stalled AS MATERIALIZED (
    SELECT id FROM procrastinate_jobs
    WHERE id = %(id)s AND status = 'doing' AND worker_id IS NOT DISTINCT FROM %(worker)s
    FOR UPDATE
)
SELECT procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL) FROM stalled
"""


async def retry_stalled(app: Any, stalled: Iterable[Any]) -> int:
    """Put the ``stalled`` jobs (procrastinate's, from ``get_stalled_jobs``) back in the
    queue; how many went back.

    Two workers may retry the same list (each read it before the other acted), so nothing
    here may touch a job another worker has moved on since: a job already retried, or
    retried and running elsewhere by now, is left alone. A job whose successor waits
    already (a poll that deferred the next one, then died: the queueing lock refuses the
    retry) is deleted, but only while it is still the stalled row. Any other error (the
    database away, a schema without the retry function) is raised: the upkeep logs it
    and tries again next round.
    """
    from procrastinate.exceptions import UniqueViolation

    connector = app.connector
    count = 0
    for job in stalled:
        try:
            retried = await connector.execute_query_all_async(
                _RETRY_IF_STALLED, id=job.id, worker=job.worker_id
            )
        except UniqueViolation:
            await connector.execute_query_async(
                "DELETE FROM procrastinate_jobs WHERE id = %(id)s AND status = 'doing' "
                "AND worker_id IS NOT DISTINCT FROM %(worker)s",
                id=job.id,
                worker=job.worker_id,
            )
        else:
            count += len(retried)
    return count
