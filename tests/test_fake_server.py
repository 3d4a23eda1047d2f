"""Tests of the fake SiliconFlow server itself, driven by a plain aiohttp client."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from siliconflow_video.testing import (
    PERIOD,
    ConnectionReset,
    DropMidBody,
    EncodedBody,
    ErrorResponse,
    ExpiredURL,
    FakeSiliconFlow,
    HTMLPage,
    IgnoreRange,
    MalformedBody,
    NoVideoShape,
    NoVideoURL,
    Slow,
    SlowBody,
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

KEY = "sk-test"
EXPIRED_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    "<Message>Request has expired.</Message></Error>"
)
SUBMIT = {"model": "Wan-AI/Wan2.2-T2V-A14B", "prompt": "a cat", "image_size": "1280x720"}
# A reset may surface as either, depending on timing: both are transport errors.
TRANSPORT_ERRORS = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSiliconFlow]:
    async with FakeSiliconFlow(api_key=KEY, seed=0) as fake:
        yield fake


@pytest.fixture
async def api() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        yield session


@pytest.fixture
async def cdn() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def raw_cdn() -> AsyncIterator[aiohttp.ClientSession]:
    """A video-host client that does not decode Content-Encoding."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def status_call(
    api: aiohttp.ClientSession, fake: FakeSiliconFlow, request_id: str
) -> tuple[int, Any]:
    async with api.post(f"{fake.base_url}/video/status", json={"requestId": request_id}) as r:
        raw = await r.read()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw


async def first_url(api: aiohttp.ClientSession, fake: FakeSiliconFlow, request_id: str) -> str:
    status, body = await status_call(api, fake, request_id)
    assert status == 200, body
    url: str = body["results"]["videos"][0]["url"]
    return url


async def read_into(
    cdn: aiohttp.ClientSession, url: str, into: bytearray, headers: dict[str, str] | None = None
) -> None:
    """Stream a video into ``into``, keeping what arrived even if the body breaks."""
    async with cdn.get(url, headers=headers) as r:
        assert r.status in (200, 206)
        async for chunk in r.content.iter_any():
            into += chunk


# ---------------------------------------------------------------- lifecycle and jobs


async def test_urls_are_loopback_on_two_origins(fake: FakeSiliconFlow) -> None:
    """The API and the video host listen on 127.0.0.1, on different ports."""
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.base_url.endswith("/v1")
    assert fake.video_base_url.startswith("http://127.0.0.1:")
    assert not fake.base_url.startswith(fake.video_base_url)
    assert fake.api_key == KEY


async def test_job_goes_through_queue_progress_and_outcome(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """A job is InQueue, then InProgress, then Succeed at the scripted times."""
    rid = fake.add_job(queue_seconds=0.2, run_seconds=0.4)
    assert (await status_call(api, fake, rid))[1]["status"] == "InQueue"
    await asyncio.sleep(0.3)
    assert (await status_call(api, fake, rid))[1]["status"] == "InProgress"
    await asyncio.sleep(0.35)
    status, body = await status_call(api, fake, rid)
    assert status == 200
    assert body["status"] == "Succeed"
    assert body["reason"] == ""
    assert body["results"]["timings"] == {"inference": 1.5}
    assert body["results"]["seed"] == 42
    assert body["results"]["videos"][0]["url"].startswith(fake.video_base_url + "/videos/")


async def test_running_job_rotates_the_three_results_shapes(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """While running, results is absent, null and {"videos": []} across calls."""
    rid = fake.add_job(queue_seconds=10)
    bodies = [(await status_call(api, fake, rid))[1] for _ in range(3)]
    assert ["results" in b for b in bodies] == [False, True, True]
    assert bodies[1]["results"] is None
    assert bodies[2]["results"] == {"videos": []}
    assert all("position" in b for b in bodies)


async def test_failed_job_reports_reason_and_null_results(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """A Failed job answers its scripted reason with results null."""
    rid = fake.add_job(outcome="Failed", reason="content moderation")
    assert await status_call(api, fake, rid) == (
        200,
        {"status": "Failed", "reason": "content moderation", "results": None},
    )


async def test_finish_forces_a_job_to_its_end(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """finish() ends a long job at once with the given outcome."""
    rid = fake.add_job(queue_seconds=60, run_seconds=60)
    fake.finish(rid, "Failed", "cancelled")
    assert (await status_call(api, fake, rid))[1]["reason"] == "cancelled"
    assert fake.jobs[rid].outcome == "Failed"


async def test_several_videos_and_custom_results(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """Every video of a job gets its own URL serving its own content."""
    rid = fake.add_job("my-id", videos=[b"literal", 3000], seed=7, inference=2.5)
    _, body = await status_call(api, fake, rid)
    assert body["results"]["seed"] == 7
    assert body["results"]["timings"]["inference"] == 2.5
    urls = [v["url"] for v in body["results"]["videos"]]
    assert len(urls) == 2
    for index, url in enumerate(urls):
        async with cdn.get(url) as r:
            assert await r.read() == fake.video_bytes(rid, index)
    assert fake.video_bytes(rid, 0) == b"literal"
    assert len(fake.video_bytes(rid, 1)) == 3000


async def test_add_job_rejects_a_duplicate_id(fake: FakeSiliconFlow) -> None:
    """Two jobs cannot share a request id."""
    fake.add_job("dup")
    with pytest.raises(ValueError, match="already exists"):
        fake.add_job("dup")


async def test_generated_ids_are_deterministic_per_seed() -> None:
    """The same seed yields the same uuid4-hex request ids."""
    first, second = FakeSiliconFlow(seed=3), FakeSiliconFlow(seed=3)
    ids = [first.add_job() for _ in range(3)]
    assert ids == [second.add_job() for _ in range(3)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_submit_creates_a_job_with_the_defaults(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """A valid submit returns a requestId whose job follows submit_defaults."""
    fake.submit_defaults = {"queue_seconds": 0, "run_seconds": 0, "videos": [b"v"]}
    async with api.post(f"{fake.base_url}/video/submit", json={**SUBMIT, "seed": 9}) as r:
        assert r.status == 200
        rid = (await r.json())["requestId"]
    job = fake.jobs[rid]
    assert job.submitted is not None
    assert job.submitted["prompt"] == "a cat"
    _, body = await status_call(api, fake, rid)
    assert body["status"] == "Succeed"
    assert body["results"]["seed"] == 9


@pytest.mark.parametrize(
    "change",
    [
        {"model": ""},
        {"prompt": None},
        {"image_size": "1920x1080"},
        {"seed": "nine"},
    ],
)
async def test_submit_validation_gives_400_20015(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, change: dict[str, Any]
) -> None:
    """An invalid submit body is answered 400 with code 20015 and creates no job."""
    async with api.post(f"{fake.base_url}/video/submit", json={**SUBMIT, **change}) as r:
        assert r.status == 400
        body = await r.json()
    assert body["code"] == 20015
    assert body["data"] is None
    assert body["message"]
    assert fake.jobs == {}


async def test_unknown_request_id_gives_400_20012(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """Asking the status of an unknown id answers 400 with code 20012."""
    status, body = await status_call(api, fake, "nope")
    assert status == 400
    assert body["code"] == 20012
    assert body["data"] is None


@pytest.mark.parametrize("payload", [b"{not json", b'{"id": "x"}', b'{"requestId": 5}'])
async def test_bad_status_body_gives_400_20015(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, payload: bytes
) -> None:
    """A status body that is not JSON or lacks a string requestId answers 400/20015."""
    url = f"{fake.base_url}/video/status"
    async with api.post(url, data=payload, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert (await r.json())["code"] == 20015


# ---------------------------------------------------------------- auth and headers


@pytest.mark.parametrize("header", [None, "Bearer sk-wrong", "sk-test", "Basic sk-test"])
async def test_wrong_or_missing_key_gives_401(
    fake: FakeSiliconFlow, cdn: aiohttp.ClientSession, header: str | None
) -> None:
    """Without the right bearer key both API routes answer 401 "Invalid token"."""
    rid = fake.add_job()
    headers = {} if header is None else {"Authorization": header}
    for route in ("status", "submit"):
        url = f"{fake.base_url}/video/{route}"
        async with cdn.post(url, json={"requestId": rid, **SUBMIT}, headers=headers) as r:
            assert r.status == 401
            assert r.content_type == "application/json"
            assert await r.read() == b'"Invalid token"'
            assert r.headers["x-siliconcloud-trace-id"].startswith("ti_")


async def test_no_api_key_accepts_any_bearer_key(cdn: aiohttp.ClientSession) -> None:
    """api_key=None accepts any bearer key."""
    async with FakeSiliconFlow(api_key=None) as fake:
        rid = fake.add_job()
        url = f"{fake.base_url}/video/status"
        headers = {"Authorization": "Bearer whatever"}
        async with cdn.post(url, json={"requestId": rid}, headers=headers) as r:
            assert r.status == 200


async def test_every_api_response_has_a_fresh_trace_id(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """Each API response carries its own x-siliconcloud-trace-id: ti_<hex>."""
    rid = fake.add_job()
    seen = set()
    for _ in range(3):
        async with api.post(f"{fake.base_url}/video/status", json={"requestId": rid}) as r:
            assert r.content_type == "application/json"
            trace = r.headers["x-siliconcloud-trace-id"]
            assert trace.startswith("ti_")
            assert int(trace[3:], 16) >= 0
            seen.add(trace)
    assert len(seen) == 3


# ---------------------------------------------------------------- API faults


@pytest.mark.parametrize(
    ("fault", "status", "content_type", "body"),
    [
        (bad_request(), 400, "application/json", {"code": 20012}),
        (unauthorized(), 401, "application/json", "Invalid token"),
        (payment_required(), 402, "application/json", {"code": 30001}),
        (forbidden(), 403, "application/json", "Forbidden"),
        (not_found(), 404, "application/json", "404 page not found"),
        (rate_limited(), 429, "application/json", {"code": 50603}),
        (overloaded(), 503, "application/json", {"code": 50505}),
        (gateway_timeout(), 504, "text/plain", None),
        (server_error(), 500, "text/plain", None),
        (server_error(502), 502, "text/plain", None),
        (bad_gateway_html(), 502, "text/html", None),
    ],
)
async def test_error_response_faults_reach_the_client_as_scripted(
    fake: FakeSiliconFlow,
    api: aiohttp.ClientSession,
    fault: ErrorResponse,
    status: int,
    content_type: str,
    body: object,
) -> None:
    """Each documented error comes back with its status, content type and body."""
    rid = fake.add_job()
    fake.add_fault("status", fault)
    async with api.post(f"{fake.base_url}/video/status", json={"requestId": rid}) as r:
        assert r.status == status
        assert r.content_type == content_type
        assert r.headers["x-siliconcloud-trace-id"].startswith("ti_")
        raw = await r.read()
    if isinstance(body, dict):
        decoded = json.loads(raw)
        assert decoded["code"] == body["code"]
        assert "data" in decoded
        assert decoded["message"]
    elif body is not None:
        assert json.loads(raw) == body
    else:
        assert raw
    assert "Retry-After" not in r.headers
    assert (await status_call(api, fake, rid))[0] == 200  # times=1: only one request hit


async def test_overloaded_and_rate_limited_bodies_match_the_docs() -> None:
    """The 503 and 429 bodies carry the documented messages."""
    assert overloaded().body == {
        "code": 50505,
        "message": "Model service overloaded. Please try again later.",
        "data": None,
    }
    limited = rate_limited().body
    assert isinstance(limited, dict)
    assert limited["message"].startswith("Request was rejected due to rate limiting.")


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(2, "2"), (0.5, "0.5"), ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT")],
)
async def test_rate_limited_sends_retry_after_only_when_given(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, retry_after: float | str, header: str
) -> None:
    """rate_limited(retry_after) adds a Retry-After header with that value."""
    fake.add_fault("submit", rate_limited(retry_after))
    async with api.post(f"{fake.base_url}/video/submit", json=SUBMIT) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == header


async def test_truncated_json_has_a_consistent_length_but_broken_json(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """TruncatedJSON: a 200 whose whole body arrives but does not parse."""
    rid = fake.add_job()
    fake.add_fault("status", TruncatedJSON())
    async with api.post(f"{fake.base_url}/video/status", json={"requestId": rid}) as r:
        assert r.status == 200
        raw = await r.read()
        assert int(r.headers["Content-Length"]) == len(raw) > 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


async def test_truncated_json_on_submit_still_creates_the_job(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """A submit answered with TruncatedJSON created its job all the same."""
    fake.add_fault("submit", TruncatedJSON())
    async with api.post(f"{fake.base_url}/video/submit", json=SUBMIT) as r:
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.read())
    assert len(fake.jobs) == 1


async def test_unknown_status_and_malformed_body(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """UnknownStatus answers a fifth status; MalformedBody answers exactly its bytes."""
    rid = fake.add_job()
    fake.add_fault("status", UnknownStatus())
    fake.add_fault("status", MalformedBody(b"<html>oops"))
    assert (await status_call(api, fake, rid))[1]["status"] == "Paused"
    async with api.post(f"{fake.base_url}/video/status", json={"requestId": rid}) as r:
        assert r.status == 200
        assert await r.read() == b"<html>oops"


async def test_connection_reset_is_a_transport_error_not_a_status(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """ConnectionReset makes the client raise a connection error, and is logged as None."""
    rid = fake.add_job()
    fake.add_fault("status", ConnectionReset())
    with pytest.raises(TRANSPORT_ERRORS):
        await status_call(api, fake, rid)
    assert (await status_call(api, fake, rid))[0] == 200
    statuses = [(r.status, r.fault) for r in fake.requests_for("status", rid)]
    assert statuses == [(None, "ConnectionReset"), (200, None)]


async def test_slow_delays_then_answers_normally(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """Slow(s) answers normally after about s seconds."""
    rid = fake.add_job()
    fake.add_fault("status", Slow(0.2))
    began = time.monotonic()
    status, body = await status_call(api, fake, rid)
    assert time.monotonic() - began >= 0.2
    assert status == 200
    assert body["status"] == "Succeed"


async def test_rules_respect_times_request_id_and_order(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """A rule fires `times` times, only for its request id, earlier rules first."""
    a, b = fake.add_job(), fake.add_job()
    rule = fake.add_fault("status", overloaded(), times=2, request_id=a)
    fake.add_fault("status", gateway_timeout(), times=None)
    assert [(await status_call(api, fake, b))[0] for _ in range(2)] == [504, 504]
    assert [(await status_call(api, fake, a))[0] for _ in range(3)] == [503, 503, 504]
    assert rule.fired == 2
    assert rule.remaining == 0
    assert rule not in fake.faults
    fake.clear_faults()
    assert (await status_call(api, fake, a))[0] == 200


async def test_probability_is_drawn_from_the_seeded_rng(api: aiohttp.ClientSession) -> None:
    """A 50% rule fires on some requests, and the same ones for the same seed."""
    runs = []
    for _ in range(2):
        async with FakeSiliconFlow(api_key=KEY, seed=1) as fake:
            rid = fake.add_job()
            fake.add_fault("status", overloaded(), times=None, probability=0.5)
            runs.append([(await status_call(api, fake, rid))[0] for _ in range(20)])
    assert runs[0] == runs[1]
    assert 503 in runs[0]
    assert 200 in runs[0]


async def test_faults_only_go_where_they_make_sense(fake: FakeSiliconFlow) -> None:
    """A video-only fault cannot be scripted on the API, nor an API-only one on videos."""
    with pytest.raises(ValueError, match="cannot be used"):
        fake.add_fault("status", IgnoreRange())
    with pytest.raises(ValueError, match="cannot be used"):
        fake.add_fault("video", TruncatedJSON())
    with pytest.raises(ValueError, match="times"):
        fake.add_fault("status", overloaded(), times=0)


# ---------------------------------------------------------------- rate limit


async def test_rate_limit_gives_429_once_the_bucket_is_empty(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """A 2-token bucket shared by submit and status answers the third quick call 429."""
    rid = fake.add_job()
    fake.set_rate_limit(1, burst=2)
    async with api.post(f"{fake.base_url}/video/submit", json=SUBMIT) as r:
        assert r.status == 200
    assert (await status_call(api, fake, rid))[0] == 200
    status, body = await status_call(api, fake, rid)
    assert status == 429
    assert body["code"] == 50603
    assert fake.requests_for("status", rid)[-1].fault == "rate_limit"
    fake.set_rate_limit(None)
    assert (await status_call(api, fake, rid))[0] == 200


async def test_rate_limit_refills_and_can_send_retry_after(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """The bucket refills at per_second; Retry-After is sent when configured."""
    rid = fake.add_job()
    fake.set_rate_limit(5, burst=1, retry_after=3)
    assert (await status_call(api, fake, rid))[0] == 200
    async with api.post(f"{fake.base_url}/video/status", json={"requestId": rid}) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "3"
    await asyncio.sleep(0.25)
    assert (await status_call(api, fake, rid))[0] == 200


# ---------------------------------------------------------------- video host


async def test_video_is_served_with_validators(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """A GET returns the exact bytes with video/mp4, length, ETag, Last-Modified, ranges."""
    rid = fake.add_job(videos=[5000])
    url = await first_url(api, fake, rid)
    assert "Expires=" in url
    assert "Signature=" in url
    async with cdn.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "video/mp4"
        assert r.headers["Content-Length"] == "5000"
        assert r.headers["Accept-Ranges"] == "bytes"
        etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
        assert etag.startswith('"')
        assert modified.endswith("GMT")
        assert await r.read() == fake.video_bytes(rid)
    async with cdn.get(await first_url(api, fake, rid)) as r:
        assert (r.headers["ETag"], r.headers["Last-Modified"]) == (etag, modified)


async def test_head_gives_headers_without_body(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """HEAD answers the same headers as GET and no body."""
    rid = fake.add_job(videos=[4096])
    async with cdn.head(await first_url(api, fake, rid)) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "4096"
        assert await r.read() == b""


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=100-", 100, 1000), ("bytes=100-199", 100, 200), ("bytes=900-5000", 900, 1000)],
)
async def test_range_requests_get_206_and_content_range(
    fake: FakeSiliconFlow,
    api: aiohttp.ClientSession,
    cdn: aiohttp.ClientSession,
    range_header: str,
    start: int,
    end: int,
) -> None:
    """bytes=N- and bytes=N-M answer 206 with the slice and its Content-Range."""
    rid = fake.add_job(videos=[1000])
    async with cdn.get(await first_url(api, fake, rid), headers={"Range": range_header}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/1000"
        assert await r.read() == fake.video_bytes(rid)[start:end]


async def test_unsatisfiable_range_gives_416(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """A range starting at or past the end answers 416 with bytes */TOTAL."""
    rid = fake.add_job(videos=[1000])
    async with cdn.get(await first_url(api, fake, rid), headers={"Range": "bytes=1000-"}) as r:
        assert r.status == 416
        assert r.headers["Content-Range"] == "bytes */1000"


async def test_if_range_honours_range_only_for_matching_validators(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """If-Range with the ETag or Last-Modified gives 206; anything else the whole 200."""
    rid = fake.add_job(videos=[1000])
    url = await first_url(api, fake, rid)
    async with cdn.head(url) as r:
        etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
    for validator, status, length in [(etag, 206, 500), (modified, 206, 500), ('"x"', 200, 1000)]:
        headers = {"Range": "bytes=500-", "If-Range": validator}
        async with cdn.get(url, headers=headers) as r:
            assert r.status == status
            assert len(await r.read()) == length


async def test_expired_url_gives_403_access_denied(
    api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """With url_ttl=0 the issued URL is already expired: 403 AccessDenied XML."""
    async with FakeSiliconFlow(api_key=KEY, url_ttl=0) as fake:
        rid = fake.add_job()
        async with cdn.get(await first_url(api, fake, rid)) as r:
            assert r.status == 403
            assert r.content_type == "application/xml"
            assert await r.text() == EXPIRED_XML


async def test_expire_urls_revokes_old_urls_and_fresh_ones_work(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """expire_urls() kills every URL issued so far; a new status call gives a working one."""
    rid = fake.add_job()
    old = await first_url(api, fake, rid)
    fake.expire_urls()
    async with cdn.get(old) as r:
        assert r.status == 403
        assert "Request has expired." in await r.text()
    new = await first_url(api, fake, rid)
    assert new != old
    async with cdn.get(new) as r:
        assert r.status == 200


async def test_without_fresh_urls_the_first_url_is_returned_forever(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """fresh_urls=False keeps handing out the first URL, even once it is revoked."""
    fake.fresh_urls = False
    rid = fake.add_job()
    old = await first_url(api, fake, rid)
    fake.expire_urls()
    assert await first_url(api, fake, rid) == old
    async with cdn.get(old) as r:
        assert r.status == 403


async def test_bad_signature_and_unknown_video(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """A forged signature gets 403 SignatureDoesNotMatch; an unknown video 404."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    async with cdn.get(url[:-4] + "0000") as r:
        assert r.status == 403
        assert "SignatureDoesNotMatch" in await r.text()
    async with cdn.get(url.replace(f"/{rid}/0/", f"/{rid}/1/")) as r:
        assert r.status == 404
    async with cdn.get(f"{fake.video_base_url}/videos/nope/0/video.mp4") as r:
        assert r.status == 404


async def test_odd_request_ids_round_trip_through_the_url(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """Ids with slashes, spaces and unicode are quoted into one path segment."""
    rid = fake.add_job("../a b/é?#", videos=[b"odd"])
    async with cdn.get(await first_url(api, fake, rid)) as r:
        assert r.status == 200
        assert await r.read() == b"odd"
    assert fake.requests_for("video")[0].request_id == rid


async def test_video_host_never_needs_the_key_and_logs_headers(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """The video host serves without Authorization and logs the headers it got."""
    rid = fake.add_job()
    async with cdn.get(await first_url(api, fake, rid), headers={"X-Probe": "1"}) as r:
        assert r.status == 200
    (entry,) = fake.requests_for("video", rid)
    assert entry.headers["X-Probe"] == "1"
    assert "Authorization" not in entry.headers
    assert entry.query.keys() == {"Expires", "Signature"}


# ---------------------------------------------------------------- video faults


async def test_drop_mid_body_sends_some_bytes_then_resets(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """DropMidBody: the client gets exactly after_bytes, then ClientPayloadError."""
    rid = fake.add_job(videos=[1_000_000])
    url = await first_url(api, fake, rid)
    fake.add_fault("video", DropMidBody(300_000))
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_into(cdn, url, received)
    assert bytes(received) == fake.video_bytes(rid)[:300_000]
    assert fake.requests_for("video")[-1].fault == "DropMidBody"


async def test_truncated_body_closes_cleanly_short_of_the_length(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """TruncatedBody on a range request: after_bytes of the slice, then ClientPayloadError."""
    rid = fake.add_job(videos=[100_000])
    url = await first_url(api, fake, rid)
    fake.add_fault("video", TruncatedBody(1000))
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_into(cdn, url, received, {"Range": "bytes=5000-"})
    assert bytes(received) == fake.video_bytes(rid)[5000:6000]
    assert fake.requests_for("video")[-1].status == 206


async def test_video_error_faults(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """ExpiredURL answers the expired 403; server_error() a 500; then it serves again."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    fake.add_fault("video", ExpiredURL())
    fake.add_fault("video", server_error())
    async with cdn.get(url) as r:
        assert r.status == 403
        assert await r.text() == EXPIRED_XML
    async with cdn.get(url) as r:
        assert r.status == 500
    async with cdn.get(url) as r:
        assert r.status == 200


async def test_video_connection_reset(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """A reset GET is retried once by aiohttp itself; two resets in a row reach the client."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    fake.add_fault("video", ConnectionReset())
    async with cdn.get(url) as r:
        assert r.status == 200
    assert [e.status for e in fake.requests_for("video")] == [None, 200]
    fake.add_fault("video", ConnectionReset(), times=2)
    with pytest.raises(TRANSPORT_ERRORS):
        async with cdn.get(url) as r:
            await r.read()
    assert [e.status for e in fake.requests_for("video")][2:] == [None, None]


async def test_slow_body_and_slow_throttle_the_download(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """SlowBody streams at about its rate; Slow delays the whole answer."""
    rid = fake.add_job(videos=[50_000])
    url = await first_url(api, fake, rid)
    fake.add_fault("video", SlowBody(200_000))
    fake.add_fault("video", Slow(0.2))
    for _ in range(2):
        began = time.monotonic()
        async with cdn.get(url) as r:
            assert await r.read() == fake.video_bytes(rid)
        assert time.monotonic() - began >= 0.2


async def test_ignore_range_answers_the_whole_body(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """IgnoreRange answers 200 with everything although a Range was asked for."""
    rid = fake.add_job(videos=[1000])
    url = await first_url(api, fake, rid)
    fake.add_fault("video", IgnoreRange())
    async with cdn.get(url, headers={"Range": "bytes=10-"}) as r:
        assert r.status == 200
        assert "Content-Range" not in r.headers
        assert await r.read() == fake.video_bytes(rid)


async def test_head_does_not_consume_video_faults(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """Only GETs consume video faults."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    fake.add_fault("video", server_error())
    async with cdn.head(url) as r:
        assert r.status == 200
    async with cdn.get(url) as r:
        assert r.status == 500


# ---------------------------------------------------------------- log and concurrency


async def test_request_log_records_what_happened(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """Each request is logged with target, path, JSON, request id, status and fault."""
    async with api.post(f"{fake.base_url}/video/submit", json=SUBMIT) as r:
        rid = (await r.json())["requestId"]
    fake.add_fault("status", overloaded())
    await status_call(api, fake, rid)
    submit, status = fake.requests
    assert (submit.target, submit.method, submit.path) == ("submit", "POST", "/v1/video/submit")
    assert submit.json == SUBMIT
    assert submit.request_id == rid
    assert submit.status == 200
    assert submit.headers["Authorization"] == f"Bearer {KEY}"
    assert (status.request_id, status.status, status.fault) == (rid, 503, "ErrorResponse")
    assert submit.time <= status.time
    assert fake.requests_for("status", "other") == []
    fake.clear_log()
    assert fake.requests == []


async def test_log_can_be_turned_off(api: aiohttp.ClientSession) -> None:
    """log_requests=False keeps nothing."""
    async with FakeSiliconFlow(api_key=KEY, log_requests=False) as fake:
        rid = fake.add_job()
        await status_call(api, fake, rid)
        assert fake.requests == []


async def test_max_in_flight_tracks_concurrent_api_requests(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """Five overlapping status calls give max_in_flight 5, and the count drops back to 0."""
    rid = fake.add_job()
    fake.latency = 0.2
    await asyncio.gather(*(status_call(api, fake, rid) for _ in range(5)))
    assert fake.max_in_flight == 5
    assert fake.in_flight == 0
    fake.reset_max_in_flight()
    assert fake.max_in_flight == 0


def test_run_in_thread_serves_a_sync_client() -> None:
    """run_in_thread serves while the with body runs and stops afterwards."""
    fake = FakeSiliconFlow(api_key=KEY)
    with fake.run_in_thread():
        rid = fake.add_job(videos=[b"sync"])
        request = urllib.request.Request(
            f"{fake.base_url}/video/status",
            data=json.dumps({"requestId": rid}).encode(),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            url = json.load(response)["results"]["videos"][0]["url"]
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read() == b"sync"
        base_url = fake.base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base_url}/video/status", data=b"{}", timeout=1)


# Starlette nags about httpx vs httpx2 on import; that is not what this test is about.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_run_in_thread_serves_an_app_under_fastapi_testclient() -> None:
    """A FastAPI app under TestClient reaches the threaded fake from its own event loop."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    fake = FakeSiliconFlow(api_key=KEY)
    app = FastAPI()

    @app.get("/jobs/{rid}")
    async def job_status(rid: str) -> Any:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            return (await status_call(session, fake, rid))[1]

    with fake.run_in_thread(), TestClient(app) as client:
        rid = fake.add_job(queue_seconds=60)
        fake.add_fault("status", overloaded())
        assert client.get(f"/jobs/{rid}").json()["code"] == 50505
        assert client.get(f"/jobs/{rid}").json()["status"] == "InQueue"
    assert [r.status for r in fake.requests_for("status", rid)] == [503, 200]


# ---------------------------------------------------------------- content


async def test_32_mib_video_streams_byte_exact(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """A 32 MiB generated video arrives exactly as video_bytes/video_sha256 say."""
    import hashlib

    size = 32 * 1024 * 1024
    rid = fake.add_job(videos=[size])
    digest = hashlib.sha256()
    received = 0
    async with cdn.get(await first_url(api, fake, rid)) as r:
        async for chunk in r.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == fake.video_sha256(rid)
    assert hashlib.sha256(fake.video_bytes(rid)).hexdigest() == fake.video_sha256(rid)


async def test_generated_content_repeats_with_a_prime_period(fake: FakeSiliconFlow) -> None:
    """Byte i is block[i % PERIOD], so a shifted chunk does not match."""
    rid = fake.add_job(videos=[2 * PERIOD + 10])
    data = fake.video_bytes(rid)
    assert data[PERIOD : PERIOD + 4096] == data[:4096]
    assert data[4096:8192] != data[:4096]
    other = fake.add_job(videos=[4096])
    assert fake.video_bytes(other) != data[:4096]


# ---------------------------------------------------------------- hardening faults


async def test_encoded_body_sends_gzip_despite_accept_encoding_identity(
    fake: FakeSiliconFlow,
    api: aiohttp.ClientSession,
    cdn: aiohttp.ClientSession,
    raw_cdn: aiohttp.ClientSession,
) -> None:
    """EncodedBody("gzip") sends the gzipped video, its length, to a client asking identity."""
    rid = fake.add_job(videos=[b"compressible frame " * 5000])
    url = await first_url(api, fake, rid)
    fake.add_fault("video", EncodedBody("gzip"), times=2)
    identity = {"Accept-Encoding": "identity"}
    async with raw_cdn.get(url, headers=identity) as r:
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        raw = await r.read()
    assert int(r.headers["Content-Length"]) == len(raw) < len(fake.video_bytes(rid))
    assert gzip.decompress(raw) == fake.video_bytes(rid)
    async with cdn.get(url, headers=identity) as r:
        assert await r.read() == fake.video_bytes(rid)
    assert [e.fault for e in fake.requests_for("video")] == ["EncodedBody"] * 2


async def test_encoded_body_with_another_encoding_cannot_be_decoded(
    fake: FakeSiliconFlow,
    api: aiohttp.ClientSession,
    cdn: aiohttp.ClientSession,
    raw_cdn: aiohttp.ClientSession,
) -> None:
    """EncodedBody("br") sends the header with bytes a decoding client fails on."""
    rid = fake.add_job(videos=[10_000])
    url = await first_url(api, fake, rid)
    fake.add_fault("video", EncodedBody("br"), times=2)
    async with raw_cdn.get(url) as r:
        assert r.headers["Content-Encoding"] == "br"
        assert await r.read() != fake.video_bytes(rid)
    # Without Brotli installed aiohttp refuses the headers (ClientResponseError 400);
    # with it, decoding the garbage fails (ClientPayloadError).
    with pytest.raises((aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        async with cdn.get(url) as r:
            await r.read()


@pytest.mark.parametrize(
    ("fault", "status", "content_type"),
    [
        (rate_limited(retry_after=2), 429, "application/json"),
        (overloaded(retry_after=2), 503, "application/json"),
        (slow_down(retry_after=2), 503, "application/xml"),
        (slow_down(retry_after=2, status=429), 429, "application/xml"),
    ],
)
async def test_video_host_throttles_with_retry_after(
    fake: FakeSiliconFlow,
    api: aiohttp.ClientSession,
    cdn: aiohttp.ClientSession,
    fault: ErrorResponse,
    status: int,
    content_type: str,
) -> None:
    """rate_limited, overloaded and slow_down answer the video GET with Retry-After seconds."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    fake.add_fault("video", fault)
    async with cdn.get(url) as r:
        assert r.status == status
        assert r.headers["Retry-After"] == "2"
        assert r.content_type == content_type
    async with cdn.get(url) as r:
        assert r.status == 200


async def test_overloaded_and_slow_down_send_retry_after_only_when_given() -> None:
    """overloaded() has no Retry-After by default; slow_down(None) has none either."""
    assert "Retry-After" not in overloaded().headers
    assert "Retry-After" not in slow_down(None).headers
    assert slow_down().headers["Retry-After"] == "1"
    assert b"<Code>SlowDown</Code>" in slow_down().encoded_body()


@pytest.mark.parametrize(
    ("shape", "results"),
    [
        ("absent", "missing"),
        ("null", None),
        ("no_videos", {"timings": {"inference": 2.5}, "seed": 7}),
        ("empty", {"videos": [], "timings": {"inference": 2.5}, "seed": 7}),
        ("no_url", {"videos": [{}], "timings": {"inference": 2.5}, "seed": 7}),
    ],
)
async def test_no_video_url_answers_succeed_without_a_url(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, shape: NoVideoShape, results: object
) -> None:
    """NoVideoURL answers Succeed in the given shape for `times` calls, then the real answer."""
    rid = fake.add_job(queue_seconds=60, seed=7, inference=2.5)
    fake.add_fault("status", NoVideoURL(shape), times=2)
    for _ in range(2):
        status, body = await status_call(api, fake, rid)
        assert status == 200
        assert body["status"] == "Succeed"
        assert body.get("results", "missing") == results
    assert (await status_call(api, fake, rid))[1]["status"] == "InQueue"


async def test_no_video_url_forever(fake: FakeSiliconFlow, api: aiohttp.ClientSession) -> None:
    """NoVideoURL with times=None answers every status call, even for a finished job."""
    rid = fake.add_job()
    fake.add_fault("status", NoVideoURL(), times=None)
    for _ in range(5):
        body = (await status_call(api, fake, rid))[1]
        assert body["status"] == "Succeed"
        assert body["results"]["videos"] == []
    assert fake.requests_for("video") == []


async def test_unknown_status_can_be_cancelled_or_expired_with_a_reason(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """UnknownStatus sends any undocumented status with its reason, as often as scripted."""
    rid = fake.add_job()
    fake.add_fault("status", UnknownStatus("Cancelled", reason="cancelled by user"), times=2)
    fake.add_fault("status", UnknownStatus("Expired"))
    answers = [(await status_call(api, fake, rid))[1] for _ in range(4)]
    assert [(a["status"], a["reason"]) for a in answers] == [
        ("Cancelled", "cancelled by user"),
        ("Cancelled", "cancelled by user"),
        ("Expired", ""),
        ("Succeed", ""),
    ]


async def test_html_page_answers_the_api_like_a_site_that_is_not_siliconflow(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession
) -> None:
    """HTMLPage() answers 200 text/html without a trace id, on submit and status alike."""
    rid = fake.add_job()
    fake.add_fault("status", HTMLPage(), times=None)
    fake.add_fault("submit", HTMLPage(title="Parked domain"))
    for _ in range(2):
        async with api.post(f"{fake.base_url}/video/status", json={"requestId": rid}) as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            assert "x-siliconcloud-trace-id" not in r.headers
            assert (await r.text()).startswith("<!DOCTYPE html>")
    async with api.post(f"{fake.base_url}/video/submit", json=SUBMIT) as r:
        assert "<title>Parked domain</title>" in await r.text()
    assert fake.jobs.keys() == {rid}


async def test_html_page_answers_the_video_host_instead_of_the_video(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """HTMLPage on the video host serves a 200 text/html page in place of the video."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    fake.add_fault("video", HTMLPage(title="Wi-Fi login"))
    async with cdn.get(url) as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        assert "Wi-Fi login" in await r.text()


async def test_not_found_html_is_a_long_page_on_the_video_host(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """not_found_html() answers 404 with an HTML page of at least its size (64 KiB)."""
    rid = fake.add_job()
    url = await first_url(api, fake, rid)
    fake.add_fault("video", not_found_html())
    fake.add_fault("video", not_found_html(size=300_000))
    sizes = []
    for _ in range(2):
        async with cdn.get(url) as r:
            assert r.status == 404
            assert r.content_type == "text/html"
            page = await r.text()
        assert page.startswith("<!DOCTYPE html>")
        assert page.rstrip().endswith("</html>")
        sizes.append(len(page))
    assert 64 * 1024 <= sizes[0] < 300_000 <= sizes[1]


async def test_new_faults_only_go_where_they_make_sense(fake: FakeSiliconFlow) -> None:
    """EncodedBody is video-only, NoVideoURL status-only, and NoVideoURL checks its shape."""
    with pytest.raises(ValueError, match="cannot be used"):
        fake.add_fault("status", EncodedBody())
    with pytest.raises(ValueError, match="cannot be used"):
        fake.add_fault("video", NoVideoURL())
    with pytest.raises(ValueError, match="shape"):
        NoVideoURL("gone")  # type: ignore[arg-type]


async def test_request_ids_differing_in_case_are_distinct_jobs(
    fake: FakeSiliconFlow, api: aiohttp.ClientSession, cdn: aiohttp.ClientSession
) -> None:
    """Job-1 and job-1 are two jobs, with their own status, timings and video."""
    upper = fake.add_job("Job-1", videos=[b"upper"], inference=3.25)
    lower = fake.add_job("job-1", videos=[b"lower"], inference=0.5)
    fake.add_job("JOB-1", outcome="Failed", reason="nope")
    assert (await status_call(api, fake, "JOB-1"))[1]["status"] == "Failed"
    for rid, data, inference in ((upper, b"upper", 3.25), (lower, b"lower", 0.5)):
        body = (await status_call(api, fake, rid))[1]
        assert body["results"]["timings"]["inference"] == inference
        async with cdn.get(body["results"]["videos"][0]["url"]) as r:
            assert await r.read() == data
    assert [e.request_id for e in fake.requests_for("video")] == ["Job-1", "job-1"]
