"""How far polling is from the ideal, without a server: the same decisions as the library's
Poller (``siliconflow_video._learning``), on virtual time.

Each job of the workload answers InQueue, InProgress or Succeed exactly as the fake server
would at the moment of each poll; a poll costs no time, and there is no rate limit. The
ideal is one call per job, made the moment it finishes (delay 0). Run it alone with
``python -m benchmarks.simulate`` (or through ``python -m benchmarks --only simulate``).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from siliconflow_video._config import PollPolicy
from siliconflow_video._learning import JobTrace, RunTimes, learned_gap, run_time_sample

from . import _workload
from ._measure import Library, Metrics, Row, fmt_ratio, median, percentile, values

SLEEP = 5.0


def simulate(
    jobs: Sequence[_workload.JobPlan],
    policy: PollPolicy | None,
    *,
    sleep: float = SLEEP,
    known_models: bool = True,
    learned: RunTimes | None = None,
    seed: int = 0,
    inference: Callable[[_workload.JobPlan], float | None] = lambda job: job.run,
) -> Metrics:
    """Calls per job and finish-to-seen delays of one policy (None: the fixed sleep loop)."""
    rng = random.Random(seed)
    learned = learned if learned is not None else RunTimes()
    # (due, order, job index, blind interval)
    heap: list[tuple[float, int, int, float]] = []
    traces = [JobTrace() for _ in jobs]
    first = policy.interval if policy else sleep
    for i, job in enumerate(jobs):
        heap.append((job.arrival, i, i, first))
    heapq.heapify(heap)
    calls = 0
    lags: list[float] = []
    order = len(jobs)
    while heap:
        now, _, i, interval = heapq.heappop(heap)
        job = jobs[i]
        calls += 1
        elapsed = now - job.arrival
        if elapsed >= job.queue + job.run:
            lags.append(elapsed - job.queue - job.run)
            if policy is not None:
                sample = run_time_sample(traces[i], now, inference(job))
                if sample is not None:
                    learned.add(job.model if known_models else None, sample)
            continue
        status = "InQueue" if elapsed < job.queue else "InProgress"
        if policy is None:
            gap = sleep
        else:
            traces[i].saw(status, now)
            key = job.model if known_models else None
            gap_or_none = learned_gap(policy, learned.spread(key), traces[i], status, now)
            jitter = rng.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)
            if gap_or_none is None:
                gap = min(policy.blind_cap, interval * jitter)
                interval = min(policy.blind_cap, interval * policy.growth)
            else:
                gap = min(policy.max_interval, gap_or_none * jitter)
        order += 1
        heapq.heappush(heap, (now + gap, order, i, interval))
    lags.sort()
    return {
        "calls_per_job": calls / len(jobs),
        "lag_p50": percentile(lags, 0.50),
        "lag_p95": percentile(lags, 0.95),
        "lag_max": lags[-1],
    }


def variants(scale: float) -> dict[str, Callable[[Sequence[_workload.JobPlan]], Metrics]]:
    new = scaled(PollPolicy(), scale)
    old = scaled(PollPolicy.growing(), scale)
    return {
        "library (models known)": lambda jobs: simulate(jobs, new),
        "library (pooled)": lambda jobs: simulate(jobs, new, known_models=False),
        "old policy": lambda jobs: simulate(jobs, old),
        "sleep loop": lambda jobs: simulate(jobs, None, sleep=SLEEP / scale),
    }


def scaled(policy: PollPolicy, scale: float) -> PollPolicy:
    """``policy`` with every time in it divided by ``scale`` (for a workload scaled so)."""
    return attrs.evolve(
        policy,
        interval=policy.interval / scale,
        max_interval=policy.max_interval / scale,
        max_blind_interval=policy.max_blind_interval / scale,
        call_cost=policy.call_cost / scale,
        malformed_grace=policy.malformed_grace / scale,
    )


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    del loop, builds  # no server, no client process: the library's decisions only
    workload = _workload.QUICK if quick else _workload.FULL
    log(f"simulate: {workload.describe()} (virtual time, no server)")
    runs: dict[str, list[Metrics]] = {}
    for rep in range(max(reps, 5)):
        jobs = _workload.plan(workload, 3000 + rep)
        for name, variant in variants(workload.scale).items():
            runs.setdefault(name, []).append(variant(jobs))
    return _rows(workload, runs), {"workload": attrs.asdict(workload), "runs": runs}


def _rows(workload: _workload.Workload, runs: dict[str, list[Metrics]]) -> list[Row]:
    name = f"Simulated {workload.jobs} jobs (no server)"
    ref = runs["sleep loop"]
    rows = []
    for label, metrics in runs.items():
        calls = median(values(metrics, "calls_per_job"))
        p50 = median(values(metrics, "lag_p50")) * workload.scale
        p95 = median(values(metrics, "lag_p95")) * workload.scale
        rows.append(
            Row(
                name,
                f"{label}: calls per job (ideal 1) / delay p50, p95 s (ideal 0)",
                f"{calls:.2f} / {p50:.2f}, {p95:.2f}",
                f"{median(values(ref, 'calls_per_job')):.2f} / "
                f"{median(values(ref, 'lag_p50')) * workload.scale:.2f}, "
                f"{median(values(ref, 'lag_p95')) * workload.scale:.2f}",
                f"{fmt_ratio(calls / median(values(ref, 'calls_per_job')))} calls, "
                f"{fmt_ratio(p95 / (median(values(ref, 'lag_p95')) * workload.scale))} p95",
            )
        )
    return rows


def main() -> None:
    """Print the variants over three seeds, for the workload submitted over 180 s and over
    60 s, from a fresh client ("cold") and from one that learned 100 earlier jobs ("warm")."""
    policy = PollPolicy()
    for over in (180.0, 60.0):
        workload = attrs.evolve(_workload.FULL, arrivals_over=over)
        print(workload.describe())
        for rep in range(3):
            jobs = _workload.plan(workload, 3000 + rep)
            warm = RunTimes()
            for job in _workload.plan(workload, 99)[:100]:
                warm.add(job.model, job.run)
            results = {
                "library cold": simulate(jobs, policy),
                "library warm": simulate(jobs, policy, learned=warm),
                "library cold, pooled": simulate(jobs, policy, known_models=False),
                "old policy": simulate(jobs, PollPolicy.growing()),
                "sleep loop": simulate(jobs, None),
            }
            ref = results["sleep loop"]
            for name, m in results.items():
                print(
                    f"  seed {rep} {name:22} calls/job {m['calls_per_job']:6.2f} "
                    f"({m['calls_per_job'] / ref['calls_per_job']:.2f}x)  p50 {m['lag_p50']:5.2f}"
                    f"  p95 {m['lag_p95']:5.2f} ({m['lag_p95'] / ref['lag_p95']:.2f}x)"
                    f"  max {m['lag_max']:6.2f}"
                )


if __name__ == "__main__":
    main()
