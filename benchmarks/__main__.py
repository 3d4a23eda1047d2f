"""``python -m benchmarks``: run every benchmark, print the table, write the JSON results.

::

    python -m benchmarks                    # the full suite (about 5.5 minutes on 2 cores)
    python -m benchmarks --quick            # a smoke run with small sizes (under a minute)
    python -m benchmarks --only polling     # one benchmark: download, polling, ratelimit,
                                            # workload (SiliconFlow-like), simulate, journal
                                            # upload (CDN → S3) or workers (a fleet
                                            # on PostgreSQL)
    python -m benchmarks --loop uvloop      # run the measured Python clients on uvloop
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._measure import Row, libraries, log_to_stderr, machine, table

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "download",
    "polling",
    "ratelimit",
    "workload",
    "simulate",
    "journal",
    "upload",
    "workers",
)

Runner = Callable[..., tuple[list[Row], dict[str, Any]]]


def _runner(name: str) -> Runner:
    # Imported on demand: `--only download` need not import the polling code.
    if name == "download":
        from . import _download

        return _download.run
    if name == "polling":
        from . import _polling

        return _polling.run
    if name == "workload":
        from . import _workload

        return _workload.run
    if name == "simulate":
        from . import _simulate

        return _simulate.run
    if name == "journal":
        from . import _journal

        return _journal.run
    if name == "workers":
        from . import _workers

        return _workers.run
    if name == "upload":
        from . import _upload

        return _upload.run
    from . import _ratelimit

    return _ratelimit.run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, finishes in under a minute"
    )
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only these")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="where to write the JSON results (default: %(default)s)",
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions of each A/B pair (default: 3)"
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the measured Python clients (default: asyncio)",
    )
    parser.add_argument(
        "--compare",
        metavar="PATH",
        action="append",
        default=[],
        help="also measure the siliconflow_video package found in PATH, interleaved with "
        "this one (to price a change to the library); may be repeated",
    )
    parser.add_argument(
        "--uvloop-variant",
        action="store_true",
        help="also measure the library with its clients on uvloop (installed separately), "
        "interleaved with the others",
    )
    args = parser.parse_args(argv)
    if args.reps < 3:
        parser.error("--reps must be at least 3: every figure is a median of 3 or more")
    if args.loop == "uvloop" or args.uvloop_variant:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("uvloop is not installed: pip install 'siliconflow-video[speed]'")
    chosen = args.only or list(BENCHMARKS)
    builds = libraries(args.compare, uvloop=args.uvloop_variant)

    # A SIGTERM unwinds like Ctrl-C, so every child (servers, clients) is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import siliconflow_video

    started = time.monotonic()
    rows: list[Row] = []
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]).strip(),
        "quick": args.quick,
        "reps": args.reps,
        "loop": args.loop,
        "library": _describe_library(Path(siliconflow_video.__file__).parent),
        "compare": [b.path for b in builds[1:]],
        "machine": machine(),
        "benchmarks": {},
    }
    for name in chosen:
        t0 = time.monotonic()
        log_to_stderr(f"== {name}")
        bench_rows, bench_results = _runner(name)(
            quick=args.quick,
            reps=args.reps,
            loop=args.loop,
            log=log_to_stderr,
            builds=builds,
        )
        bench_results["seconds"] = round(time.monotonic() - t0, 1)
        rows += bench_rows
        results["benchmarks"][name] = bench_results
    results["seconds"] = round(time.monotonic() - started, 1)

    text = table(rows)
    print(text)
    results["table"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    log_to_stderr(f"results: {args.out} ({results['seconds']} s)")
    if not args.quick and args.only is None and len(builds) == 1:
        _write_results_md(text, results)
    return 0


def _describe_library(folder: Path) -> str:
    """Which code was measured: the folder, and its git commit when it is a checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return str(folder)
    dirty = " with uncommitted changes" if git("status", "--porcelain", "--", ".") else ""
    return f"{folder} (git {commit}{dirty})"


def _write_results_md(text: str, results: dict[str, Any]) -> None:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['date']} with `{results['command']}` "
        f"({results['reps']} interleaved repetitions, clients on {results['loop']}, "
        f"{results['seconds']:.0f} s in all), library {results['library']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}; "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, {m['curl']}. "
        "Shared and noisy: read the ratios, not the absolute times.",
        "",
        text,
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines), encoding="utf-8")
    log_to_stderr(f"table: {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    sys.exit(main())
