"""A SiliconFlow-like workload: jobs submitted over a minute or more, queued a while, then
running for a time from a narrow distribution that depends on the model.

The numbers (``FULL``): 240 jobs submitted at times uniform over 180 s; each waits in the
queue for a time uniform in 5-25 s; then runs for a time drawn from its model's normal
distribution, with a standard deviation of 3 % of the mean: model A (60 % of jobs) 40 s,
model B (40 %) 90 s. So a job takes 45-115 s from submit to finish, and a fixed
``sleep(5)`` loop spends about 14 status calls on it. ``QUICK`` divides every time by 5
(and the policies' times too; see ``scaled``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs

from ._measure import (
    Child,
    Connection,
    Library,
    Metrics,
    Row,
    brief,
    fmt_ratio,
    median,
    paired_ratio,
    percentile,
    report_failure,
    run_loop,
    use_library,
    values,
)

if TYPE_CHECKING:
    from siliconflow_video.testing import JobSpec


@attrs.frozen
class Model:
    name: str
    share: float
    run_mean: float
    run_sd: float


@attrs.frozen
class Workload:
    jobs: int
    arrivals_over: float
    queue_min: float
    queue_max: float
    models: tuple[Model, ...]
    #: Every time is divided by this (1: the real numbers).
    scale: float = 1.0

    def describe(self) -> str:
        models = ", ".join(
            f"{m.name} {m.share:.0%} run {m.run_mean / self.scale:g}±{m.run_sd / self.scale:g} s"
            for m in self.models
        )
        return (
            f"{self.jobs} jobs submitted over {self.arrivals_over / self.scale:g} s, queued "
            f"{self.queue_min / self.scale:g}-{self.queue_max / self.scale:g} s, models: {models}"
        )


@attrs.frozen
class JobPlan:
    arrival: float  # seconds from the start of the run
    model: str
    queue: float
    run: float


FULL = Workload(
    jobs=240,
    arrivals_over=180.0,
    queue_min=5.0,
    queue_max=25.0,
    models=(Model("model-A", 0.6, 40.0, 1.2), Model("model-B", 0.4, 90.0, 2.7)),
)
QUICK = attrs.evolve(FULL, jobs=120, scale=5.0)


def plan(workload: Workload, seed: int) -> list[JobPlan]:
    """The jobs of one run, in submit order; the same seed gives the same jobs."""
    rng = random.Random(seed)
    k = workload.scale
    jobs = []
    for _ in range(workload.jobs):
        arrival = rng.uniform(0.0, workload.arrivals_over)
        pick, total = rng.random(), 0.0
        model = workload.models[-1]
        for m in workload.models:
            total += m.share
            if pick < total:
                model = m
                break
        queue = rng.uniform(workload.queue_min, workload.queue_max)
        run = max(0.1, rng.gauss(model.run_mean, model.run_sd))
        jobs.append(JobPlan(arrival / k, model.name, queue / k, run / k))
    jobs.sort(key=lambda j: j.arrival)
    return jobs


# --- the benchmark: each waiter with its own fake server, all at once -----------------------

VARIANTS = ("library", "old policy", "sleep loop")
SLEEP = 5.0
PROMPT = "a red fox running through fresh snow, cinematic"


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    """Every variant of every repetition runs at the same time, each in a process of its
    own with its own ``FakeSiliconFlow`` (in a thread of that process), submitting the
    same jobs at the same moments: the machine's noise falls on all of them alike."""
    workload = QUICK if quick else FULL
    log(f"workload: {workload.describe()}; all {len(VARIANTS) * reps} runs at once")
    children: list[tuple[str, int, Child]] = []
    try:
        for rep in range(reps):
            for name in VARIANTS:
                build = builds[0]
                child = Child(waiter, build, name, workload, 4000 + rep, loop, name=name)
                children.append((name, rep, child))
        for _, _, child in children:
            if child.recv(timeout=120) != "ready":
                raise RuntimeError(f"{child.name} did not get ready")
        for _, _, child in children:
            child.send("go")
        last = max(j.arrival + j.queue + j.run for j in plan(workload, 4000))
        runs: dict[str, list[Metrics]] = {name: [] for name in VARIANTS}
        for name, rep, child in children:
            metrics = child.recv(timeout=last + 600)
            runs[name].append(metrics)
            log(f"  rep {rep + 1}/{reps} {name}: {brief(metrics)}")
    finally:
        for _, _, child in children:
            child.close()
    return _rows(workload, runs), {"workload": attrs.asdict(workload), "runs": runs}


def waiter(
    conn: Connection, build: Library, variant: str, workload: Workload, seed: int, loop: str
) -> None:
    try:
        use_library(build)
        run_loop(_waiter(conn, variant, workload, seed), loop)
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _waiter(conn: Connection, variant: str, workload: Workload, seed: int) -> None:
    from siliconflow_video import AsyncClient, PollPolicy
    from siliconflow_video.testing import FakeSiliconFlow

    from ._simulate import scaled

    jobs = plan(workload, seed)
    fake = FakeSiliconFlow(api_key="sk-bench", seed=seed)
    with fake.run_in_thread():
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        seen: dict[str, float] = {}
        started = time.monotonic()

        def spec(job: JobPlan) -> JobSpec:
            # The fake reports the run time as results.timings.inference, as SiliconFlow does.
            return {"queue_seconds": job.queue, "run_seconds": job.run, "inference": job.run}

        async def arrive(job: JobPlan) -> None:
            delay = started + job.arrival - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

        if variant == "sleep loop":
            await _sleep_loop(fake, jobs, spec, arrive, seen, SLEEP / workload.scale)
        else:
            policy = PollPolicy() if variant == "library" else PollPolicy.growing()
            policy = scaled(policy, workload.scale)
            async with AsyncClient("sk-bench", fake.base_url, poll=policy) as client:

                async def one(job: JobPlan, rid: str) -> None:
                    await client.wait(rid)
                    seen[rid] = time.monotonic()

                tasks = []
                for job in jobs:
                    await arrive(job)
                    fake.submit_defaults = spec(job)
                    rid = await client.submit(model=job.model, prompt=PROMPT)
                    tasks.append(asyncio.create_task(one(job, rid)))
                await asyncio.gather(*tasks)
        finished = {
            rid: j.created_at + j.queue_seconds + j.run_seconds for rid, j in fake.jobs.items()
        }
        calls = len(fake.requests_for("status"))
    lags = sorted(seen[rid] - finished[rid] for rid in finished)
    conn.send(
        {
            "calls_per_job": calls / len(jobs),
            "lag_p50": percentile(lags, 0.50) * workload.scale,
            "lag_p95": percentile(lags, 0.95) * workload.scale,
            "lag_max": lags[-1] * workload.scale,
        }
    )


async def _sleep_loop(
    fake: Any,
    jobs: list[JobPlan],
    spec: Callable[[JobPlan], JobSpec],
    arrive: Callable[[JobPlan], Awaitable[None]],
    seen: dict[str, float],
    sleep: float,
) -> None:
    headers = {"Authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(fake.base_url + "/", headers=headers) as session:
        # --- the reference: submit, then the fixed-interval loop most integrations use ---
        async def wait(request_id: str) -> None:
            while True:
                async with session.post("video/status", json={"requestId": request_id}) as r:
                    body = await r.json(content_type=None)
                if body.get("status") in ("Succeed", "Failed"):
                    seen[request_id] = time.monotonic()
                    return
                await asyncio.sleep(sleep)

        # ---

        tasks = []
        for job in jobs:
            await arrive(job)
            fake.submit_defaults = spec(job)
            payload = {"model": job.model, "prompt": PROMPT, "image_size": "1280x720"}
            async with session.post("video/submit", json=payload) as resp:
                rid = (await resp.json())["requestId"]
            tasks.append(asyncio.create_task(wait(rid)))
        await asyncio.gather(*tasks)


def _rows(workload: Workload, runs: dict[str, list[Metrics]]) -> list[Row]:
    name = f"SiliconFlow-like {workload.jobs} jobs, 2 models"
    ref = runs["sleep loop"]
    calls = paired_ratio(runs["library"], ref, "calls_per_job")
    p95 = paired_ratio(runs["library"], ref, "lag_p95")
    rows = []
    for label in ("library", "old policy"):
        lib = runs[label]
        targets = label == "library"
        rows += [
            Row(
                name,
                f"{label}: status calls per job",
                f"{median(values(lib, 'calls_per_job')):.2f}",
                f"{median(values(ref, 'calls_per_job')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "calls_per_job")),
                "≤ 0.6x" if targets else "",
                calls <= 0.6 if targets else None,
            ),
            Row(
                name,
                f"{label}: finish → seen, p50 s",
                f"{median(values(lib, 'lag_p50')):.2f}",
                f"{median(values(ref, 'lag_p50')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "lag_p50")),
            ),
            Row(
                name,
                f"{label}: finish → seen, p95 s",
                f"{median(values(lib, 'lag_p95')):.2f}",
                f"{median(values(ref, 'lag_p95')):.2f}",
                fmt_ratio(paired_ratio(lib, ref, "lag_p95")),
                "≤ 1.0x" if targets else "",
                p95 <= 1.0 if targets else None,
            ),
        ]
    return rows
