"""Journal benchmark: what the journal costs a batch, and how long it holds the event loop.

- **CPU.** 2,000 jobs (1 KiB video each) finishing over 0-5 s, polled and downloaded by
  ``AsyncClient(journal=...).wait_and_download(ids, dest)``, against the same run without a
  journal, interleaved. The figure is the client's CPU (``process_time``: every thread,
  the journal's writer thread included) with a journal over without.
- **Loop stalls.** In a process of its own, a journal records 10,000 ids (``accept``),
  a status note for each, their ``Succeed`` with one URL each, and each video done, while
  a ticker coroutine measures the longest gap between its wake-ups (it asks for one every
  millisecond). The reference is the same ticker over the same time with no journal work.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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
    report_failure,
    run_loop,
    use_library,
    values,
)
from ._polling import API_KEY, serve_jobs


@attrs.frozen
class Size:
    jobs: int
    spread: float
    recorded: int


FULL = Size(jobs=2_000, spread=5.0, recorded=10_000)
QUICK = Size(jobs=300, spread=1.0, recorded=2_000)


# --- the client (a fresh process per run) ---------------------------------------------------


def batch_client(conn: Any, library: Library, base_url: str, journaled: bool, loop: str) -> None:
    try:
        use_library(library)
        run_loop(_batch_client(conn, base_url, journaled), library.loop or loop)
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _batch_client(conn: Any, base_url: str, journaled: bool) -> None:
    from siliconflow_video import AsyncClient

    with tempfile.TemporaryDirectory(prefix="sfv-journal-bench-") as folder:
        journal = Path(folder) / "jobs.journal" if journaled else None
        async with AsyncClient(
            api_key=API_KEY,
            base_url=base_url,
            poll_interval=0.2,
            max_poll_interval=1.0,
            journal=journal,
        ) as client:
            await client.journal()
            conn.send("ready")
            order = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            ids: list[str] = order["ids"]
            cpu, wall = time.process_time(), time.perf_counter()
            outcomes = await client.wait_and_download(ids, Path(folder) / "videos")
            if journal is not None:
                journal_obj = await client.journal()
                assert journal_obj is not None
                await journal_obj.flush()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            failed = sum(1 for o in outcomes if not o.ok)
            calls = client.rate_stats.requests
        conn.send({"cpu": cpu, "wall": wall, "failed": failed, "calls": calls})


# --- the stall probe -------------------------------------------------------------------------


def stall_probe(conn: Any, library: Library, count: int, journaled: bool, loop: str) -> None:
    try:
        use_library(library)
        conn.send(run_loop(_stall_probe(count, journaled), library.loop or loop))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _stall_probe(count: int, journaled: bool) -> Metrics:
    from siliconflow_video import open_journal

    gaps: list[float] = []
    ends: list[float] = []  # when each gap ended, to tell the recording from what follows
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            ends.append(now)
            last = now

    with tempfile.TemporaryDirectory(prefix="sfv-journal-stall-") as folder:
        ids = [f"{i:08x}-bench-{i}" for i in range(count)]
        journal = open_journal(Path(folder) / "jobs.journal")
        await journal.open()
        try:
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            gaps.clear()
            ends.clear()
            started = time.perf_counter()
            recorded = started
            if journaled:
                # As wait_and_download records them (only jobs seen before come back).
                await journal.accept_known(ids, dest=folder)
                recorded = time.perf_counter()
                # Polls answer one by one, each in its own turn of the loop: a hundred notes
                # per turn is already more than the pipeline makes (10,000 in one turn
                # would measure the probe's own loop, not the journal).
                for start in range(0, len(ids), 100):
                    for rid in ids[start : start + 100]:
                        journal.note_poll(rid, "InProgress")
                    await asyncio.sleep(0)
                # As the pipeline makes them: from many tasks, a hundred ids at a time
                # (creating 10,000 tasks in one go would be the probe's own stall).
                for start in range(0, len(ids), 100):
                    chunk = ids[start : start + 100]
                    await asyncio.gather(
                        *(
                            journal.succeeded(rid, [f"https://v.example/{rid}.mp4?s=x"])
                            for rid in chunk
                        )
                    )
                    await asyncio.gather(
                        *(
                            journal.video_done(
                                rid, 0, path=os.path.join(folder, f"{rid}_0.mp4"), size=1024
                            )
                            for rid in chunk
                        )
                    )
                await journal.flush()
            else:
                await asyncio.sleep(0.2)
                recorded = time.perf_counter()
                await asyncio.sleep(0.8)
            seconds = time.perf_counter() - started
            stop.set()
            await task
        finally:
            await journal.aclose()
    ordered = sorted(gaps)
    # A gap that ends by the time accept returned (or just after: its last tick) is the
    # recording's; the rest belong to the 20,000 state changes after it.
    during = [gap for gap, end in zip(gaps, ends, strict=True) if end - gap <= recorded]
    return {
        "max_record_stall_ms": max(during, default=0.0) * 1000,
        "max_stall_ms": ordered[-1] * 1000 if ordered else 0.0,
        "p99_stall_ms": ordered[int(len(ordered) * 0.99)] * 1000 if ordered else 0.0,
        "seconds": seconds,
    }


# --- the run ---------------------------------------------------------------------------------


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    size = QUICK if quick else FULL
    build = builds[0]
    log(
        f"journal: {size.jobs} jobs over 0-{size.spread:g} s with and without a journal; "
        f"then {size.recorded} ids recorded while the loop is watched"
    )

    def batch(journaled: bool) -> Callable[[int], Metrics]:
        def one(rep: int) -> Metrics:
            with Child(serve_jobs, None, False, name="fake API") as server:
                base_url: str = server.recv(timeout=60)["base_url"]
                with Child(batch_client, build, base_url, journaled, loop, name="client") as client:
                    if client.recv(timeout=60) != "ready":
                        raise RuntimeError("the client did not get ready")
                    server.send(("jobs", size.jobs, size.spread, 3000 + rep))
                    jobs = server.recv(timeout=60)
                    client.send({"ids": jobs["ids"]})
                    result: Metrics = client.recv(timeout=600)
            if result.get("failed"):
                raise RuntimeError(f"{result['failed']} ids failed")
            return result

        return one

    def stall(journaled: bool) -> Callable[[int], Metrics]:
        def one(rep: int) -> Metrics:
            with Child(stall_probe, build, size.recorded, journaled, loop, name="probe") as probe:
                result: Metrics = probe.recv(timeout=600)
            return result

        return one

    cpu_runs = interleave([("journal", batch(True)), ("no journal", batch(False))], reps, log=log)
    stall_runs = interleave([("journal", stall(True)), ("idle loop", stall(False))], reps, log=log)
    name = f"Journal, {size.jobs:,} jobs"
    ratio = paired_ratio(cpu_runs["journal"], cpu_runs["no journal"], "cpu")
    worst = median(values(stall_runs["journal"], "max_record_stall_ms"))
    after = median(values(stall_runs["journal"], "max_stall_ms"))
    rows = [
        Row(
            name,
            "client CPU s, poll + download, journal vs none",
            f"{median(values(cpu_runs['journal'], 'cpu')):.2f}",
            f"{median(values(cpu_runs['no journal'], 'cpu')):.2f}",
            fmt_ratio(ratio),
            "≤ 1.3x (aim 1.1x)",
            ratio <= 1.3,
        ),
        Row(
            f"Journal, record {size.recorded:,} ids",
            "longest event-loop stall while recording, ms (vs an idle loop)",
            f"{worst:.1f}",
            f"{median(values(stall_runs['idle loop'], 'max_record_stall_ms')):.1f}",
            "",
            "a few ms",
            worst <= 5.0,
        ),
        Row(
            f"Journal, record {size.recorded:,} ids",
            "longest stall, with their 20,000 state changes after, ms",
            f"{after:.1f}",
            f"{median(values(stall_runs['idle loop'], 'max_stall_ms')):.1f}",
            "",
        ),
        Row(
            f"Journal, record {size.recorded:,} ids",
            "p99 gap between 1 ms ticks, ms",
            f"{median(values(stall_runs['journal'], 'p99_stall_ms')):.1f}",
            f"{median(values(stall_runs['idle loop'], 'p99_stall_ms')):.1f}",
            "",
        ),
    ]
    return rows, {"size": attrs.asdict(size), "cpu": cpu_runs, "stall": stall_runs}
