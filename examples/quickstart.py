"""Submit a text-to-video job, wait for it, and download the video.

export SILICONFLOW_API_KEY=sk-...
python examples/quickstart.py "a red fox running through snow, cinematic"
"""

from __future__ import annotations

import asyncio
import sys

from siliconflow_video import AsyncClient, JobFailedError


async def main(prompt: str) -> int:
    async with AsyncClient() as client:  # SILICONFLOW_API_KEY, SILICONFLOW_BASE_URL
        request_id = await client.submit(model="Wan-AI/Wan2.2-T2V-A14B", prompt=prompt)
        print(f"submitted {request_id}")
        try:
            status = await client.wait(request_id, timeout=30 * 60)
        except JobFailedError as exc:
            print(f"generation failed: {exc.reason}")
            return 1
        print(f"{request_id}: {status.status}, {len(status.urls)} video(s)")
        [outcome] = await client.wait_and_download([request_id], "videos/")
        for video in outcome.files:
            print(f"{video.path}  {video.size} bytes")
        return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(" ".join(sys.argv[1:]) or "a paper boat on a stream")))
