"""Workers at the edges (siliconflow_video.worker on a real PostgreSQL, the fake over real
HTTP): an account-wide error in burst mode, two workers retrying one stalled task, the
bytes metric of a transfer taken over, enqueue when the task queue refuses."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from siliconflow_video import (
    AsyncClient,
    AuthenticationError,
    DownloadPolicy,
    NotFoundError,
    NotSiliconFlowError,
    PaymentRequiredError,
    PermissionDeniedError,
    SiliconFlowError,
)
from siliconflow_video._journal import JobState, read_jobs
from siliconflow_video._worker import ensure_schema, make_app, queue_target
from siliconflow_video._worker._queue import POLL, defer_poll, retry_stalled
from siliconflow_video.testing import (
    DropMidBody,
    FakeSiliconFlow,
    Fault,
    HTMLPage,
    forbidden,
    not_found,
    payment_required,
    unauthorized,
)
from siliconflow_video.worker import Worker

from . import _postgres
from ._postgres import PASSWORD
from .conftest import child_env
from .test_worker import FAST, accept, options

postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (unauthorized, AuthenticationError),
        (payment_required, PaymentRequiredError),
        (forbidden, PermissionDeniedError),
        (not_found, NotFoundError),
        (HTMLPage, NotSiliconFlowError),
    ],
)
async def test_a_burst_worker_stops_on_an_account_wide_error(
    pg_url: str,
    tmp_path: Path,
    fault: Callable[[], Fault],
    error: type[SiliconFlowError],
) -> None:
    """A rejected key, no balance, a 403, a 404 or a base URL answering HTML: no id can
    get past it, so a burst worker stops and raises it (instead of waiting it out
    forever), and every id stays waiting for the next worker: none failed."""
    async with FakeSiliconFlow() as fake:
        ids = [fake.add_job(run_seconds=0.3, videos=[2_000]) for _ in range(3)]
        await accept(pg_url, ids, tmp_path)
        fake.add_fault("status", fault(), times=None)
        worker = Worker(pg_url, burst=True, settings=FAST, client_options=options(fake))
        with pytest.raises(error):
            await asyncio.wait_for(worker.run(), 60)
    assert worker.failed == set()
    assert {job.state for job in read_jobs(pg_url)} == {JobState.WAITING}


def test_the_worker_command_exits_2_on_a_rejected_key(pg_url: str, tmp_path: Path) -> None:
    """`worker --burst` with a key SiliconFlow rejects: exit 2, a line saying so, no
    traceback and no password; the ids stay waiting."""
    with FakeSiliconFlow(api_key="sk-right").run_in_thread() as fake:
        ids = [fake.add_job(videos=[1_000]) for _ in range(2)]
        asyncio.run(accept(pg_url, ids, tmp_path))
        env = {
            **child_env(),
            "SILICONFLOW_API_KEY": "sk-typo",
            "SILICONFLOW_BASE_URL": fake.base_url,
        }
        done = subprocess.run(
            [sys.executable, "-m", "siliconflow_video", "worker", "--journal", pg_url, "--burst"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 2, done.stderr
    assert "key" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stderr
    assert {job.state for job in read_jobs(pg_url)} == {JobState.WAITING}


def _rows(url: str) -> list[tuple[int, str, str | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, status::text, queueing_lock FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
    return [(int(i), str(s), q) for i, s, q in rows]


def _sql(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(statement, params)


async def _stale(app: object, url: str) -> list[object]:
    """A poll task marked running on a worker that is gone, as get_stalled_jobs lists it."""
    _sql(url, "UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL")
    manager = app.job_manager  # type: ignore[attr-defined]
    return list(await manager.get_stalled_jobs(task_name=POLL, seconds_since_heartbeat=1))


async def _noop(request_id: str, n: int) -> None:
    return None


@contextlib.asynccontextmanager
async def _one_stalled_poll(pg_url: str) -> AsyncIterator[tuple[Any, list[object]]]:
    """A worker's app on the queue, holding one poll task left running by a dead worker,
    and the list get_stalled_jobs gives of it."""
    target = queue_target(pg_url)
    await ensure_schema(target)
    app = make_app(target, poll=_noop, transfer=_noop)
    async with app.open_async():
        await defer_poll(app, "rid-1")
        yield app, await _stale(app, pg_url)


async def test_a_stalled_task_retried_twice_is_queued_once(pg_url: str) -> None:
    """Two workers holding the same list of stalled tasks: the first puts the task back
    in the queue, the second (it is no longer the stalled row: not running) leaves it
    there, never deletes it."""
    async with _one_stalled_poll(pg_url) as (app, stale):
        assert len(stale) == 1
        assert await retry_stalled(app, stale) == 1
        assert await retry_stalled(app, stale) == 0
    [(_, status, lock)] = _rows(pg_url)
    assert (status, lock) == ("todo", "poll:rid-1")


async def test_a_stalled_task_running_again_elsewhere_is_not_retried_again(
    pg_url: str,
) -> None:
    """Two workers read the same stalled list; the first puts the task back and a live
    worker takes it up. The second's retry leaves it running there (procrastinate's own
    retry would send it back to the queue, to run twice)."""
    async with _one_stalled_poll(pg_url) as (app, stale):
        assert await retry_stalled(app, stale) == 1
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
            (live,) = row.fetchone() or (None,)
            conn.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s", (live,))
        assert await retry_stalled(app, stale) == 0
        with psycopg.connect(pg_url) as conn:
            after = conn.execute("SELECT status::text, worker_id FROM procrastinate_jobs")
            assert after.fetchall() == [("doing", live)]


async def test_a_stalled_task_with_a_successor_is_dropped_only_while_stalled(
    pg_url: str,
) -> None:
    """A stalled poll whose successor already waits (it deferred the next poll, then its
    worker died) cannot go back: it is deleted while still the stalled row, and kept once
    a live worker runs it."""
    async with _one_stalled_poll(pg_url) as (app, stale):
        await defer_poll(app, "rid-1", 1)  # the successor, queued before the death
        [(stalled_id, _, _), (successor_id, _, _)] = _rows(pg_url)
        # Meanwhile a live worker took the stalled row over: it is not ours to delete.
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")
            (live,) = row.fetchone() or (None,)
            conn.execute(
                "UPDATE procrastinate_jobs SET worker_id = %s WHERE id = %s", (live, stalled_id)
            )
        assert await retry_stalled(app, stale) == 0
        assert [(i, s) for i, s, _ in _rows(pg_url)] == [
            (stalled_id, "doing"),
            (successor_id, "todo"),
        ]
        # Still the stalled row (its worker gone): dropped, the successor kept.
        _sql(pg_url, "UPDATE procrastinate_jobs SET worker_id = NULL WHERE id = %s", stalled_id)
        assert await retry_stalled(app, stale) == 0
    assert [(i, s) for i, s, _ in _rows(pg_url)] == [(successor_id, "todo")]


async def test_a_transfer_taken_over_counts_only_the_bytes_fetched(
    pg_url: str, tmp_path: Path
) -> None:
    """An id whose transfer was cut short (its first video complete, half of the second
    kept in its .part file) finished by a worker: the bytes metric counts what the worker
    fetched, not the kept half, and nothing for the complete video it reused."""
    small, size = 30_000, 400_000
    async with FakeSiliconFlow() as fake:
        rid = fake.add_job(videos=[small, size])
        # The whole of the small video, then a reset halfway through the large one.
        fake.add_fault("video", DropMidBody(after_bytes=size // 2), times=None, request_id=rid)
        async with AsyncClient(
            api_key=fake.api_key,
            base_url=fake.base_url,
            journal=pg_url,
            max_concurrent_downloads=1,
            download=DownloadPolicy(max_attempts=1),
        ) as client:
            [cut] = [o async for o in client.download_as_completed([rid], tmp_path)]
        assert cut.error is not None
        assert (tmp_path / f"{rid}_0.mp4").stat().st_size == small
        kept = (tmp_path / f"{rid}_1.mp4.part").stat().st_size
        assert 0 < kept < size
        fake.clear_faults()
        await accept(pg_url, [rid], tmp_path)  # back to waiting, for the workers
        worker = Worker(pg_url, burst=True, settings=FAST, client_options=options(fake))
        assert await asyncio.wait_for(worker.run(), 60) == 0
        for index in (0, 1):
            path = tmp_path / f"{rid}_{index}.mp4"
            assert path.read_bytes() == fake.video_bytes(rid, index)
    counted = worker.metrics.registry.get_sample_value("siliconflow_video_bytes_transferred_total")
    assert counted == size - kept


def test_enqueue_says_when_no_task_could_be_queued(pg_url: str, tmp_path: Path) -> None:
    """enqueue into a journal whose task queue refuses (its tables broken): the ids are
    journaled all the same, and it says so in one warning without the password."""
    asyncio.run(ensure_schema(queue_target(pg_url)))
    _sql(pg_url, "DROP FUNCTION procrastinate_defer_jobs_v1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "siliconflow_video",
            "enqueue",
            "rid-1",
            "rid-2",
            "-o",
            str(tmp_path),
            "--journal",
            pg_url,
        ],
        env={**child_env(), "SILICONFLOW_API_KEY": "sk-any"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no task was queued" in done.stderr, done.stderr
    assert "unexpected" not in done.stderr.lower()
    assert PASSWORD not in done.stderr
    assert sorted(j.request_id or "" for j in read_jobs(pg_url)) == ["rid-1", "rid-2"]
