"""Proxies and sessions: both sessions follow HTTP_PROXY/NO_PROXY like requests and httpx,
the key never reaches the video host, and sessions passed in are used and left open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import attrs
import pytest
from aiohttp import web

import siliconflow_video as sv
from siliconflow_video.testing import FakeSiliconFlow

from .conftest import make_client

_HOP_BY_HOP = {"host", "proxy-connection", "connection", "keep-alive", "transfer-encoding"}
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@attrs.define
class Seen:
    url: str
    authorization: str | None


@attrs.define
class ForwardProxy:
    """A real forward HTTP proxy on loopback: it takes absolute-form requests, forwards
    them, and keeps what it saw."""

    url: str
    seen: list[Seen]


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    seen: list[Seen] = []
    upstream = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(Seen(str(request.url), request.headers.get("Authorization")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with upstream.request(
            request.method, request.url, headers=headers, data=await request.read()
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            kept.pop("Content-Length", None)
            return web.Response(status=answer.status, body=body, headers=kept)

    runner = web.ServerRunner(web.Server(forward))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield ForwardProxy(f"http://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()
        await upstream.close()


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_both_sessions_follow_http_proxy(
    fake: FakeSiliconFlow, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP_PROXY set, status calls and video downloads both go through the proxy,
    and the video host's requests carry no key, through the proxy or not."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    rid = fake.add_job(videos=[50_000])
    async with make_client(fake) as client:
        [outcome] = await client.wait_and_download([rid], tmp_path)
    assert outcome.ok
    assert outcome.paths[0].read_bytes() == fake.video_bytes(rid)
    api = [s for s in proxy.seen if "/video/status" in s.url]
    videos = [s for s in proxy.seen if "/video/status" not in s.url]
    assert api
    assert videos
    assert all(s.authorization == f"Bearer {fake.api_key}" for s in api)
    assert all(s.authorization is None for s in videos)


async def test_no_proxy_and_trust_env_false_go_direct(
    fake: FakeSiliconFlow, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY naming the host, or trust_env=False, keeps every request off the proxy."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    rid = fake.add_job(videos=[20_000])
    async with make_client(fake) as client:
        [bypassed] = await client.wait_and_download([rid], tmp_path / "a")
    monkeypatch.delenv("NO_PROXY")
    async with make_client(fake, trust_env=False) as client:
        [direct] = await client.wait_and_download([rid], tmp_path / "b")
    assert bypassed.ok
    assert direct.ok
    assert proxy.seen == []


async def test_a_video_session_passed_in_is_used_and_left_open(
    fake: FakeSiliconFlow, proxy: ForwardProxy, tmp_path: Path
) -> None:
    """video_session= carries the downloads (here through an explicit proxy) and the
    client does not close it; the API calls stay on their own session."""

    rid = fake.add_job(videos=[20_000])
    videos = aiohttp.ClientSession(auto_decompress=False, proxy=proxy.url)
    try:
        async with make_client(fake, video_session=videos) as client:
            [outcome] = await client.wait_and_download([rid], tmp_path)
        assert not videos.closed
    finally:
        await videos.close()
    assert outcome.ok
    assert proxy.seen
    assert all("/video/status" not in s.url for s in proxy.seen)


async def test_a_decompressing_video_session_is_refused(fake: FakeSiliconFlow) -> None:
    """A video_session that would decompress bodies is a ConfigurationError at once: the
    bytes on disk must be the bytes served."""
    session = aiohttp.ClientSession()
    try:
        with pytest.raises(sv.ConfigurationError, match="auto_decompress=False"):
            make_client(fake, video_session=session)
    finally:
        await session.close()


async def test_a_netrc_default_entry_is_never_sent(
    fake: FakeSiliconFlow, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc with a default entry changes nothing: the API calls still carry only the
    key, and its credentials never reach the video host (trust_env reads proxies only)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login me password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    rid = fake.add_job(videos=[20_000])
    async with make_client(fake) as client:
        [outcome] = await client.wait_and_download([rid], tmp_path / "v")
    assert outcome.ok, outcome.error
    videos = fake.requests_for("video", rid)
    assert videos
    assert all("Authorization" not in r.headers for r in videos)
    assert all(s.authorization in (None, f"Bearer {fake.api_key}") for s in proxy.seen)
