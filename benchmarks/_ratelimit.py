"""Rate-limit benchmark: 1,000 jobs awaited against a server that accepts 50 status calls
a second, measured against the ideal for that limit.

The ideal
---------
A status call is the only way to see that a job finished, so every job needs at least one
call made after its finish. The best any client can do, even one that knew every finish
time in advance, is to spend exactly one call per job, each at the earliest moment after
that job's finish at which the server's token bucket (``rate`` tokens a second, ``burst``
tokens deep, full at the start) has a token. Serving the jobs in order of finish time, each
as early as the bucket allows, is optimal (swapping any two calls cannot make the last one
earlier), so the ideal is that schedule's last call::

    t_k = max(f_k, the first moment the bucket holds a token after t_(k-1))

with f_1 <= f_2 <= ... the finish times, measured from the moment the jobs were created.
It is never less than the last finish, nor than (jobs - burst) / rate. The figure reported
is the time at which the client has seen every finish, divided by that ideal; the share of
429s is counted by the server over every status call of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._measure import (
    Child,
    Library,
    Metrics,
    Row,
    fmt_ratio,
    interleave,
    median,
    paired_ratio,
    values,
)
from ._polling import Plan, describe_policy, library_waiter, serve_jobs


@attrs.frozen
class Limit:
    jobs: int
    rate: float
    #: Jobs finish uniformly in [0, spread] seconds.
    spread: float
    #: None: the client's defaults (see _polling.Plan).
    poll_interval: float | None
    max_poll_interval: float | None

    @property
    def burst(self) -> int:
        # FakeSiliconFlow.set_rate_limit's default bucket depth.
        return max(1, round(self.rate + 0.4999))


FULL = Limit(jobs=1_000, rate=50.0, spread=30.0, poll_interval=None, max_poll_interval=None)
# --quick: the same limit, fewer jobs, intervals scaled by 1/5 as in the polling benchmark.
QUICK = Limit(jobs=150, rate=50.0, spread=3.0, poll_interval=0.2, max_poll_interval=2.0)


def ideal_seconds(finishes: Sequence[float], rate: float, burst: int) -> float:
    """When a client knowing every finish time would have seen the last one, spending one
    call per job under a token bucket of ``rate``/s and depth ``burst`` (see the module
    docstring). ``finishes`` are seconds from the start, when the bucket is full."""
    tokens, clock, t = float(burst), 0.0, 0.0
    for finish in sorted(finishes):
        t = max(t, finish)
        tokens = min(float(burst), tokens + (t - clock) * rate)
        clock = t
        if tokens < 1.0:  # wait for the next token
            t += (1.0 - tokens) / rate
            tokens, clock = 1.0, t
        tokens -= 1.0
    return t


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    limit = QUICK if quick else FULL
    log(
        f"ratelimit: {limit.jobs} jobs finishing over 0-{limit.spread:g} s, server limit "
        f"{limit.rate:g} calls/s (burst {limit.burst}); library policy "
        f"{describe_policy(limit.poll_interval, limit.max_poll_interval)}"
    )
    plan = Plan(
        jobs=limit.jobs,
        spread=limit.spread,
        poll_interval=limit.poll_interval,
        max_poll_interval=limit.max_poll_interval,
        sleep=0.0,
        memory_window=0.0,
    )
    runs = interleave([(b.label, _one_run(b, plan, limit, loop)) for b in builds], reps, log=log)
    return _rows(limit, runs, builds), {"limit": attrs.asdict(limit), "runs": runs}


def _one_run(build: Library, plan: Plan, limit: Limit, loop: str) -> Callable[[int], Metrics]:
    def one_run(rep: int) -> Metrics:
        # A fresh server per run: its token bucket starts full, as the ideal assumes.
        with Child(serve_jobs, limit.rate, True, name="rate-limited fake API") as server:
            base_url: str = server.recv(timeout=60)["base_url"]
            with Child(library_waiter, build, base_url, plan, loop, name=build.label) as client:
                if client.recv(timeout=60) != "ready":
                    raise RuntimeError(f"{build.label} did not get ready")
                server.send(("jobs", limit.jobs, limit.spread, 2000 + rep))
                jobs = server.recv(timeout=60)
                client.send({"ids": jobs["ids"]})
                result = client.recv(timeout=limit.spread + 600)
            server.send(("stats",))
            stats = server.recv(timeout=60)
        created: float = jobs["created"]
        ideal = ideal_seconds([f - created for f in jobs["finish"]], limit.rate, limit.burst)
        last_seen = max(result["seen"]) - created
        return {
            "policy": result["policy"],
            "tail": last_seen - (max(jobs["finish"]) - created),
            "last_seen": last_seen,
            "ideal": ideal,
            "vs_ideal": last_seen / ideal,
            "status_calls": stats["status_calls"],
            "rate_limited": stats["rate_limited"],
            "share_429": stats["rate_limited"] / stats["status_calls"],
            "client_calls": result["calls"],
            "client_429": result["rate_limited"],
            "calls_per_job": stats["status_calls"] / limit.jobs,
            "failed": result["failed"],
        }

    return one_run


def _rows(limit: Limit, runs: dict[str, list[Metrics]], builds: Sequence[Library]) -> list[Row]:
    name = f"Rate limit {limit.jobs} jobs @ {limit.rate:g}/s"
    rows: list[Row] = []
    for build in builds:
        lib = runs[build.label]
        label = "" if build.label == "library" else f"{build.label}: "
        ratio = median(values(lib, "vs_ideal"))
        if build.label != "library":
            label += (
                f"(it is {fmt_ratio(paired_ratio(lib, runs['library'], 'last_seen'))} library) "
            )
        share = median(values(lib, "share_429"))
        rows += [
            Row(
                name,
                f"{label}time to see every finish, s (vs the ideal)",
                f"{median(values(lib, 'last_seen')):.1f}",
                f"{median(values(lib, 'ideal')):.1f}",
                fmt_ratio(ratio),
                "≤ 1.2x",
                ratio <= 1.2,
            ),
            Row(
                name,
                f"{label}last finish → last seen, s",
                f"{median(values(lib, 'tail')):.1f}",
                "0.0",
                "",
            ),
            Row(
                name,
                f"{label}share of status calls answered 429",
                f"{share:.1%}",
                "",
                "",
                "< 5%",
                share < 0.05,
            ),
            Row(
                name,
                f"{label}status calls per job (ideal: 1)",
                f"{median(values(lib, 'calls_per_job')):.2f}",
                "1.00",
                fmt_ratio(median(values(lib, "calls_per_job"))),
            ),
        ]
    return rows
