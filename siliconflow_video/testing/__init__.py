"""A scripted fake of SiliconFlow's video API and of the storage host serving the videos.

:class:`FakeSiliconFlow` runs two aiohttp servers on loopback: the API (``base_url``, with
``POST /video/submit`` and ``POST /video/status``) and an OSS-like video host
(``video_base_url``, another origin) serving signed, expiring, range-capable URLs. Jobs,
errors, broken connections, rate limits and URL expiry are scripted from the test, and
every request is logged so the test can assert what the client did.

A pytest fixture and an async test::

    import aiohttp
    import pytest

    from siliconflow_video.testing import FakeSiliconFlow, rate_limited


    @pytest.fixture
    async def fake():
        async with FakeSiliconFlow(api_key="sk-test", seed=0) as fake:
            yield fake


    async def test_waits_out_a_rate_limit(fake):
        rid = fake.add_job(queue_seconds=0.1, run_seconds=0.2, videos=[2 * 1024 * 1024])
        fake.add_fault("status", rate_limited(retry_after=1))  # the next status call only
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            ...  # point the code under test at fake.base_url
        assert [r.status for r in fake.requests_for("status", rid)][0] == 429
        assert not any("Authorization" in r.headers for r in fake.requests_for("video"))

Sync code (a FastAPI app under ``TestClient``, a CLI) gets the fake served from a
background thread::

    from fastapi.testclient import TestClient

    from myapp import create_app
    from siliconflow_video.testing import FakeSiliconFlow, overloaded


    def test_endpoint_reports_the_video():
        fake = FakeSiliconFlow(api_key="sk-test")
        with fake.run_in_thread():
            rid = fake.add_job(run_seconds=0.1, videos=[b"tiny mp4 bytes"])
            fake.add_fault("status", overloaded(), times=2)
            app = create_app(base_url=fake.base_url, api_key=fake.api_key)
            with TestClient(app) as client:
                assert client.get(f"/videos/{rid}").status_code == 200
        assert fake.requests_for("status", rid)[0].status == 503

See :class:`FakeSiliconFlow` for the scripting methods, and each fault class (a tree is in
:class:`Fault`'s module) for what it looks like to an aiohttp client.
"""

from __future__ import annotations

from ._content import PERIOD, VideoContent
from ._faults import (
    ConnectionReset,
    DropMidBody,
    EncodedBody,
    ErrorResponse,
    ExpiredURL,
    Fault,
    FaultRule,
    HTMLPage,
    IgnoreRange,
    MalformedBody,
    NoVideoShape,
    NoVideoURL,
    Slow,
    SlowBody,
    StallMidBody,
    Target,
    TruncatedBody,
    TruncatedJSON,
    UnknownStatus,
    bad_gateway_html,
    bad_request,
    forbidden,
    gateway_timeout,
    not_found,
    not_found_html,
    overloaded,
    payment_required,
    rate_limited,
    server_error,
    slow_down,
    unauthorized,
)
from ._jobs import Job, JobOutcome, JobSpec, JobStatus, LoggedRequest
from ._server import FakeSiliconFlow

__all__ = [
    "ConnectionReset",
    "DropMidBody",
    "EncodedBody",
    "ErrorResponse",
    "ExpiredURL",
    "FakeSiliconFlow",
    "Fault",
    "FaultRule",
    "HTMLPage",
    "IgnoreRange",
    "Job",
    "JobSpec",
    "JobStatus",
    "LoggedRequest",
    "MalformedBody",
    "NoVideoShape",
    "NoVideoURL",
    "JobOutcome",
    "PERIOD",
    "Slow",
    "SlowBody",
    "StallMidBody",
    "Target",
    "TruncatedBody",
    "TruncatedJSON",
    "UnknownStatus",
    "VideoContent",
    "bad_gateway_html",
    "bad_request",
    "forbidden",
    "gateway_timeout",
    "not_found",
    "not_found_html",
    "overloaded",
    "payment_required",
    "rate_limited",
    "server_error",
    "slow_down",
    "unauthorized",
]
