"""Polling benchmark: thousands of jobs awaited at once, finishing at random times.

Two waiters await the same kind of job set against the same fake API (one process of its
own, reused for every run; each run gets fresh jobs whose finish times are drawn from the
same seeded distribution for both waiters of a repetition):

- ``library``: ``AsyncClient.as_completed(ids)`` with the client's default policies (first
  poll at once, then every ``poll_interval`` growing by 1.5x up to ``max_poll_interval``,
  at most 16 requests in flight);
- ``sleep loop``: what most integrations do today, one coroutine per job looping
  ``status = await post(...); if done: break; await asyncio.sleep(5)``, sharing one aiohttp
  session, bounded to 16 requests in flight like the library.

Each waiter runs in a fresh process and reports its own CPU (``process_time`` over the wait),
its status calls, and the wall-clock time (``time.time()``) at which it saw each job finish;
the server reports when each job really finished. Memory is measured in separate runs under
``tracemalloc`` (which would slow the timed runs): the peak of traced allocations while all
jobs are awaited and the first poll rounds are in flight, per job.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import attrs

from ._measure import (
    Child,
    Connection,
    Library,
    Metrics,
    Row,
    fmt_ratio,
    interleave,
    median,
    paired_ratio,
    peak_rss_bytes,
    percentile,
    report_failure,
    rss_bytes,
    run_loop,
    use_library,
    values,
)

API_KEY = "sk-bench"
KIB = 1024
TERMINAL = ("Succeed", "Failed")


@attrs.frozen
class Plan:
    """The shape of one polling benchmark."""

    jobs: int
    #: Jobs finish at times drawn uniformly from [0, spread] seconds after they are created.
    spread: float
    #: The library's policy; None: the client's defaults (the full run), so a --compare
    #: build with other defaults is measured with its own.
    poll_interval: float | None
    max_poll_interval: float | None
    #: The reference's fixed sleep between calls.
    sleep: float
    #: How long each memory run awaits before the peak is read.
    memory_window: float
    concurrency: int = 16


FULL = Plan(
    jobs=10_000, spread=20.0, poll_interval=None, max_poll_interval=None, sleep=5.0,
    memory_window=4.0,
)  # fmt: skip
# Every interval scaled by 1/5, so a smoke run sees the same phases in a fifth of the time.
QUICK = Plan(
    jobs=1_000, spread=2.0, poll_interval=0.2, max_poll_interval=2.0, sleep=1.0,
    memory_window=0.8,
)  # fmt: skip


# --- the fake API (its own process) ----------------------------------------------------------


def serve_jobs(conn: Connection, rate_limit: float | None, log_requests: bool) -> None:
    try:
        asyncio.run(_serve_jobs(conn, rate_limit, log_requests))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _serve_jobs(conn: Connection, rate_limit: float | None, log_requests: bool) -> None:
    from siliconflow_video.testing import FakeSiliconFlow

    from ._measure import cpu_seconds

    loop = asyncio.get_running_loop()
    async with FakeSiliconFlow(api_key=API_KEY, log_requests=log_requests) as fake:
        if rate_limit is not None:
            fake.set_rate_limit(rate_limit)
        conn.send({"base_url": fake.base_url})
        while True:
            try:
                message = await loop.run_in_executor(None, conn.recv)
            except EOFError:
                return
            if message == "stop":
                return
            kind, *args = message
            if kind == "jobs":
                conn.send(_add_jobs(fake, *args))
            elif kind == "stats":
                status = fake.requests_for("status") if log_requests else []
                conn.send(
                    {
                        "cpu": cpu_seconds(),
                        "status_calls": len(status),
                        "rate_limited": sum(1 for r in status if r.status == 429),
                    }
                )
                fake.clear_log()


def _add_jobs(fake: Any, count: int, spread: float | None, seed: int) -> dict[str, Any]:
    """``count`` jobs finishing uniformly in [0, spread] s from their creation (never
    finishing, for ``spread`` None); their ids and finish times (wall clock)."""
    rng = random.Random(seed)
    ids: list[str] = []
    finish: list[float] = []
    created = time.time()
    for _ in range(count):
        if spread is None:
            queue, run, at = 3600.0, 0.0, float("inf")
        else:
            done = rng.uniform(0.0, spread)
            # A fifth in the queue, the rest running: both statuses are seen on the way.
            queue, run = done * 0.2, done * 0.8
        now = time.time()
        ids.append(fake.add_job(queue_seconds=queue, run_seconds=run))
        finish.append(now + queue + run if spread is not None else at)
    return {"ids": ids, "finish": finish, "created": created}


# --- the waiters (each in a fresh process) -----------------------------------------------------


def library_waiter(
    conn: Connection, library: Library, base_url: str, plan: Plan, loop: str
) -> None:
    try:
        use_library(library)
        run_loop(_library_waiter(conn, base_url, plan), library.loop or loop)
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _library_waiter(conn: Connection, base_url: str, plan: Plan) -> None:
    from siliconflow_video import AsyncClient

    defaults = AsyncClient.__init__.__kwdefaults__ or {}
    async with AsyncClient(
        api_key=API_KEY,
        base_url=base_url,
        max_concurrent_requests=plan.concurrency,
        poll_interval=_or(plan.poll_interval, defaults["poll_interval"]),
        max_poll_interval=_or(plan.max_poll_interval, defaults["max_poll_interval"]),
    ) as client:
        conn.send("ready")
        order = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        ids: list[str] = order["ids"]
        if order.get("memory"):

            async def consume() -> None:
                async for _ in client.as_completed(ids):
                    pass

            conn.send(await _traced(consume, len(ids), order["memory"]))
            return
        seen: dict[str, float] = {}
        failed = 0
        rss = rss_bytes()
        cpu, wall = time.process_time(), time.perf_counter()
        async for result in client.as_completed(ids):
            seen[result.request_id] = time.time()
            failed += not result.ok
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = client.rate_stats
        conn.send(
            {
                "cpu": cpu,
                "wall": wall,
                "calls": stats.requests,
                "rate_limited": stats.rate_limited,
                "failed": failed,
                "seen": [seen[rid] for rid in ids],
                "rss_growth": peak_rss_bytes() - rss,
                "policy": f"poll_interval={client.poll_policy.interval:g} "
                f"max_poll_interval={client.poll_policy.max_interval:g}",
            }
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def sleep_loop_waiter(conn: Connection, base_url: str, plan: Plan, loop: str) -> None:
    try:
        run_loop(_sleep_loop_waiter(conn, base_url, plan), loop)
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _sleep_loop_waiter(conn: Connection, base_url: str, plan: Plan) -> None:
    url = base_url + "/video/status"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        slots = asyncio.Semaphore(plan.concurrency)
        seen: dict[str, float] = {}
        calls = 0

        # --- the reference: the fixed-interval loop most integrations use ---
        async def wait(request_id: str) -> None:
            nonlocal calls
            while True:
                async with slots:
                    calls += 1
                    async with session.post(url, json={"requestId": request_id}) as resp:
                        body = await resp.json(content_type=None)
                if isinstance(body, dict) and body.get("status") in TERMINAL:
                    seen[request_id] = time.time()
                    return
                await asyncio.sleep(plan.sleep)

        # ---

        conn.send("ready")
        order = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        ids: list[str] = order["ids"]
        if order.get("memory"):

            async def consume() -> None:
                await asyncio.gather(*(wait(rid) for rid in ids))

            conn.send(await _traced(consume, len(ids), order["memory"]))
            return
        rss = rss_bytes()
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(wait(rid) for rid in ids))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        conn.send(
            {
                "cpu": cpu,
                "wall": wall,
                "calls": calls,
                "rate_limited": 0,
                "failed": 0,
                "seen": [seen[rid] for rid in ids],
                "rss_growth": peak_rss_bytes() - rss,
            }
        )


async def _traced(consume: Callable[[], Any], jobs: int, window: float) -> Metrics:
    """Peak traced memory, per job, of awaiting ``jobs`` jobs for ``window`` seconds
    (the jobs never finish in that time), above what was allocated before."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    task = asyncio.ensure_future(consume())
    await asyncio.sleep(window)
    current, peak = tracemalloc.get_traced_memory()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    tracemalloc.stop()
    return {"peak_per_job": (peak - base) / jobs, "held_per_job": (current - base) / jobs}


# --- the benchmark ----------------------------------------------------------------------------


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    plan = QUICK if quick else FULL
    log(
        f"polling: {plan.jobs} jobs finishing over 0-{plan.spread:g} s; library policy "
        f"{describe_policy(plan.poll_interval, plan.max_poll_interval)}; reference sleeps "
        f"{plan.sleep:g} s"
    )
    with Child(serve_jobs, None, False, name="fake API") as server:
        base_url: str = server.recv(timeout=60)["base_url"]
        timed = interleave(
            [
                *(
                    (b.label, _timed_run(server, base_url, plan, loop, _library_args(b)))
                    for b in builds
                ),
                ("sleep loop", _timed_run(server, base_url, plan, loop, _sleep_loop_args())),
            ],
            reps,
            log=log,
        )
        log(f"polling memory: {plan.jobs} jobs awaited for {plan.memory_window:g} s")
        server.send(("jobs", plan.jobs, None, 0))
        pending: list[str] = server.recv(timeout=120)["ids"]
        memory = interleave(
            [
                *(
                    (b.label, _memory_run(base_url, pending, plan, loop, _library_args(b)))
                    for b in builds
                ),
                ("sleep loop", _memory_run(base_url, pending, plan, loop, _sleep_loop_args())),
            ],
            reps,
            log=log,
        )
    results = {"plan": attrs.asdict(plan), "timed": timed, "memory": memory}
    return _rows(plan, timed, memory, builds), results


WaiterArgs = tuple[Callable[..., None], tuple[Any, ...], str]


def _library_args(build: Library) -> WaiterArgs:
    return library_waiter, (build,), build.label


def _sleep_loop_args() -> WaiterArgs:
    return sleep_loop_waiter, (), "sleep loop"


def _timed_run(
    server: Child, base_url: str, plan: Plan, loop: str, waiter: WaiterArgs
) -> Callable[[int], Metrics]:
    target, extra, name = waiter

    def one_run(rep: int) -> Metrics:
        with Child(target, *extra, base_url, plan, loop, name=name) as client:
            if client.recv(timeout=60) != "ready":
                raise RuntimeError(f"{name} did not get ready")
            # The jobs start when the waiter is ready: both start from the same moment.
            server.send(("jobs", plan.jobs, plan.spread, 1000 + rep))
            jobs = server.recv(timeout=120)
            client.send({"ids": jobs["ids"]})
            result = client.recv(timeout=plan.spread + 600)
        return _timed_metrics(result, jobs["finish"])

    return one_run


def _timed_metrics(result: Metrics, finish: Sequence[float]) -> Metrics:
    lag = sorted(s - f for s, f in zip(result["seen"], finish, strict=True))
    jobs = len(finish)
    return {
        "policy": result.get("policy", ""),
        "cpu": result["cpu"],
        "wall": result["wall"],
        "calls": result["calls"],
        "calls_per_job": result["calls"] / jobs,
        "cpu_per_1000_calls": result["cpu"] / result["calls"] * 1000,
        "lag_p50": percentile(lag, 0.50),
        "lag_p95": percentile(lag, 0.95),
        "lag_max": lag[-1],
        "rss_per_job": result["rss_growth"] / jobs,
        "failed": result["failed"],
    }


def _memory_run(
    base_url: str, ids: list[str], plan: Plan, loop: str, waiter: WaiterArgs
) -> Callable[[int], Metrics]:
    target, extra, name = waiter

    def one_run(rep: int) -> Metrics:
        with Child(target, *extra, base_url, plan, loop, name=name) as client:
            if client.recv(timeout=60) != "ready":
                raise RuntimeError(f"{name} did not get ready")
            client.send({"ids": ids, "memory": plan.memory_window})
            result: Metrics = client.recv(timeout=plan.memory_window + 120)
        return result

    return one_run


def describe_policy(poll_interval: float | None, max_poll_interval: float | None) -> str:
    first = "default" if poll_interval is None else f"{poll_interval:g}"
    most = "default" if max_poll_interval is None else f"{max_poll_interval:g}"
    return f"poll_interval={first} max_poll_interval={most}"


def _rows(
    plan: Plan,
    timed: dict[str, list[Metrics]],
    memory: dict[str, list[Metrics]],
    builds: Sequence[Library],
) -> list[Row]:
    ref, ref_mem = timed["sleep loop"], memory["sleep loop"]
    name = f"Polling {plan.jobs} jobs"
    rows: list[Row] = []
    for build in builds:
        lib, lib_mem = timed[build.label], memory[build.label]
        label = "" if build.label == "library" else f"{build.label}: "
        if build.label != "library":
            cpu_vs = paired_ratio(lib, timed["library"], "cpu_per_1000_calls")
            label += f"(it is {fmt_ratio(cpu_vs)} library) "
        cpu = median(values(lib, "cpu_per_1000_calls"))
        per_job = median(values(lib_mem, "peak_per_job"))
        rows += [
            Row(
                name,
                f"{label}client CPU s per 1000 status calls",
                f"{cpu:.3f}",
                f"{median(values(ref, 'cpu_per_1000_calls')):.3f}",
                fmt_ratio(paired_ratio(lib, ref, "cpu_per_1000_calls")),
                "≤ 0.25 s",
                cpu <= 0.25,
            ),
            Row(
                name,
                f"{label}peak memory per awaited job, KiB (tracemalloc)",
                f"{per_job / KIB:.2f}",
                f"{median(values(ref_mem, 'peak_per_job')) / KIB:.2f}",
                fmt_ratio(paired_ratio(lib_mem, ref_mem, "peak_per_job")),
                "≤ 4 KiB",
                per_job <= 4 * KIB,
            ),
        ]
        if build.label != "library":
            continue
        rows += [
            Row(
                name,
                "peak RSS growth per job, KiB (timed runs)",
                f"{median(values(lib, 'rss_per_job')) / KIB:.2f}",
                f"{median(values(ref, 'rss_per_job')) / KIB:.2f}",
                fmt_ratio(paired_ratio(lib, ref, "rss_per_job")),
            ),
            Row(
                name,
                "status calls per job",
                f"{median(values(lib, 'calls_per_job')):.2f}",
                f"{median(values(ref, 'calls_per_job')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "calls_per_job")),
            ),
            Row(
                name,
                "client CPU s for the whole wait",
                f"{median(values(lib, 'cpu')):.2f}",
                f"{median(values(ref, 'cpu')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "cpu")),
            ),
            Row(
                name,
                "finish → seen, p50 s",
                f"{median(values(lib, 'lag_p50')):.2f}",
                f"{median(values(ref, 'lag_p50')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "lag_p50")),
            ),
            Row(
                name,
                "finish → seen, p95 s",
                f"{median(values(lib, 'lag_p95')):.2f}",
                f"{median(values(ref, 'lag_p95')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "lag_p95")),
            ),
        ]
    return rows
