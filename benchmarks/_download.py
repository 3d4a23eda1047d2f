"""Download benchmark: one big video, and many videos at once, over loopback.

Three clients fetch the same URLs from the same server, interleaved:

- ``library``: ``AsyncClient.wait_and_download`` (the public path: one status call, then
  the download into ``<name>.part``, rename), with its defaults;
- ``library+sha256``: the same with ``DownloadPolicy(sha256=True)``, hashing while
  streaming;
- ``curl``: ``curl -o FILE URL`` (``curl -Z -o F1 U1 -o F2 U2 ...`` for many at once);
- ``aiohttp loop``: the ten-line aiohttp + aiofiles loop most integrations write;
- ``aiohttp floor``: the least an aiohttp client can do: ``iter_any()`` and ``os.pwrite``
  on the event loop, nothing checked, nothing resumable. What the library pays for its
  guarantees, and what it cannot win back while it reads through aiohttp.

The server is ``FakeSiliconFlow`` in a process of its own: its video host serves generated
content from memory, which feeds loopback faster than any of the clients can write to disk
(the "server ceiling" row: curl into /dev/null). Every file is checked (size and sha256)
after its run, outside the timed part, and deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp
import attrs

from ._measure import (
    GIB,
    MIB,
    BenchmarkError,
    Child,
    Connection,
    Library,
    Metrics,
    Row,
    cpu_seconds,
    fmt_ratio,
    interleave,
    median,
    paired_ratio,
    report_failure,
    run_command,
    run_loop,
    use_library,
    values,
)

API_KEY = "sk-bench"
CURL = "/usr/bin/curl"
#: The variant that hashes every download while streaming: DownloadPolicy(sha256=True).
HASHING = "library+sha256"


@attrs.frozen
class Video:
    """One video the server holds: where to get it and what it must be."""

    request_id: str
    url: str
    size: int
    sha256: str


@attrs.frozen
class Scenario:
    name: str
    videos: tuple[Video, ...]

    @property
    def total(self) -> int:
        return sum(v.size for v in self.videos)


@attrs.frozen
class Sizes:
    big: int
    small: int
    count: int
    note: str = ""


def plan_sizes(quick: bool, folder: Path) -> Sizes:
    """The sizes to use, scaled down (with a note) when the disk cannot hold them.

    One scenario's files exist at a time (each run's files are deleted after checking), so
    the need is the larger scenario plus a margin.
    """
    big, small, count = (64 * MIB, 4 * MIB, 16) if quick else (512 * MIB, 32 * MIB, 16)
    free = shutil.disk_usage(folder).free
    note = ""
    scale = 1
    while max(big, small * count) // scale * 2 > free and big // scale > 8 * MIB:
        scale *= 2
    if scale > 1:
        note = (
            f"only {free / MIB:.0f} MiB free in {folder}: sizes scaled down {scale}x "
            f"(from {big // MIB} MiB and {count}x{small // MIB} MiB)"
        )
        big, small = big // scale, small // scale
    if max(big, small * count) * 2 > free:
        raise BenchmarkError(f"only {free / MIB:.0f} MiB free in {folder}: too little to run")
    return Sizes(big, small, count, note)


# --- the server (its own process) ----------------------------------------------------------------


def serve(conn: Connection, sizes: Sizes) -> None:
    try:
        asyncio.run(_serve(conn, sizes))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _serve(conn: Connection, sizes: Sizes) -> None:
    from siliconflow_video.testing import FakeSiliconFlow

    async with FakeSiliconFlow(api_key=API_KEY, log_requests=False) as fake:

        def video(size: int) -> Video:
            rid = fake.add_job(videos=[size])
            return Video(rid, fake.video_url(rid), size, fake.video_sha256(rid))

        one = Scenario(f"1x{sizes.big // MIB} MiB", (video(sizes.big),))
        many = Scenario(
            f"{sizes.count}x{sizes.small // MIB} MiB",
            tuple(video(sizes.small) for _ in range(sizes.count)),
        )
        conn.send({"base_url": fake.base_url, "scenarios": [one, many]})
        await asyncio.get_running_loop().run_in_executor(None, _answer, conn)


def _answer(conn: Connection) -> None:
    """The server's side of the pipe, in a thread: report this process's CPU seconds
    (so the orchestrator can tell what serving each run cost), until "stop"."""
    try:
        while conn.recv() == "cpu":
            conn.send(cpu_seconds())
    except EOFError:
        pass


# --- the clients (each in its own process) -------------------------------------------------------


def library_client(
    conn: Connection,
    library: Library,
    base_url: str,
    ids: list[str],
    dest: str,
    loop: str,
    sha256: bool,
) -> None:
    try:
        use_library(library)
        conn.send(run_loop(_library(base_url, ids, Path(dest), sha256), library.loop or loop))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _library(base_url: str, ids: list[str], dest: Path, sha256: bool) -> Metrics:
    from siliconflow_video import AsyncClient, DownloadPolicy

    # Only the hashing variant names the option: a --compare build may predate it.
    options: dict[str, Any] = {"download": DownloadPolicy(sha256=True)} if sha256 else {}
    async with AsyncClient(
        api_key=API_KEY, base_url=base_url, max_concurrent_downloads=len(ids), **options
    ) as client:
        cpu, wall = cpu_seconds(), time.perf_counter()
        outcomes = await client.wait_and_download(ids, dest)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    failed = [f"{o.request_id}: {o.error}" for o in outcomes if not o.ok]
    if failed:
        raise BenchmarkError(f"library download failed: {failed[0]}")
    files = [[str(f.path), f.sha256] for o in outcomes for f in o.files]
    return {"wall": wall, "cpu": cpu, "files": files}


def plain_client(
    conn: Connection, urls: list[str], paths: list[str], loop: str, floor: bool
) -> None:
    try:
        conn.send(run_loop((_floor if floor else _plain)(urls, paths), loop))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _floor(urls: list[str], paths: list[str]) -> Metrics:
    cpu, wall = cpu_seconds(), time.perf_counter()

    async def fetch(session: aiohttp.ClientSession, url: str, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async with session.get(url) as resp:
                resp.raise_for_status()
                offset = 0
                async for chunk in resp.content.iter_any():
                    offset += os.pwrite(fd, chunk, offset)
        finally:
            os.close(fd)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(fetch(session, u, p) for u, p in zip(urls, paths, strict=True)))
    return {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu}


async def _plain(urls: list[str], paths: list[str]) -> Metrics:
    cpu, wall = cpu_seconds(), time.perf_counter()

    # --- the reference: the ten-line loop, as integrations write it ---
    async def fetch(session: aiohttp.ClientSession, url: str, path: str) -> None:
        async with session.get(url) as resp:
            resp.raise_for_status()
            async with aiofiles.open(path, "wb") as f:
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    await f.write(chunk)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(fetch(session, u, p) for u, p in zip(urls, paths, strict=True)))
    # ---
    return {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu}


def curl_argv(urls: Sequence[str], paths: Sequence[str]) -> list[str]:
    """``curl -o FILE URL``; for several, one ``curl -Z`` (curl's own parallel mode)."""
    argv = [CURL, "-s", "-S", "-f"]
    if len(urls) > 1:
        argv += ["-Z", "--parallel-max", str(len(urls))]
    for url, path in zip(urls, paths, strict=True):
        argv += ["-o", path, url]
    return argv


# --- checking ------------------------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def verify(files: Sequence[Path], videos: Sequence[Video], who: str) -> None:
    """Every file has the size and sha256 of its video (outside the timed part)."""
    for path, video in zip(files, videos, strict=True):
        if not path.is_file():
            raise BenchmarkError(f"{who}: {path.name} is missing")
        size = path.stat().st_size
        if size != video.size:
            raise BenchmarkError(f"{who}: {path.name} has {size} bytes, expected {video.size}")
        if _sha256_of(path) != video.sha256:
            raise BenchmarkError(f"{who}: {path.name} does not have the expected sha256")


def sha256_cpu_per_gib(total: int = 256 * MIB) -> float:
    """CPU seconds hashlib.sha256 needs per GiB here, over a 16 MiB block in memory (larger
    than the CPU's cache): what hashing adds to a download, give or take the cache (a
    client that hashes each piece as it arrives reads it from the cache, for less)."""
    block = os.urandom(16 * MIB)
    digest = hashlib.sha256()
    cpu = cpu_seconds()
    for _ in range(total // len(block)):
        digest.update(block)
    return (cpu_seconds() - cpu) / (total / GIB)


# --- the benchmark -------------------------------------------------------------------------------


def _metrics(wall: float, cpu: float, total: int) -> Metrics:
    return {
        "wall": wall,
        "cpu": cpu,
        "cpu_per_gib": cpu / (total / GIB),
        "gib_per_s": total / GIB / wall,
    }


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="sfv-bench-download-"))
    try:
        return _run(work, quick=quick, reps=reps, loop=loop, log=log, builds=builds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(
    work: Path,
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    sizes = plan_sizes(quick, work)
    if sizes.note:
        log(f"download: {sizes.note}")
    rows: list[Row] = []
    results: dict[str, Any] = {"sizes": attrs.asdict(sizes), "scenarios": {}}
    # What hashing costs, measured now, in this process.
    sha = [sha256_cpu_per_gib() for _ in range(reps)]
    with Child(serve, sizes, name="download server") as server:
        info = server.recv(timeout=120)
        base_url: str = info["base_url"]
        scenarios: list[Scenario] = info["scenarios"]
        for scenario in scenarios:
            log(f"download {scenario.name}")
            runs = _scenario(
                work,
                base_url,
                scenario,
                reps=reps,
                loop=loop,
                log=log,
                server=server,
                builds=builds,
            )
            results["scenarios"][scenario.name] = runs
            rows += _rows(scenario, runs, builds)
        ceiling = [_ceiling(scenarios[0]) for _ in range(reps)]
    results["server_ceiling_gib_per_s"] = ceiling
    results["sha256_cpu_per_gib"] = sha
    rows.append(
        Row(
            "Download",
            "sha256 alone (hashlib, in memory), CPU s/GiB",
            f"{median(sha):.3f}",
            "",
            "",
        )
    )
    rows.append(
        Row(
            "Download",
            "server ceiling: curl → /dev/null, GiB/s",
            "",
            f"{median(ceiling):.2f}",
            "",
        )
    )
    return rows, results


def _scenario(
    work: Path,
    base_url: str,
    scenario: Scenario,
    *,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    server: Child,
    builds: Sequence[Library],
) -> dict[str, list[Metrics]]:
    videos = scenario.videos
    urls = [v.url for v in videos]
    total = scenario.total

    def fresh_dir(name: str) -> Path:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return folder

    def library(build: Library, *, sha256: bool = False) -> Callable[[int], Metrics]:
        label = HASHING if sha256 else build.label

        def one_run(rep: int) -> Metrics:
            dest = fresh_dir("library")
            ids = [v.request_id for v in videos]
            args = (build, base_url, ids, str(dest), loop, sha256)
            with Child(library_client, *args, name=label) as child:
                result = child.recv(timeout=600)
            # Outcomes come in the order of the ids, one file each.
            files: list[tuple[str, str | None]] = [(p, sha) for p, sha in result.pop("files")]
            verify([Path(p) for p, _ in files], videos, label)
            reported = [sha for _, sha in files]
            if sha256 and reported != [v.sha256 for v in videos]:
                raise BenchmarkError(f"{label}: the sha256 it reported is wrong")
            shutil.rmtree(dest)
            return _metrics(result["wall"], result["cpu"], total)

        return one_run

    def curl(rep: int) -> Metrics:
        dest = fresh_dir("curl")
        paths = [dest / f"{i}.mp4" for i in range(len(videos))]
        child = run_command(curl_argv(urls, [str(p) for p in paths]), timeout=600)
        if child.returncode != 0:
            raise BenchmarkError(f"curl failed ({child.returncode}): {child.stderr.strip()}")
        verify(paths, videos, "curl")
        shutil.rmtree(dest)
        return _metrics(child.wall, child.cpu, total)

    def plain(label: str, *, floor: bool) -> Callable[[int], Metrics]:
        def one_run(rep: int) -> Metrics:
            dest = fresh_dir("plain")
            paths = [str(dest / f"{i}.mp4") for i in range(len(videos))]
            with Child(plain_client, urls, paths, loop, floor, name=label) as child:
                result = child.recv(timeout=600)
            verify([Path(p) for p in paths], videos, label)
            shutil.rmtree(dest)
            return _metrics(result["wall"], result["cpu"], total)

        return one_run

    def serving(run: Callable[[int], Metrics]) -> Callable[[int], Metrics]:
        """Add what serving the run cost the server process (its own CPU clock)."""

        def measured(rep: int) -> Metrics:
            server.send("cpu")
            before: float = server.recv(timeout=30)
            metrics = run(rep)
            server.send("cpu")
            metrics["server_cpu"] = server.recv(timeout=30) - before
            return metrics

        return measured

    return interleave(
        [
            *((build.label, serving(library(build))) for build in builds),
            (HASHING, serving(library(builds[0], sha256=True))),
            ("curl", serving(curl)),
            ("aiohttp loop", serving(plain("aiohttp loop", floor=False))),
            ("aiohttp floor", serving(plain("aiohttp floor", floor=True))),
        ],
        reps,
        log=log,
    )


def _ceiling(scenario: Scenario) -> float:
    video = scenario.videos[0]
    child = run_command([CURL, "-s", "-S", "-f", "-o", "/dev/null", video.url], timeout=300)
    if child.returncode != 0:
        raise BenchmarkError(f"curl failed ({child.returncode}): {child.stderr.strip()}")
    return video.size / GIB / child.wall


def _rows(
    scenario: Scenario,
    runs: dict[str, list[Metrics]],
    builds: Sequence[Library],
) -> list[Row]:
    lib, hashing_lib = runs["library"], runs[HASHING]
    curl, plain, floor = runs["curl"], runs["aiohttp loop"], runs["aiohttp floor"]
    name = f"Download {scenario.name}"
    wall_ratio = paired_ratio(lib, curl, "wall")
    cpu_ratio = paired_ratio(lib, curl, "cpu_per_gib")
    rows = [
        Row(
            name,
            "wall s (vs curl -o)",
            f"{median(values(lib, 'wall')):.3f}",
            f"{median(values(curl, 'wall')):.3f}",
            fmt_ratio(wall_ratio),
            "≤ 1.0x",
            wall_ratio <= 1.0,
        ),
        Row(
            name,
            "CPU s/GiB (vs curl -o)",
            f"{median(values(lib, 'cpu_per_gib')):.3f}",
            f"{median(values(curl, 'cpu_per_gib')):.3f}",
            fmt_ratio(cpu_ratio),
            "≤ 1.2x",
            cpu_ratio <= 1.2,
        ),
        Row(
            name,
            "wall s: library, DownloadPolicy(sha256=True) (vs curl -o)",
            f"{median(values(hashing_lib, 'wall')):.3f}",
            f"{median(values(curl, 'wall')):.3f}",
            fmt_ratio(paired_ratio(hashing_lib, curl, "wall")),
        ),
        Row(
            name,
            "CPU s/GiB: library, DownloadPolicy(sha256=True) (vs curl -o)",
            f"{median(values(hashing_lib, 'cpu_per_gib')):.3f}",
            f"{median(values(curl, 'cpu_per_gib')):.3f}",
            fmt_ratio(paired_ratio(hashing_lib, curl, "cpu_per_gib")),
        ),
        Row(
            name,
            "wall s (vs aiohttp+aiofiles loop)",
            f"{median(values(lib, 'wall')):.3f}",
            f"{median(values(plain, 'wall')):.3f}",
            fmt_ratio(paired_ratio(lib, plain, "wall")),
        ),
        Row(
            name,
            "CPU s/GiB (vs aiohttp+aiofiles loop)",
            f"{median(values(lib, 'cpu_per_gib')):.3f}",
            f"{median(values(plain, 'cpu_per_gib')):.3f}",
            fmt_ratio(paired_ratio(lib, plain, "cpu_per_gib")),
        ),
        Row(
            name,
            "wall s (vs aiohttp floor: iter_any + pwrite on the loop, no checks)",
            f"{median(values(lib, 'wall')):.3f}",
            f"{median(values(floor, 'wall')):.3f}",
            fmt_ratio(paired_ratio(lib, floor, "wall")),
        ),
        Row(
            name,
            "CPU s/GiB (vs aiohttp floor)",
            f"{median(values(lib, 'cpu_per_gib')):.3f}",
            f"{median(values(floor, 'cpu_per_gib')):.3f}",
            fmt_ratio(paired_ratio(lib, floor, "cpu_per_gib")),
        ),
        Row(
            name,
            "wall s: aiohttp floor (vs curl -o)",
            f"{median(values(floor, 'wall')):.3f}",
            f"{median(values(curl, 'wall')):.3f}",
            fmt_ratio(paired_ratio(floor, curl, "wall")),
        ),
    ]
    for build in builds[1:]:
        other = runs[build.label]
        for key, label in (("wall", "wall s"), ("cpu_per_gib", "CPU s/GiB")):
            versus = fmt_ratio(paired_ratio(other, lib, key))
            rows.append(
                Row(
                    name,
                    f"{label}: {build.label} (vs curl -o; it is {versus} library)",
                    f"{median(values(other, key)):.3f}",
                    f"{median(values(curl, key)):.3f}",
                    fmt_ratio(paired_ratio(other, curl, key)),
                )
            )
    return rows
