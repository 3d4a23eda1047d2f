"""What every benchmark shares: child processes, CPU clocks, A/B interleaving, medians,
ratios and the table.

Each measured client runs in a child process of its own, and each server in another, so a
client's CPU clock (``getrusage(RUSAGE_SELF)`` in a Python child, ``wait4`` for a ``curl``
child) never counts server work. Variants run interleaved (A, B, A, B, ...) and every figure
is the median of the per-repetition ratios of neighbouring runs: a noisy moment on a shared
machine hits both runs of a pair rather than one variant only.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

Metrics = dict[str, Any]
"""What one run of one variant reports: numbers by name (JSON-serialisable)."""

Connection = multiprocessing.connection.Connection

# "spawn": every child starts from a fresh interpreter, so no client inherits the
# orchestrator's imports, heap or event loop, and its memory baseline is its own.
_CTX = multiprocessing.get_context("spawn")

GIB = 1024**3
MIB = 1024**2


class BenchmarkError(RuntimeError):
    """A benchmark could not produce a trustworthy figure (wrong bytes, a dead child)."""


# --- clocks --------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    """Resident set size of this process now (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@attrs.frozen
class ChildRun:
    """One external command, timed: wall seconds and its own CPU seconds (from wait4)."""

    returncode: int
    wall: float
    cpu: float
    stderr: str


def run_command(argv: Sequence[str], *, timeout: float) -> ChildRun:
    """Run ``argv`` and measure it with ``wait4``, which reports the rusage of exactly that
    child: the orchestrator's own CPU and other children never leak into the figure."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # A blocking wait4 (no polling loop in the orchestrator); a timer kills a runaway.
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if wall >= timeout:
        raise BenchmarkError(f"{argv[0]} ran longer than {timeout:g} s")
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    return ChildRun(proc.returncode, wall, usage.ru_utime + usage.ru_stime, stderr)


# --- child processes -----------------------------------------------------------------------------


def run_loop(main: Coroutine[Any, Any, Any], loop: str) -> Any:
    """Run a child's coroutine on the event loop under test: "asyncio" or "uvloop"."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


class Child:
    """A child process talking to the orchestrator over one pipe.

    The target is called as ``target(conn, *args)``. Use it as a context manager: leaving
    the block terminates a child that is still running, so a failed benchmark leaves no
    server behind.
    """

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        self.name = name
        self.conn, theirs = _CTX.Pipe()
        self.process = _CTX.Process(target=target, args=(theirs, *args), name=name, daemon=True)
        self.process.start()
        theirs.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def recv(self, timeout: float) -> Any:
        """The child's next message; BenchmarkError if it dies or stays silent."""
        if not self.conn.poll(timeout):
            raise BenchmarkError(f"{self.name}: no answer within {timeout:g} s")
        try:
            message = self.conn.recv()
        except EOFError:
            raise BenchmarkError(
                f"{self.name} exited (code {self.process.exitcode}) before answering"
            ) from None
        if isinstance(message, dict) and "error" in message:
            raise BenchmarkError(f"{self.name} failed: {message['error']}")
        return message

    def close(self, grace: float = 5.0) -> None:
        if self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send("stop")
            self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(grace)
        self.conn.close()


@attrs.frozen
class Library:
    """One build of siliconflow-video to measure: the one importable here (``path`` None),
    or a copy elsewhere (``--compare PATH``: a folder holding a ``siliconflow_video``
    package), measured interleaved with it to price a change to the library."""

    label: str
    path: str | None = None
    #: The event loop of its client, when not the one given by --loop.
    loop: str | None = None


def libraries(compare: Sequence[str], *, uvloop: bool = False) -> list[Library]:
    found = [Library("library")]
    if uvloop:
        found.append(Library("library@uvloop", loop="uvloop"))
    for path in compare:
        folder = Path(path).resolve()
        if not (folder / "siliconflow_video" / "__init__.py").is_file():
            raise BenchmarkError(f"--compare {path}: no siliconflow_video package in it")
        found.append(Library(f"library@{folder.name}", str(folder)))
    return found


def use_library(library: Library) -> None:
    """In a child, before its first import of siliconflow_video: take that build."""
    if library.path is not None:
        if "siliconflow_video" in sys.modules:
            raise BenchmarkError("siliconflow_video was imported before use_library()")
        sys.path.insert(0, library.path)


def report_failure(conn: Connection, exc: BaseException) -> None:
    """Tell the orchestrator why a child failed, instead of a bare EOF."""
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


# --- interleaving and statistics -----------------------------------------------------------------


Variant = tuple[str, Callable[[int], Metrics]]
"""A name and a function running one repetition (given its index) of that variant."""


def interleave(
    variants: Sequence[Variant], reps: int, *, log: Callable[[str], None]
) -> dict[str, list[Metrics]]:
    """Run every variant ``reps`` times, A/B/A/B: repetition i runs all variants once,
    starting with variant i mod n, so no variant is always first after a pause."""
    runs: dict[str, list[Metrics]] = {name: [] for name, _ in variants}
    for rep in range(reps):
        order = [variants[(rep + k) % len(variants)] for k in range(len(variants))]
        for name, run in order:
            metrics = run(rep)
            runs[name].append(metrics)
            log(f"  rep {rep + 1}/{reps} {name}: {brief(metrics)}")
    return runs


def brief(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str, bool)):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def values(runs: Sequence[Metrics], key: str) -> list[float]:
    return [float(run[key]) for run in runs]


def paired_ratio(
    a: Sequence[Metrics], b: Sequence[Metrics], key: str, key_b: str | None = None
) -> float:
    """Median over repetitions of a[i][key] / b[i][key_b or key]: each ratio compares two
    runs made back to back."""
    return median(float(x[key]) / float(y[key_b or key]) for x, y in zip(a, b, strict=True))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, by linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


# --- the table -----------------------------------------------------------------------------------


@attrs.frozen
class Row:
    """One line of the results table."""

    benchmark: str
    metric: str
    library: str
    reference: str
    ratio: str
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        met = "" if self.met is None else ("yes" if self.met else "**no**")
        return [
            self.benchmark,
            self.metric,
            self.library,
            self.reference,
            self.ratio,
            self.target,
            met,
        ]


HEADER = ["Benchmark", "Metric", "siliconflow-video", "Reference", "Ratio", "Target", "Met"]


def table(rows: Sequence[Row]) -> str:
    """A Markdown table, padded so it also reads well in a terminal."""
    lines = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [fmt(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(fmt(cells) for cells in lines[1:])
    return "\n".join(out)


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
        memory = f"{mem_kib / 1024**2:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "unknown"
    import aiohttp

    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "curl": curl.stdout.split("\n", 1)[0].split(" (", 1)[0],
    }


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
