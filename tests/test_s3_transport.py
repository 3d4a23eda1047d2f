"""``s3://`` batches reach the video host as downloads into a folder do: through the
client's proxies, and under the client's one ``max_bytes_per_second`` cap. Real
SeaweedFS, real HTTP to the fake, a real forward proxy on loopback."""

from __future__ import annotations

import time

import attrs
import pytest

from siliconflow_video.testing import FakeSiliconFlow

from ._seaweed import BUCKET, Seaweed
from .conftest import FAST_DOWNLOAD, make_client
from .test_proxy import ForwardProxy, no_proxy_from_the_machine, proxy
from .test_s3_batch import PART, object_bytes, open_uploads, prefix, seaweed, settings

__all__ = ["no_proxy_from_the_machine", "prefix", "proxy", "seaweed"]  # fixtures, by name


async def test_video_requests_follow_http_proxy(
    fake: FakeSiliconFlow,
    seaweed: Seaweed,
    proxy: ForwardProxy,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HTTP_PROXY set, an s3:// batch fetches its video through the proxy, as a
    folder's does, and the video host gets no key (the store is reached directly here:
    NO_PROXY names it)."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    s3 = attrs.evolve(
        settings(seaweed), endpoint_url=seaweed.endpoint_url.replace("127.0.0.1", "localhost")
    )
    rid = fake.add_job(videos=[PART + 1000])
    async with make_client(fake, s3=s3) as client:
        [outcome] = await client.wait_and_download([rid], f"s3://{BUCKET}/{prefix}")
    assert outcome.ok, outcome.error
    videos = [s for s in proxy.seen if "/video/status" not in s.url]
    assert videos, proxy.seen
    assert all(s.authorization is None for s in videos)
    monkeypatch.delenv("HTTP_PROXY")  # the test's own (blocking) look into the bucket
    assert object_bytes(seaweed, f"{prefix}/{rid}_0.mp4") == fake.video_bytes(rid)


async def test_one_rate_cap_for_all_uploads(
    fake: FakeSiliconFlow, seaweed: Seaweed, prefix: str
) -> None:
    """max_bytes_per_second caps every upload of the client together: two videos of
    1 MiB at 1 MiB/s take about two seconds, not one (a lower bound: a slow machine only
    makes it longer)."""
    rate = 1024 * 1024
    ids = [fake.add_job(videos=[rate]) for _ in range(2)]
    policy = attrs.evolve(FAST_DOWNLOAD, max_bytes_per_second=rate)
    async with make_client(fake, s3=settings(seaweed), download=policy) as client:
        start = time.monotonic()
        outcomes = await client.wait_and_download(ids, f"s3://{BUCKET}/{prefix}")
        took = time.monotonic() - start
    assert [o.ok for o in outcomes] == [True, True], [o.error for o in outcomes]
    assert took >= 1.8, took
    assert open_uploads(seaweed, prefix) == []
