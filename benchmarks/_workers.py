"""Worker-fleet benchmark: 1, 2 and 4 `siliconflow-video worker --burst` processes drain
one PostgreSQL journal against the fake under one account rate limit.

Each run: a fresh fake (its token bucket full) in a child process, a fresh schema in a
throw-away PostgreSQL cluster (tests/_postgres.py: Debian's binaries), ``jobs`` ids that
finish uniformly over ``spread`` seconds, journaled before the workers start. The time
to drain runs from starting the workers to the last job the journal records ``done``
(worker start-up included); the ideal is the issue's ``max(last finish, jobs / limit)``:
no fleet sees a job before it finishes, nor makes more than ``limit`` calls a second. The
429 share is the server's count over every status call of the run.

Each fleet runs twice: ``local``, every worker adapts on its own (each client's rate
governor slows down on its own 429s), and ``shared``, the workers of the account keep one
rate in PostgreSQL (``--rate-budget shared``, the default). Polls follow the blind
schedule (a fleet has no one process following a job from its first answer, which learned
polling needs), so a job costs one call per poll until it finishes, and the one that sees
``Succeed`` goes on into the transfer with no further call.

The ideal knows when each job finishes; no poller does. So each run is also set against an
informed reference, simulated on the same finish times: a poller that knows their
distribution (uniform over the spread from each job's creation) but not each job's, making
one call every ``1 / limit`` seconds from the workers' start (no start-up, no 429s, no
token-bucket burst), each to the open job most likely done by then given its last "not
done" (``informed_drain``). A fleet is judged on its coordination against this; the gap
between the reference and the ideal is what not knowing the finishes costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from ._measure import Child, Library, Metrics, Row, fmt_ratio, interleave, median, values
from ._polling import API_KEY, serve_jobs


@attrs.frozen
class Fleet:
    jobs: int
    rate: float
    spread: float
    sizes: tuple[int, ...] = (1, 2, 4)
    concurrency: int = 8
    #: The workers' ``--rate-budget``: each its own governor, or one rate in PostgreSQL.
    budgets: tuple[str, ...] = ("local", "shared")


FULL = Fleet(jobs=300, rate=20.0, spread=20.0)
QUICK = Fleet(jobs=60, rate=10.0, spread=4.0, sizes=(1, 2))


@contextlib.contextmanager
def _cluster() -> Iterator[Any]:
    sys.path.insert(0, os.fspath(os.path.dirname(os.path.dirname(__file__))))
    from tests._postgres import running_cluster

    with running_cluster() as cluster:
        yield cluster


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    fleet = QUICK if quick else FULL
    log(
        f"workers: {fleet.jobs} jobs finishing over 0-{fleet.spread:g} s, limit "
        f"{fleet.rate:g} calls/s, fleets of {', '.join(map(str, fleet.sizes))} workers "
        f"(concurrency {fleet.concurrency} each), rate budget {' vs '.join(fleet.budgets)}"
    )
    with _cluster() as cluster:
        role, db = cluster.new_database()
        variants = [
            (f"{n} workers, {budget}", _one_run(cluster, role, db, fleet, n, budget))
            for n in fleet.sizes
            for budget in fleet.budgets
        ]
        runs = interleave(variants, reps, log=log)
    return _rows(fleet, runs), {"fleet": attrs.asdict(fleet), "runs": runs}


def _one_run(
    cluster: Any, role: str, db: str, fleet: Fleet, n: int, budget: str
) -> Callable[[int], Metrics]:
    def one_run(rep: int) -> Metrics:
        url = cluster.url(role, db, schema=cluster.new_schema(role, db))
        with Child(serve_jobs, fleet.rate, True, name="rate-limited fake API") as server:
            base_url: str = server.recv(timeout=60)["base_url"]
            server.send(("jobs", fleet.jobs, fleet.spread, 3000 + rep))
            jobs = server.recv(timeout=60)
            asyncio.run(_accept(url, jobs["ids"]))
            server.send(("stats",))
            server.recv(timeout=60)  # empties the log: only the workers' calls count
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")},
                "SILICONFLOW_API_KEY": API_KEY,
                "SILICONFLOW_BASE_URL": base_url,
            }
            started = time.time()
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "siliconflow_video",
                        "-q",
                        "worker",
                        "--journal",
                        url,
                        "--burst",
                        "--concurrency",
                        str(fleet.concurrency),
                        "--rate-budget",
                        budget,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(n)
            ]
            codes = []
            for proc in procs:
                _, err = proc.communicate(timeout=fleet.spread + 900)
                if proc.returncode:
                    raise RuntimeError(f"a worker exited {proc.returncode}: {err[-2000:]}")
                codes.append(proc.returncode)
            server.send(("stats",))
            stats = server.recv(timeout=60)
        from siliconflow_video._journal import JobState, read_jobs

        records = read_jobs(url)
        if {r.state for r in records} != {JobState.DONE} or len(records) != fleet.jobs:
            raise RuntimeError("the fleet did not finish every job")
        last_done = max(r.finished_at.timestamp() for r in records if r.finished_at)
        drained = last_done - started
        ideal = max(max(jobs["finish"]) - started, fleet.jobs / fleet.rate)
        informed = informed_drain(
            [f - started for f in jobs["finish"]],
            jobs["created"] - started,
            fleet.spread,
            fleet.rate,
        )
        return {
            "drain": drained,
            "ideal": ideal,
            "vs_ideal": drained / ideal,
            "informed": informed,
            "vs_informed": drained / informed,
            "status_calls": stats["status_calls"],
            "rate_limited": stats["rate_limited"],
            "share_429": stats["rate_limited"] / max(stats["status_calls"], 1),
            "calls_per_job": stats["status_calls"] / fleet.jobs,
        }

    return one_run


def informed_drain(finish: Sequence[float], created: float, spread: float, rate: float) -> float:
    """When the informed reference (module docstring) has seen every job done: one call every
    ``1 / rate`` s from 0, each to the open job with the highest chance of being done by
    then, given that it finishes uniformly in ``[created, created + spread]`` and was last
    seen running at ``s`` (``created`` if never polled): ``(t - s) / (created + spread - s)``."""
    end = created + spread
    last = [created] * len(finish)
    open_ = set(range(len(finish)))
    t = 0.0
    while open_:
        if t >= end:  # every job is done: one call each for the rest
            return t + (len(open_) - 1) / rate
        job = max(open_, key=lambda i: ((t - last[i]) / (end - last[i]), -i))
        if finish[job] <= t:
            open_.discard(job)
            if not open_:
                return t
        else:
            last[job] = t
        t += 1.0 / rate
    return t


async def _accept(url: str, ids: list[str]) -> None:
    from siliconflow_video._journal import open_journal

    async with open_journal(url) as journal:
        await journal.accept(ids, dest=os.path.join("/tmp", "sfv-bench-workers", url[-8:]))


def _rows(fleet: Fleet, runs: dict[str, list[Metrics]]) -> list[Row]:
    name = f"Workers: {fleet.jobs} jobs @ {fleet.rate:g}/s"
    rows: list[Row] = []
    for label, lib in runs.items():
        ratio = median(values(lib, "vs_ideal"))
        share = median(values(lib, "share_429"))
        target = label.startswith("4 ")
        rows += [
            Row(
                name,
                f"{label}: time to drain, s (vs max(last finish, jobs/limit))",
                f"{median(values(lib, 'drain')):.1f}",
                f"{median(values(lib, 'ideal')):.1f}",
                fmt_ratio(ratio),
                "≤ 1.2x" if target else "",
                ratio <= 1.2 if target else None,
            ),
            Row(
                name,
                f"{label}: time to drain, s (vs the informed reference, simulated)",
                f"{median(values(lib, 'drain')):.1f}",
                f"{median(values(lib, 'informed')):.1f}",
                fmt_ratio(median(values(lib, "vs_informed"))),
            ),
            Row(
                name,
                f"{label}: share of status calls answered 429",
                f"{share:.1%}",
                "",
                "",
                "< 5%" if target else "",
                share < 0.05 if target else None,
            ),
            Row(
                name,
                f"{label}: status calls per job (ideal: 1)",
                f"{median(values(lib, 'calls_per_job')):.2f}",
                "1.00",
                fmt_ratio(median(values(lib, "calls_per_job"))),
            ),
        ]
    return rows
