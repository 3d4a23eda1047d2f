"""Shared fixtures: a fake SiliconFlow on loopback and a client with fast policies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from siliconflow_video import AsyncClient, DownloadPolicy, RetryPolicy
from siliconflow_video.testing import FakeSiliconFlow

#: Retries that keep their shape (backoff, jitter, Retry-After) but take milliseconds.
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
FAST_DOWNLOAD = DownloadPolicy(base_delay=0.001, max_delay=0.01, write_buffer=256 * 1024)


def make_client(fake: FakeSiliconFlow, **options: object) -> AsyncClient:
    """A client pointed at the fake, polling every 50-200 ms unless told otherwise."""
    settings: dict[str, object] = {
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "retry": FAST_RETRY,
        "download": FAST_DOWNLOAD,
    }
    settings.update(options)
    return AsyncClient(fake.api_key, fake.base_url, **settings)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSiliconFlow]:
    async with FakeSiliconFlow(api_key="sk-test-secret-0123456789", seed=1234) as server:
        yield server


@pytest.fixture
async def client(fake: FakeSiliconFlow) -> AsyncIterator[AsyncClient]:
    async with make_client(fake) as c:
        yield c
