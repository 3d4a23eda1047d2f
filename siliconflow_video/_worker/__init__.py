"""Workers on a shared PostgreSQL journal, on procrastinate (the ``worker`` extra).

``_queue`` is procrastinate's side (the App, its schema, deferring the poll and transfer
tasks), ``_run`` one worker process (the tasks and the upkeep), ``_budget`` the fleet's
shared request rate (a row per account in PostgreSQL), ``_metrics`` its Prometheus
metrics, ``_settings`` its timings. Nothing here is imported by ``siliconflow_video``.
"""

from __future__ import annotations

from .._exceptions import JournalError
from ._queue import defer_polls, ensure_schema, make_app, queue_target
from ._run import Worker, poll_delay, run_worker
from ._settings import WorkerSettings

__all__ = [
    "Worker",
    "WorkerSettings",
    "defer_polls",
    "enqueue_polls",
    "ensure_schema",
    "make_app",
    "poll_delay",
    "queue_target",
    "run_worker",
]


async def enqueue_polls(journal: str, request_ids: list[str]) -> int:
    """A poll now for each id, so that a running worker starts on it at once (workers
    also find journaled ids on their own, within ``check_every``); how many were new."""
    from procrastinate.exceptions import ConnectorException

    target = queue_target(journal)
    await ensure_schema(target)
    app = make_app(target, pool_size=1)
    try:
        async with app.open_async():
            return await defer_polls(app, request_ids)
    except ConnectorException as exc:
        raise JournalError(
            f"cannot queue tasks in {target.shown}: {target.scrub(str(exc.__cause__ or exc))}",
            path=target.shown,
        ) from None
