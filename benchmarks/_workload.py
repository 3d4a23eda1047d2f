"""A SiliconFlow-like workload: jobs submitted over a minute or more, queued a while, then
running for a time from a narrow distribution that depends on the model.

The numbers (``FULL``): 240 jobs submitted at times uniform over 60 s; each waits in the
queue for a time uniform in 5-25 s; then runs for a time drawn from its model's normal
distribution, with a standard deviation of 3 % of the mean: model A (60 % of jobs) 40 s,
model B (40 %) 90 s. So a job takes 45-115 s from submit to finish, and a fixed
``sleep(5)`` loop spends about 14 status calls on it. ``QUICK`` divides every time by 5
(and the policies' times too; see ``scaled``).
"""

from __future__ import annotations

import random

import attrs


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
    arrivals_over=60.0,
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
