"""Any header values on the video host's answer, and any Retry-After on the API's, are
handled without a crash, a hang, or a wrong file under the final name.

The answers come from a raw HTTP/1.1 server on loopback that writes exactly the bytes a test
scripted (aiohttp's own server would fix up a lying Content-Length), one answer per
connection. Each example scripts a video URL as: an optional honest transfer that breaks
part-way (so the fuzzed answer meets a resume), then the fuzzed answer, then an honest host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from siliconflow_video import (
    AsyncClient,
    DownloadError,
    DownloadPolicy,
    RetryPolicy,
    SiliconFlowError,
    Status,
    VideoStatus,
)
from siliconflow_video._download import DiskWrites, VideoFile, download_video

SIZE = 40_000
VIDEO = random.Random("fuzz-headers").randbytes(SIZE)
ETAG = '"v1-' + hashlib.sha256(VIDEO).hexdigest()[:16] + '"'
POLICY = DownloadPolicy(
    sha256=True,
    write_buffer=8192,
    max_attempts=4,
    base_delay=0.001,
    max_delay=0.002,
    connect_timeout=2.0,
    read_timeout=2.0,
    max_url_refreshes=1,
    max_retry_after=0.05,  # a fuzzed Retry-After is honoured, but must not outlast HANG
)
#: Longer than any example may take: past it, the download is hung.
HANG = 10.0

Responder = Callable[[str | None], bytes]


# --- a server that sends exactly what it is told -----------------------------------------


def http_response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status} X".encode()]
    head += [f"{name}: {value}".encode() for name, value in headers]
    head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def honest(range_header: str | None) -> bytes:
    """What a correct storage host answers to ``GET`` with this ``Range`` (or none)."""
    match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
    common = [("ETag", ETAG), ("Accept-Ranges", "bytes"), ("Content-Type", "video/mp4")]
    if match is None:
        return http_response(200, [*common, ("Content-Length", str(SIZE))], VIDEO)
    start = int(match.group(1))
    if start >= SIZE:
        return http_response(
            416, [("Content-Range", f"bytes */{SIZE}"), ("Content-Length", "0")], b""
        )
    headers = [
        *common,
        ("Content-Range", f"bytes {start}-{SIZE - 1}/{SIZE}"),
        ("Content-Length", str(SIZE - start)),
    ]
    return http_response(206, headers, VIDEO[start:])


def broken_after(count: int) -> Responder:
    """A correct 200 whose connection closes after ``count`` body bytes."""

    def respond(range_header: str | None) -> bytes:
        return honest(None)[: len(honest(None)) - SIZE + count]

    return respond


class RawHost:
    """A loopback server answering each path from a script, one answer per connection;
    once a path's script is used up, it answers honestly."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Responder]] = {}
        self.seen: dict[str, list[str | None]] = {}
        self.lock = threading.Lock()
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def script(self, path: str, *responders: Responder) -> str:
        with self.lock:
            self.scripts[path] = list(responders)
            self.seen[path] = []
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1].partition("?")[0]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            with self.lock:
                self.seen.setdefault(path, []).append(headers.get("range"))
                script = self.scripts.get(path, [])
                responder = script.pop(0) if script else honest
            writer.write(responder(headers.get("range")))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @contextlib.contextmanager
    def running(self) -> Iterator[RawHost]:
        ready = threading.Event()
        stop: list[asyncio.Event] = []

        async def serve() -> None:
            server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.loop = asyncio.get_running_loop()
            stop.append(asyncio.Event())
            ready.set()
            async with server:
                await stop[0].wait()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the raw host did not start")
        try:
            yield self
        finally:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(stop[0].set)
            thread.join(10)


@pytest.fixture(scope="module")
def host() -> Iterator[RawHost]:
    with RawHost().running() as server:
        yield server


_paths = itertools.count()


# --- strategies ---------------------------------------------------------------------------

numbers = st.integers(min_value=-3, max_value=2 * SIZE).map(str)
odd_values = st.sampled_from(
    [
        "",
        " ",
        "+5",
        "-0",
        "0x10",
        "1e3",
        "4.0",
        "\u0663\u0663",  # Arabic-Indic digits: Unicode digits, not ASCII ones
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "9" * 40,
        "9" * 5000,  # past Python's 4300-digit limit for int()
        "bytes",
        "bytes=0-",
        "bytes 0-/",
        f"bytes 0-{SIZE - 1}/{SIZE}, bytes 0-1/2",
        "Wed, 21 Oct 2099 07:28:00 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "inf",
        "nan",
    ]
)
# Printable text of any script: header values cannot hold CR, LF or NUL on the wire.
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
content_ranges = st.one_of(
    st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", numbers, numbers, numbers),
    st.builds(lambda t: f"bytes */{t}", numbers),
    st.builds(lambda a, b, t: f"bytes  {a}-{b}/{t} ", numbers, numbers, numbers),
)


def header(*extra: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), numbers, odd_values, any_text, *extra)


#: Content-Length as the body's true length, whatever that is.
TRUE_LENGTH = "<true length>"
# aiohttp's parser refuses a malformed Content-Length before the downloader sees it, so
# garbage gets one branch in four: most examples should reach the downloader's own checks.
content_lengths = st.one_of(
    st.none(),
    st.just(TRUE_LENGTH),
    st.integers(min_value=0, max_value=2 * SIZE).map(str),
    header(),
)


@attrs.frozen
class Fuzzed:
    """One fuzzed answer from the video host."""

    status: int
    content_length: str | None
    content_range: str | None
    retry_after: str | None
    etag: str | None
    body_length: int | None  # None: to the end of the video

    def respond(self, range_header: str | None) -> bytes:
        headers = [("Content-Type", "video/mp4")]
        body = self.body(range_header)
        length = str(len(body)) if self.content_length == TRUE_LENGTH else self.content_length
        for name, value in (
            ("Content-Length", length),
            ("Content-Range", self.content_range),
            ("Retry-After", self.retry_after),
            ("ETag", self.etag),
        ):
            if value is not None:
                headers.append((name, value))
        return http_response(self.status, headers, body)

    def body(self, range_header: str | None) -> bytes:
        """The video's own bytes, from where this status says they start (a 200 from byte
        0, a 206 from where the client asked), perhaps cut short. Only the headers lie:
        bytes that are not the video's cannot be told from the video by any client."""
        if self.status not in (200, 206):
            return b"<Error><Code>Fuzz</Code></Error>"
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        start = int(match.group(1)) if match and self.status == 206 else 0
        end = SIZE if self.body_length is None else start + self.body_length
        return VIDEO[start:end]

    def claimed_lengths(self) -> set[int]:
        """Every length this answer could be read as announcing."""
        text = f"{self.content_length or ''} {self.content_range or ''}"
        found = {int(n) for n in re.findall(r"[0-9]{1,12}", text)}
        found.add(len(self.body(None)))  # no length at all: the body is all there is
        return found


fuzzed_answers = st.builds(
    Fuzzed,
    status=st.sampled_from([200, 206, 206, 416, 429, 500, 503]),
    content_length=content_lengths,
    content_range=header(content_ranges, content_ranges),
    retry_after=header(),
    etag=st.sampled_from([None, ETAG, '"another"', "W/" + ETAG]),
    body_length=st.none() | st.integers(0, SIZE),
)


# --- the video host -----------------------------------------------------------------------


async def no_refresh() -> str | None:
    return None


async def fetch(url: str, path: Path) -> VideoFile:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        return await download_video(
            session,
            url,
            path,
            refresh_url=no_refresh,
            policy=POLICY,
            writes=DiskWrites(),
            request_id="fuzz",
            index=0,
        )


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    answer=fuzzed_answers,
    broken_first=st.none() | st.integers(1, SIZE - 1),
)
@example(  # a Content-Range number too long for int(): must not escape as ValueError
    answer=Fuzzed(206, None, f"bytes 7-{SIZE - 1}/{'9' * 5000}", None, ETAG, None),
    broken_first=7,
)
@example(
    answer=Fuzzed(416, "0", f"bytes */{'9' * 5000}", None, None, None),
    broken_first=7,
)
@example(  # a 206 announcing less than the video, from the right place: not spliced
    answer=Fuzzed(206, None, f"bytes 100-199/{SIZE}", None, ETAG, 100),
    broken_first=100,
)
@example(  # Unicode digits in Content-Range
    answer=Fuzzed(206, None, "bytes \u0667-\u0669/\u0661\u0660", None, ETAG, None),
    broken_first=7,
)
def test_any_video_headers_end_in_the_video_or_a_download_error(
    host: RawHost, answer: Fuzzed, broken_first: int | None
) -> None:
    """Whatever Content-Length, Content-Range, Retry-After and ETag the host sends, the
    download ends, promptly, either with the video's own bytes under the final name or
    with a DownloadError and nothing there; never another exception or spliced bytes."""
    path_on_host = f"/v/{next(_paths)}.mp4"
    responders: list[Responder] = [answer.respond]
    if broken_first is not None:
        responders.insert(0, broken_after(broken_first))
    url = host.script(path_on_host, *responders)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.mp4"
        try:
            result: VideoFile | BaseException = asyncio.run(
                asyncio.wait_for(fetch(url, path), HANG)
            )
        except (DownloadError, TimeoutError) as exc:
            result = exc
        assert not isinstance(result, TimeoutError), f"hung: {host.seen[path_on_host]}"
        kept = ("v.mp4", ".siliconflow-video")  # the video and its completion record
        leftovers = sorted(p.name for p in Path(folder).iterdir() if p.name not in kept)
        if isinstance(result, VideoFile):
            data = path.read_bytes()
            assert data == VIDEO[: len(data)], "bytes under the final name are not the video's"
            assert len(data) == SIZE or len(data) in answer.claimed_lengths()
            assert result.size == len(data)
            assert result.sha256 == hashlib.sha256(data).hexdigest()
            assert leftovers == []
        else:
            assert not path.exists()


# --- Retry-After on the API ---------------------------------------------------------------

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01, max_retry_after=0.05)
SUCCEED = (
    b'{"status":"Succeed","reason":"","results":{"videos":[{"url":"https://h/v.mp4"}],'
    b'"timings":{"inference":1.0},"seed":1}}'
)


def api_answer(status: int, retry_after: str | None) -> Responder:
    headers = [("Content-Type", "application/json")]
    if retry_after is not None:
        headers.append(("Retry-After", retry_after))
    body = b'{"code":50603,"message":"busy","data":null}'
    headers.append(("Content-Length", str(len(body))))
    return lambda _: http_response(status, headers, body)


def api_ok(_: str | None) -> bytes:
    return http_response(
        200,
        [("Content-Type", "application/json"), ("Content-Length", str(len(SUCCEED)))],
        SUCCEED,
    )


async def status_via(host: RawHost, *answers: Responder) -> VideoStatus:
    prefix = f"/api{next(_paths)}"
    host.script(f"{prefix}/v1/video/status", *answers, api_ok)
    base_url = f"http://127.0.0.1:{host.port}{prefix}/v1"
    async with AsyncClient("sk-fuzz", base_url, retry=FAST) as client:
        return await client.get_status("rid")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([429, 500, 502, 503, 504]),
    retry_after=header(),
    times=st.integers(1, 3),
)
def test_any_retry_after_on_the_api_is_handled(
    host: RawHost, status: int, retry_after: str | None, times: int
) -> None:
    """Any Retry-After on a retried API answer ends promptly in the status or a typed error."""
    answers = [api_answer(status, retry_after)] * times
    try:
        outcome: VideoStatus | BaseException = asyncio.run(
            asyncio.wait_for(status_via(host, *answers), HANG)
        )
    except (SiliconFlowError, TimeoutError) as exc:
        outcome = exc
    assert not isinstance(outcome, TimeoutError), "hung"
    if times < FAST.max_attempts:
        assert isinstance(outcome, VideoStatus), repr(outcome)
        assert outcome.status is Status.SUCCEED
    else:
        assert isinstance(outcome, SiliconFlowError)
        assert outcome.request_id == "rid"


@pytest.mark.parametrize("retry_after", ["3600", "Wed, 21 Oct 2099 07:28:00 GMT"])
def test_a_huge_retry_after_on_a_429_does_not_stall_the_client(
    host: RawHost, retry_after: str
) -> None:
    """A 429 asking to wait an hour costs at most max_retry_after, or fails the request;
    it never leaves the client silent for an hour."""
    outcome: VideoStatus | BaseException
    try:
        outcome = asyncio.run(asyncio.wait_for(status_via(host, api_answer(429, retry_after)), 1.5))
    except SiliconFlowError as exc:
        outcome = exc
    assert isinstance(outcome, (VideoStatus, SiliconFlowError))
