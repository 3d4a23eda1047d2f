"""``siliconflow-video worker``: one worker of a fleet sharing a PostgreSQL journal.

Registered by ``_parser`` (``add_worker_command``) and run by ``_commands`` (``Cli.worker``
calls :func:`run_worker_command`); what a worker does is ``siliconflow_video._worker``'s.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from .._config import API_KEY_ENV
from .._exceptions import SiliconFlowError
from ._explain import UsageError
from ._types import port, positive_int

__all__ = ["add_worker_command", "defer_for_workers", "run_worker_command"]

log = logging.getLogger("siliconflow_video.cli")

_POSTGRES = ("postgres://", "postgresql://", "postgresql+")
_EXTRA = "pip install 'siliconflow-video[worker]'"


def add_worker_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """The ``worker`` command's parser, added to ``commands``."""
    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="work on the ids of a PostgreSQL journal, with other workers",
        description="Poll and download every unfinished id of a PostgreSQL journal (what "
        "'enqueue --journal postgresql://...' recorded), sharing the work with every other "
        "worker on the same journal; a dead worker's jobs are taken over by the others. "
        "Stop it with SIGTERM (exit 143) or Ctrl-C (130): running tasks get 10 s to finish. "
        "With --burst: exit 0 once all is done, 1 if an id it handled failed; an error about "
        "the account (a rejected key, no balance, a wrong base URL) stops it at once, the ids "
        "left waiting (exit 2, or 1 for no balance or a 403). 2: a usage or configuration "
        "error.",
    )
    worker.add_argument(
        "--journal",
        required=True,
        metavar="URL",
        help="the shared journal: postgresql://USER@HOST:PORT/DB (the password from "
        "PGPASSWORD or ~/.pgpass rather than the URL)",
    )
    worker.add_argument(
        "--burst",
        action="store_true",
        help="stop once no work is left (exit 0, or 1 if an id failed), or at the first "
        "error about the account",
    )
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=8,
        metavar="N",
        help="tasks (status calls, transfers) at once in this worker (default: 8)",
    )
    worker.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address the metrics listen on (default: 127.0.0.1, this machine only)",
    )
    worker.add_argument(
        "--rate-budget",
        choices=("shared", "local"),
        default="shared",
        help="shared (the default): every worker on the account keeps to one request rate, "
        "kept in PostgreSQL; local: each worker adapts to its own 429s only",
    )
    return worker


def _postgres(journal: Path | str | None) -> str | None:
    text = None if journal is None else str(journal)
    return text if text is not None and text.startswith(_POSTGRES) else None


async def run_worker_command(
    args: argparse.Namespace, api_key: str | None, journal: Path | str | None
) -> int:
    """Run one worker until stopped (or, ``--burst``, until no work is left)."""
    url = _postgres(journal)
    if url is None:
        raise UsageError(
            "the worker needs a PostgreSQL journal",
            "pass --journal postgresql://USER@HOST:PORT/DB, the journal the ids were "
            "enqueued in (one machine: 'siliconflow-video resume' does the work)",
        )
    key = (api_key or "").strip()
    if not key:
        raise UsageError(
            "no API key", f"set the {API_KEY_ENV} environment variable (or pass --api-key)"
        )
    try:
        import procrastinate  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError("the worker needs procrastinate and prometheus_client", _EXTRA) from None
    from .._worker import Worker, WorkerSettings

    worker = Worker(
        url,
        settings=WorkerSettings(rate_budget=args.rate_budget),
        concurrency=args.concurrency,
        burst=args.burst,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        client_options={"api_key": key, "base_url": args.base_url},
    )
    log.info("worker %s on %s (concurrency %d)", worker.name, worker.shown, args.concurrency)
    # procrastinate logs a traceback for each database error it recovers from; the worker
    # says what happened in one line of its own (-v shows procrastinate's too).
    engine = logging.getLogger("procrastinate")
    level = engine.level
    engine.setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    try:
        code = await worker.run()
    finally:
        engine.setLevel(level)
    if worker.failed:
        log.warning("%d ids failed; see: siliconflow-video jobs --journal URL", len(worker.failed))
    return code


async def defer_for_workers(journal: Path | str | None, request_ids: Sequence[str]) -> None:
    """After ``enqueue`` into a PostgreSQL journal: a poll task for each id now, so that
    running workers start at once (they also find journaled ids on their own)."""
    url = _postgres(journal)
    if url is None:
        return
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return  # no worker extra here: the workers find the ids in the journal
    from .._worker import enqueue_polls

    try:
        await enqueue_polls(url, list(request_ids))
    except (SiliconFlowError, OSError) as exc:
        # enqueue_polls scrubs the password from what it raises.
        log.warning(
            "warning: the ids are journaled, but no task was queued for them (running "
            "workers find them within 10 s): %s",
            exc,
        )
