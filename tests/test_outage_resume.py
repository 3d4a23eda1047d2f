"""A restarted service resuming its journal during an API outage: the journal vouches for
the base URL its jobs were polled through, so the resume waits the outage out, while a wrong
base URL with a fresh journal still gives up. Real HTTP to the fake, through a forwarder on
a fixed port that is stopped (connections refused) and started again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import siliconflow_video as sv
from siliconflow_video import AsyncClient
from siliconflow_video._client import journal_vouches
from siliconflow_video.testing import FakeSiliconFlow

from .conftest import FAST_DOWNLOAD, FAST_RETRY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens until a forwarder does


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def forwarder(port: int, fake: FakeSiliconFlow) -> AsyncIterator[None]:
    """The fake's API on ``port`` while the block runs; connections refused after it."""
    target = urlsplit(fake.base_url)
    conns: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        conns.update((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for conn in conns:
            conn.close()
        await server.wait_closed()


def client_for(fake: FakeSiliconFlow, base_url: str, journal: Path) -> AsyncClient:
    return AsyncClient(
        fake.api_key,
        base_url,
        journal=journal,
        poll_interval=0.05,
        max_poll_interval=0.2,
        retry=FAST_RETRY,
        download=FAST_DOWNLOAD,
    )


async def outage_outlasts_the_budget(
    caplog: pytest.LogCaptureFixture, rid: str, waiting: asyncio.Task[object]
) -> None:
    """Until the poller has failed to connect RetryPolicy.max_attempts times in a row for
    ``rid`` (it says so at WARNING), longer than a never-answered client waits, or until
    ``waiting`` ends (it gave up)."""
    for _ in range(3000):
        if waiting.done() or any(
            r.levelno == logging.WARNING and f"status of {rid}" in r.getMessage()
            for r in caplog.records
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the poller never reported the outage")


async def test_a_restarted_service_resumes_through_an_outage(
    fake: FakeSiliconFlow, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ids polled before through a base URL, resumed by a new client while that URL refuses
    connections for longer than the retry budget: the resume waits, then downloads."""
    caplog.set_level(logging.WARNING, logger="siliconflow_video")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    journal, dest = tmp_path / "jobs.sqlite", tmp_path / "out"
    rid = fake.add_job(run_seconds=3600, videos=[4000])
    async with forwarder(port, fake), client_for(fake, base_url, journal) as first:
        [outcome] = await first.wait_and_download([rid], dest, timeout=0.3)
        assert isinstance(outcome.error, sv.WaitTimeoutError)  # polled, not done: journaled
    # The outage: nothing listens on the port. A new client (a restarted service) resumes.
    async with client_for(fake, base_url, journal) as second:
        resuming = asyncio.create_task(second.resume())
        await outage_outlasts_the_budget(caplog, rid, resuming)
        assert not resuming.done(), resuming.result()
        async with forwarder(port, fake):
            fake.finish(rid)
            [outcome] = await asyncio.wait_for(resuming, 30)
    assert outcome.ok, outcome.error
    assert outcome.paths[0].read_bytes() == fake.video_bytes(rid)


async def test_a_wrong_base_url_with_a_fresh_journal_still_gives_up(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """Nothing ever answered through this base URL, and the journal never saw it: the id
    ends with APIConnectionError after the retry budget, not after an endless wait."""
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    async with client_for(fake, base_url, tmp_path / "jobs.sqlite") as client:
        [outcome] = await asyncio.wait_for(
            client.wait_and_download(["some-id"], tmp_path / "out"), 30
        )
    assert isinstance(outcome.error, sv.APIConnectionError)
    assert "cannot connect" in str(outcome.error)


async def test_a_journal_vouches_only_for_the_base_url_that_answered(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """A journal whose jobs were polled through the fake does not make another base URL
    (nothing listening) wait forever: it still gives up with APIConnectionError."""
    journal = tmp_path / "jobs.sqlite"
    rid = fake.add_job(videos=[4000])
    async with client_for(fake, fake.base_url, journal) as first:
        [outcome] = await first.wait_and_download([rid], tmp_path / "out")
        assert outcome.ok, outcome.error
    wrong = f"http://127.0.0.1:{free_port()}/v1"
    async with client_for(fake, wrong, journal) as client:
        [outcome] = await asyncio.wait_for(
            client.wait_and_download(["other-id"], tmp_path / "out"), 30
        )
    assert isinstance(outcome.error, sv.APIConnectionError)


async def test_the_journal_keeps_no_base_url_only_its_digest(
    fake: FakeSiliconFlow, tmp_path: Path
) -> None:
    """What vouches for a base URL is a digest: nothing of the URL is in the journal's file
    (a fleet shares it, and a gateway's URL may carry a token in its path)."""
    journal = tmp_path / "jobs.sqlite"
    rid = fake.add_job(videos=[4000])
    async with client_for(fake, fake.base_url, journal) as client:
        [outcome] = await client.wait_and_download([rid], tmp_path / "out")
        assert outcome.ok, outcome.error
    async with sv.open_journal(journal) as opened:
        assert await journal_vouches(opened, fake.base_url)
        assert not await journal_vouches(opened, fake.base_url + "/other")
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("jobs.sqlite*"))
    assert urlsplit(fake.base_url).netloc.encode() not in stored


def test_a_base_url_with_credentials_is_refused_without_showing_them() -> None:
    """A user or password in the base URL is a ConfigurationError that does not show them
    (the key has its own place; aiohttp would refuse the pair on the first call)."""
    with pytest.raises(sv.ConfigurationError) as caught:
        AsyncClient("sk-x", "https://user:gw-secret-Zr8q@gateway.example/v1")
    assert "gw-secret-Zr8q" not in str(caught.value)
    assert "user" in str(caught.value)
