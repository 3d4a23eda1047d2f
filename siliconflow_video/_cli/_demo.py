"""``siliconflow-video demo``: the README's main job, offline, in a few seconds.

It starts the package's own fake SiliconFlow (:mod:`siliconflow_video.testing`) on loopback,
in this event loop, submits three jobs through a real :class:`AsyncClient` pointed at it,
then waits for them and downloads every video with progress. The key is the fake's own:
the demo needs no account, no key and no network, and never reads ``SILICONFLOW_API_KEY``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import attrs

from .._client import AsyncClient
from .._config import DownloadPolicy
from .._models import Outcome, ProgressCallback
from ._rows import human_size

__all__ = ["DEMO_JOBS", "DEMO_MODEL", "DemoRun", "demo_report", "run_demo"]

MiB = 1024 * 1024

DEMO_MODEL = "Wan-AI/Wan2.2-T2V-A14B"


@attrs.frozen
class DemoJob:
    """One scripted demo job: how long it queues and runs, and how big its video is."""

    prompt: str
    queue_seconds: float
    run_seconds: float
    size: int


# Staggered so the jobs visibly move InQueue → InProgress → downloading one after another,
# and all is done in about five seconds.
DEMO_JOBS = (
    DemoJob("a red fox running through fresh snow at golden hour", 0.4, 0.8, 2 * MiB),
    DemoJob("waves breaking on black volcanic sand, slow motion", 0.8, 1.4, 3 * MiB),
    DemoJob("a paper boat drifting down a rainy street at night", 1.2, 2.0, 4 * MiB),
)
#: How fast the fake video host serves each video, so the byte counts visibly move.
DEMO_BYTES_PER_SECOND = 2.5 * MiB


@attrs.frozen
class DemoRun:
    """What the demo did: where the fake ran, each id's outcome and the videos' true sha256."""

    base_url: str
    outcomes: list[Outcome]
    expected_sha256: dict[str, list[str]]


async def run_demo(
    dest: Path,
    *,
    progress: ProgressCallback | None = None,
    on_submitted: Callable[[list[str]], None] | None = None,
) -> DemoRun:
    """Run the whole demo and return what happened. ``on_submitted`` hears the ids before
    the wait begins (to start a progress display)."""
    # Imported here: the testing package is only needed by the demo.
    from ..testing import FakeSiliconFlow, SlowBody

    fake = FakeSiliconFlow(
        api_key=f"sk-demo-{secrets.token_hex(8)}",
        seed=secrets.randbits(32),  # fresh ids each run, as the real API gives
        log_requests=False,
    )
    async with fake:
        fake.add_fault("video", SlowBody(bytes_per_second=DEMO_BYTES_PER_SECOND), times=None)
        async with AsyncClient(
            api_key=fake.api_key,
            base_url=fake.base_url,
            poll_interval=0.25,
            max_poll_interval=0.5,
            # Flush (and report progress) every 256 KiB, so the bars move smoothly; hash,
            # so the summary can check every file against what the fake served.
            download=DownloadPolicy(write_buffer=256 * 1024, sha256=True),
        ) as client:
            ids: list[str] = []
            for job in DEMO_JOBS:
                # The fake gives every submitted job these timings and video sizes.
                fake.submit_defaults = {
                    "queue_seconds": job.queue_seconds,
                    "run_seconds": job.run_seconds,
                    "videos": (job.size,),
                }
                ids.append(await client.submit(model=DEMO_MODEL, prompt=job.prompt))
            if on_submitted is not None:
                on_submitted(ids)
            outcomes = await client.wait_and_download(ids, dest, progress=progress)
        expected = {
            rid: [fake.video_sha256(rid, i) for i in range(len(fake.jobs[rid].videos))]
            for rid in ids
        }
        return DemoRun(base_url=fake.base_url, outcomes=outcomes, expected_sha256=expected)


def demo_report(run: DemoRun, dest: Path) -> list[str]:
    """The demo's closing lines for stdout: every file with its sha256, then how to use
    the real API."""
    files = [f for outcome in run.outcomes for f in outcome.files]
    lines = [f"Downloaded {len(files)} videos into {dest.resolve()}:"]
    for outcome in run.outcomes:
        expected = run.expected_sha256.get(outcome.request_id, [])
        for file in outcome.files:
            # By the video's own index: when one video of a job fails, the files that
            # follow it do not move up into its place.
            verified = file.index < len(expected) and expected[file.index] == file.sha256
            mark = "verified" if verified else "MISMATCH"
            lines.append(
                f"  {Path(file.location).resolve()}  {human_size(file.size)}  "
                f"sha256 {file.sha256}  {mark}"
            )
        if outcome.error is not None:
            lines.append(f"  {outcome.request_id}: {outcome.error}")
    lines += [
        "",
        f"That was the package's fake SiliconFlow on {run.base_url}: no key, no network.",
        "With a real key (https://cloud.siliconflow.cn/account/ak):",
        "  export SILICONFLOW_API_KEY=sk-...",
        "  # accounts on siliconflow.com: export SILICONFLOW_BASE_URL=https://api.siliconflow.com/v1",
        f'  siliconflow-video submit --model {DEMO_MODEL} --prompt "..." --download videos/',
        "  siliconflow-video download REQUEST_ID... -o videos/",
        'In Python: await siliconflow_video.wait_and_download(request_ids, "videos/")',
    ]
    return lines
